//! A small classifier: input projection, N residual blocks (norm, feed-forward), classifier head.

use burn::config::Config;
use burn::module::Module;
use burn::nn::{LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::{Tensor, backend::Backend};

use crate::InvalidValue;
use crate::backend_ext::{MoeBackend, Routing};
use crate::experts::Experts;
use crate::ffn::{Ffn, FfnConfig};
use crate::moe::{MoeLayerConfig, RoutingStats};
use crate::precision::in_backend_float_type;

/// Configuration of [`Model`]; input width and class count come from the task at `init`.
#[derive(Config, Debug)]
pub struct ModelConfig {
    /// Width d of the residual stream.
    #[config(default = 64)]
    pub d_model: usize,
    /// Number of residual blocks.
    #[config(default = 2)]
    pub num_blocks: usize,
    /// Feed-forward of every block.
    #[config(default = "FfnConfig::Moe(MoeLayerConfig::new())")]
    pub ffn: FfnConfig,
}

impl ModelConfig {
    /// Checks sizes and the feed-forward.
    pub fn validate(&self) -> Result<(), InvalidValue> {
        if self.d_model == 0 {
            return Err(InvalidValue::new("d_model", 0, "must be >= 1"));
        }
        if self.num_blocks == 0 {
            return Err(InvalidValue::new("num_blocks", 0, "must be >= 1"));
        }
        self.ffn.validate().map_err(|e| e.within("ffn"))
    }

    /// A freshly initialised model for inputs of `input_dim` features and `num_classes` labels.
    pub fn init<B: MoeBackend>(
        &self,
        input_dim: usize,
        num_classes: usize,
        device: &B::Device,
    ) -> Model<B> {
        let model = Model {
            input: LinearConfig::new(input_dim, self.d_model).init(device),
            blocks: (0..self.num_blocks)
                .map(|_| Block {
                    norm: LayerNormConfig::new(self.d_model).init(device),
                    ffn: self.ffn.init(self.d_model, device),
                })
                .collect(),
            final_norm: LayerNormConfig::new(self.d_model).init(device),
            head: LinearConfig::new(self.d_model, num_classes).init(device),
        };
        in_backend_float_type(model, device)
    }
}

/// Pre-norm residual block: `h + ffn(norm(h))`.
#[derive(Module, Debug)]
pub struct Block<B: MoeBackend> {
    /// The norm in front of the feed-forward (the router sees its output).
    pub norm: LayerNorm<B>,
    /// The block's feed-forward.
    pub ffn: Ffn<B>,
}

/// What one block saw and decided in [`Model::forward_blocks`].
#[derive(Clone, Debug)]
pub struct BlockPass<B: Backend> {
    /// The residual stream entering the block. `[T, d]`
    pub residual: Tensor<B, 2>,
    /// The block's normed input: what its feed-forward and router see. `[T, d]`
    pub normed: Tensor<B, 2>,
    /// The routing decision of an MoE block (`None` for a dense one). `[T, K]`
    pub routing: Option<Routing<B>>,
}

/// Output of [`Model::forward`].
#[derive(Clone, Debug)]
pub struct ModelOutput<B: Backend> {
    /// Class logits. `[T, C]`
    pub logits: Tensor<B, 2>,
    /// Sum of the weighted auxiliary router losses of all MoE blocks (0 for a dense model). `[1]`
    pub aux_loss: Tensor<B, 1>,
    /// Routing decision of each MoE block, in block order (empty for a dense model).
    pub routing: Vec<RoutingStats<B>>,
}

/// Parameter counts of a model, total and per token.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ParamCounts {
    /// Every parameter.
    pub total: usize,
    /// Parameters one token touches on average, given the mean number of experts it uses.
    pub active: f64,
}

/// The classifier the experiments train.
#[derive(Module, Debug)]
pub struct Model<B: MoeBackend> {
    input: Linear<B>,
    blocks: Vec<Block<B>>,
    final_norm: LayerNorm<B>,
    head: Linear<B>,
}

impl<B: MoeBackend> Model<B> {
    /// # Shapes
    /// - `x`: `[T, input_dim]` -> logits `[T, C]`
    pub fn forward(&self, x: Tensor<B, 2>) -> ModelOutput<B> {
        let mut hidden = self.input.forward(x); // [T, d]
        let mut aux_loss = Tensor::zeros([1], &hidden.device());
        let mut routing = Vec::new();
        for block in &self.blocks {
            let out = block.ffn.forward(block.norm.forward(hidden.clone()));
            hidden = hidden + out.output; // [T, d]
            if let Some(loss) = out.aux_loss {
                aux_loss = aux_loss + loss;
            }
            routing.extend(out.stats);
        }
        ModelOutput {
            logits: self.head.forward(self.final_norm.forward(hidden)), // [T, C]
            aux_loss,
            routing,
        }
    }

    /// [`Model::forward`], and for every block its residual input, its normed input and its
    /// routing decision: what routing predictors read (`crate::prediction`).
    ///
    /// # Shapes
    /// - `x`: `[T, input_dim]` -> logits `[T, C]`; per block `[T, d]`, `[T, d]`, `[T, K]`
    pub fn forward_blocks(&self, x: Tensor<B, 2>) -> (ModelOutput<B>, Vec<BlockPass<B>>) {
        let mut hidden = self.input.forward(x); // [T, d]
        let mut aux_loss = Tensor::zeros([1], &hidden.device());
        let mut routing = Vec::new();
        let mut passes = Vec::with_capacity(self.blocks.len());
        for block in &self.blocks {
            let normed = block.norm.forward(hidden.clone()); // [T, d]
            let (out, decision) = block.ffn.forward_with_routing(normed.clone());
            passes.push(BlockPass {
                residual: hidden.clone(),
                normed,
                routing: decision,
            });
            hidden = hidden + out.output; // [T, d]
            if let Some(loss) = out.aux_loss {
                aux_loss = aux_loss + loss;
            }
            routing.extend(out.stats);
        }
        let output = ModelOutput {
            logits: self.head.forward(self.final_norm.forward(hidden)), // [T, C]
            aux_loss,
            routing,
        };
        (output, passes)
    }

    /// The residual blocks, in order.
    pub fn blocks(&self) -> &[Block<B>] {
        &self.blocks
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

    /// Total parameters, and those a token uses when it visits `mean_k` experts per MoE block.
    pub fn param_counts(&self, mean_k: f64) -> ParamCounts {
        let total = self.num_params();
        let idle: f64 = self
            .blocks
            .iter()
            .filter_map(|block| match &block.ffn {
                Ffn::Moe(moe) => Some(
                    (moe.num_experts() as f64 - mean_k) * moe.experts.params_per_expert() as f64,
                ),
                Ffn::Dense(_) => None,
            })
            .sum();
        ParamCounts {
            total,
            active: total as f64 - idle,
        }
    }
}
