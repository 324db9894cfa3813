//! [`Lm`]: a decoder-only transformer over byte tokens whose blocks are pre-norm attention and a
//! dense or MoE feed-forward; the full forward for training and a cached forward for decoding.

use burn::module::{Module, Param};
use burn::nn::{Embedding, RmsNorm, RotaryEncoding};
use burn::tensor::{Int, Tensor, backend::Backend};

use crate::InvalidValue;
use crate::backend_ext::MoeBackend;
use crate::experts::Experts;
use crate::ffn::Ffn;
use crate::lm::attention::CausalSelfAttention;
use crate::lm::cache::KvCache;
use crate::model::BlockPass;
use crate::moe::RoutingStats;

/// Pre-norm transformer block: `h += attention(norm1(h))`, then `h += ffn(norm2(h))`.
#[derive(Module, Debug)]
pub struct LmBlock<B: MoeBackend> {
    /// The norm in front of the attention.
    pub attn_norm: RmsNorm<B>,
    /// Causal self-attention with rotary positions.
    pub attention: CausalSelfAttention<B>,
    /// The norm in front of the feed-forward (the router sees its output).
    pub ffn_norm: RmsNorm<B>,
    /// The block's feed-forward, over the `[batch * T, d]` rows.
    pub ffn: Ffn<B>,
}

/// Output of [`Lm::forward`].
#[derive(Clone, Debug)]
pub struct LmOutput<B: Backend> {
    /// Next-token logits at every position. `[batch, T, vocab]`
    pub logits: Tensor<B, 3>,
    /// Sum of the weighted auxiliary router losses of the MoE blocks (0 without any). `[1]`
    pub aux_loss: Tensor<B, 1>,
    /// Routing decision of each MoE block, in block order; tokens in `[batch, T]` row-major
    /// order.
    pub routing: Vec<RoutingStats<B>>,
}

/// The byte-level language model; built by `LmConfig::init`.
#[derive(Module, Debug)]
pub struct Lm<B: MoeBackend> {
    pub(super) embedding: Embedding<B>,
    pub(super) blocks: Vec<LmBlock<B>>,
    pub(super) final_norm: RmsNorm<B>,
    /// The LM head `[d, vocab]`; `None` when tied to the embedding.
    pub(super) head: Option<Param<Tensor<B, 2>>>,
    pub(super) rotary: RotaryEncoding<B>,
    #[module(skip)]
    pub(super) context: usize,
}

impl<B: MoeBackend> Lm<B> {
    /// Logits at every position, the auxiliary loss and the MoE blocks' routing. Under
    /// `Autodiff` this is the training forward (MoE bias and budget steps happen inside).
    ///
    /// # Shapes
    /// - `tokens`: `[batch, T]` with `T <= context` (longer panics in the rotary table) ->
    ///   logits `[batch, T, vocab]`
    pub fn forward(&self, tokens: Tensor<B, 2, Int>) -> LmOutput<B> {
        self.run(tokens, false).0
    }

    /// [`Lm::forward`], and for every block the residual stream entering its feed-forward, the
    /// normed input its feed-forward and router see, and its routing decision (`None` for a
    /// dense block): what routing traces and predictors read. Rows in `[batch, T]` row-major
    /// order.
    ///
    /// # Shapes
    /// - `tokens`: `[batch, T]` -> logits `[batch, T, vocab]`; per block `[batch * T, d]`,
    ///   `[batch * T, d]`, `[batch * T, K]`
    pub fn forward_blocks(&self, tokens: Tensor<B, 2, Int>) -> (LmOutput<B>, Vec<BlockPass<B>>) {
        self.run(tokens, true)
    }

    /// The forward pass; keeps each block's inputs and routing only when asked (copies hold
    /// tensors alive, which stops in-place reuse on the plain forward).
    fn run(&self, tokens: Tensor<B, 2, Int>, keep: bool) -> (LmOutput<B>, Vec<BlockPass<B>>) {
        let [batch, t] = tokens.dims();
        let mut hidden = self.embed(tokens); // [batch * T, d]
        let mut aux_loss = Tensor::zeros([1], &hidden.device());
        let mut routing = Vec::new();
        let mut passes = Vec::new();
        for block in &self.blocks {
            let normed = block.attn_norm.forward(hidden.clone()); // [batch * T, d]
            hidden = hidden + block.attention.forward(normed, batch, &self.rotary); // [batch * T, d]
            let normed = block.ffn_norm.forward(hidden.clone()); // [batch * T, d]
            let out = if keep {
                let (out, decision) = block.ffn.forward_with_routing(normed.clone());
                passes.push(BlockPass {
                    residual: hidden.clone(),
                    normed,
                    routing: decision,
                });
                out
            } else {
                block.ffn.forward(normed)
            };
            hidden = hidden + out.output; // [batch * T, d]
            if let Some(loss) = out.aux_loss {
                aux_loss = aux_loss + loss;
            }
            routing.extend(out.stats);
        }
        let logits = self.head_logits(self.final_norm.forward(hidden)); // [batch * T, vocab]
        let output = LmOutput {
            logits: logits.reshape([batch, t, self.vocab_size()]), // [batch, T, vocab]
            aux_loss,
            routing,
        };
        (output, passes)
    }

    /// An empty key/value cache for decoding `batch` sequences with [`Lm::infer`].
    pub fn new_cache(&self, batch: usize, device: &B::Device) -> KvCache<B> {
        let heads = self.blocks[0].attention.num_heads();
        let shape = [heads, self.context, self.d_model() / heads];
        KvCache::new(self.blocks.len(), batch, shape, device)
    }

    /// Reads `t` more tokens of each sequence after the cached positions (prefill: the prompt;
    /// decode: `t = 1`), stores their keys and values in `cache`, and returns the next-token
    /// logits at the last new position. The feed-forward takes the output-only path
    /// ([`Ffn::infer`]); nothing is read back to the host. Refuses (cache untouched) a batch
    /// other than the cache's, `t = 0`, or more tokens than the context has left.
    ///
    /// # Shapes
    /// - `tokens`: `[batch, t]` -> `[batch, vocab]`
    pub fn infer(
        &self,
        tokens: Tensor<B, 2, Int>,
        cache: &mut KvCache<B>,
    ) -> Result<Tensor<B, 2>, InvalidValue> {
        let [batch, t] = tokens.dims();
        cache.check_fits(batch, t)?;
        let past = cache.len();
        let mut hidden = self.embed(tokens); // [batch * t, d]
        let layers = std::mem::take(&mut cache.layers);
        for (block, kv) in self.blocks.iter().zip(layers) {
            let normed = block.attn_norm.forward(hidden.clone()); // [batch * t, d]
            let (attended, kv) = block.attention.infer(normed, batch, &self.rotary, kv, past);
            cache.layers.push(kv);
            hidden = hidden + attended; // [batch * t, d]
            let normed = block.ffn_norm.forward(hidden.clone()); // [batch * t, d]
            hidden = hidden + block.ffn.infer(normed); // [batch * t, d]
        }
        cache.advance(t);
        let d_model = self.d_model();
        let last = hidden
            .reshape([batch, t, d_model])
            .narrow(1, t - 1, 1)
            .reshape([batch, d_model]); // [batch, d]
        Ok(self.head_logits(self.final_norm.forward(last))) // [batch, vocab]
    }

    /// Token embeddings as rows.
    ///
    /// # Shapes
    /// - `tokens`: `[batch, T]` -> `[batch * T, d]`
    fn embed(&self, tokens: Tensor<B, 2, Int>) -> Tensor<B, 2> {
        let [batch, t] = tokens.dims();
        self.embedding
            .forward(tokens)
            .reshape([batch * t, self.d_model()])
    }

    /// The LM head: the embedding matrix transposed when tied.
    ///
    /// # Shapes
    /// - `normed`: `[N, d]` -> `[N, vocab]`
    fn head_logits(&self, normed: Tensor<B, 2>) -> Tensor<B, 2> {
        match &self.head {
            Some(head) => normed.matmul(head.val()),
            None => normed.matmul(self.embedding.weight.val().transpose()),
        }
    }

    /// The transformer blocks, in order.
    pub fn blocks(&self) -> &[LmBlock<B>] {
        &self.blocks
    }

    /// Longest sequence the model reads.
    pub fn context(&self) -> usize {
        self.context
    }

    /// Number of token ids.
    pub fn vocab_size(&self) -> usize {
        self.embedding.weight.dims()[0]
    }

    /// Width d of the residual stream.
    pub fn d_model(&self) -> usize {
        self.embedding.weight.dims()[1]
    }

    /// Whether the LM head is the embedding matrix.
    pub fn tied_embeddings(&self) -> bool {
        self.head.is_none()
    }

    /// Indices of the blocks whose feed-forward is an MoE layer, ascending.
    pub fn moe_blocks(&self) -> Vec<usize> {
        self.blocks
            .iter()
            .enumerate()
            .filter(|(_, block)| matches!(block.ffn, Ffn::Moe(_)))
            .map(|(index, _)| index)
            .collect()
    }

    /// Number of MoE blocks (the length of [`LmOutput::routing`]).
    pub fn num_moe_blocks(&self) -> usize {
        self.moe_blocks().len()
    }

    /// The experts of every MoE block, in block order (what a model's quantized experts file
    /// holds), to quantize them or attach their quantized weights.
    pub fn moe_experts_mut(&mut self) -> Vec<&mut Experts<B>> {
        self.blocks
            .iter_mut()
            .filter_map(|block| block.ffn.experts_mut())
            .collect()
    }

    /// The mean-k budget's limit (tau or p) of every MoE block that has one, in block order.
    pub fn routing_limits(&self) -> Vec<f64> {
        self.blocks
            .iter()
            .filter_map(|block| match &block.ffn {
                Ffn::Moe(moe) => moe.control.limit(),
                Ffn::Dense(_) => None,
            })
            .collect()
    }
}
