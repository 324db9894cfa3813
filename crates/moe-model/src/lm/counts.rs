//! Parameter and FLOP counts of [`Lm`]: total, and what one token uses given how many experts it
//! visits in each MoE block.

use burn::module::Module;

use crate::backend_ext::MoeBackend;
use crate::ffn::Ffn;
use crate::lm::model::Lm;
use crate::model::ParamCounts;

impl<B: MoeBackend> Lm<B> {
    /// Total parameters, and those a token uses when it visits `mean_k[i]` experts in the i-th
    /// MoE block (one entry per MoE block, [`Lm::num_moe_blocks`]); the embedding counts as used.
    ///
    /// # Panics
    /// When `mean_k` does not have one entry per MoE block.
    pub fn param_counts(&self, mean_k: &[f64]) -> ParamCounts {
        let total = self.num_params();
        let idle: f64 = self
            .moe_layers(mean_k)
            .map(|(moe, k)| (moe.num_experts() as f64 - k) * moe.experts.params_per_expert() as f64)
            .sum();
        ParamCounts {
            total,
            active: total as f64 - idle,
        }
    }

    /// Forward FLOPs per token at full context: `2 x` the matrix-product parameters a token
    /// uses (attention projections, the feed-forward with `mean_k[i]` experts per MoE block, the
    /// routers, the LM head; not the embedding lookup or the norms) plus `4 * context * d` per
    /// block for the attention scores and the weighted values (`QK^T` and `AV`, 2 FLOPs per
    /// multiply-add, every key counted as in Kaplan et al.). Training costs about 3x this.
    ///
    /// # Panics
    /// When `mean_k` does not have one entry per MoE block.
    pub fn flops_per_token(&self, mean_k: &[f64]) -> f64 {
        let d_model = self.d_model() as f64;
        let attention_projections = 4.0 * d_model * d_model;
        let mut ks = self.moe_layers(mean_k).map(|(_, k)| k);
        let feed_forward: f64 = self
            .blocks
            .iter()
            .map(|block| match &block.ffn {
                Ffn::Dense(mlp) => mlp.num_params() as f64,
                Ffn::Moe(moe) => {
                    let k = ks.next().expect("one mean k per MoE block");
                    moe.router.num_params() as f64
                        + k * moe.experts.params_per_expert() as f64
                        + moe.shared_experts.as_ref().map_or(0, |s| s.num_params()) as f64
                }
            })
            .sum();
        let head = d_model * self.vocab_size() as f64;
        let num_blocks = self.blocks.len() as f64;
        let matmul_params = num_blocks * attention_projections + feed_forward + head;
        2.0 * matmul_params + num_blocks * 4.0 * self.context as f64 * d_model
    }

    /// The MoE layers in block order, each with its entry of `mean_k`.
    fn moe_layers<'a>(
        &'a self,
        mean_k: &'a [f64],
    ) -> impl Iterator<Item = (&'a crate::moe::MoeLayer<B>, f64)> + 'a {
        let layers: Vec<_> = self
            .blocks
            .iter()
            .filter_map(|block| match &block.ffn {
                Ffn::Moe(moe) => Some(moe),
                Ffn::Dense(_) => None,
            })
            .collect();
        assert_eq!(
            layers.len(),
            mean_k.len(),
            "one mean k per MoE block: {} MoE blocks, {} values",
            layers.len(),
            mean_k.len()
        );
        layers.into_iter().zip(mean_k.iter().copied())
    }
}
