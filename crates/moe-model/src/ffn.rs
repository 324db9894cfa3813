//! The feed-forward of a block: a dense MLP or an MoE layer, chosen by configuration.

use burn::module::Module;
use burn::tensor::{Tensor, backend::Backend};
use serde::{Deserialize, Serialize};

use crate::InvalidValue;
use crate::backend_ext::{MoeBackend, Routing};
use crate::experts::Experts;
use crate::mlp::{DenseMlp, DenseMlpConfig};
use crate::moe::{MoeLayer, MoeLayerConfig, MoeOutput, RoutingStats};
use crate::precision::FloatType;

/// Which feed-forward the blocks use; `kind = "dense"` or `kind = "moe"` in config files.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum FfnConfig {
    /// Every token through one MLP.
    Dense(DenseMlpConfig),
    /// Every token through the experts its router picks.
    Moe(MoeLayerConfig),
}

impl FfnConfig {
    /// Checks the chosen configuration.
    pub fn validate(&self) -> Result<(), InvalidValue> {
        match self {
            FfnConfig::Dense(config) => config.validate(),
            FfnConfig::Moe(config) => config.validate(),
        }
    }

    /// The float type of the products when it is not the parameters' (mixed precision).
    pub fn compute_type(&self) -> Option<FloatType> {
        match self {
            FfnConfig::Dense(config) => config.compute_type,
            FfnConfig::Moe(config) => config.compute_type,
        }
    }

    /// A freshly initialised feed-forward over rows of width `d_model`.
    pub fn init<B: MoeBackend>(&self, d_model: usize, device: &B::Device) -> Ffn<B> {
        match self {
            FfnConfig::Dense(config) => Ffn::Dense(config.init(d_model, device)),
            FfnConfig::Moe(config) => Ffn::Moe(config.init(d_model, device)),
        }
    }
}

impl std::fmt::Display for FfnConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FfnConfig::Dense(c) => write!(f, "dense F={}", c.width)?,
            FfnConfig::Moe(c) => write!(
                f,
                "moe E={} F={} {}{}",
                c.num_experts,
                c.expert_width,
                c.routing,
                c.describe()
            )?,
        }
        match self.compute_type() {
            Some(compute) => write!(f, ", {} products", compute.name()),
            None => Ok(()),
        }
    }
}

/// A dense MLP or an MoE layer behind one interface.
#[derive(Module, Debug)]
pub enum Ffn<B: MoeBackend> {
    /// Dense baseline.
    Dense(DenseMlp<B>),
    /// Mixture of Experts.
    Moe(MoeLayer<B>),
}

/// Output of [`Ffn::forward`]; the MoE parts are `None` for a dense MLP.
#[derive(Clone, Debug)]
pub struct FfnOutput<B: Backend> {
    /// `[T, d]`
    pub output: Tensor<B, 2>,
    /// Weighted auxiliary router losses. `[1]`
    pub aux_loss: Option<Tensor<B, 1>>,
    /// The routing decision.
    pub stats: Option<RoutingStats<B>>,
}

impl<B: MoeBackend> Ffn<B> {
    /// The experts of an MoE layer (`None` for a dense MLP), to change (quantize) them.
    pub fn experts_mut(&mut self) -> Option<&mut Experts<B>> {
        match self {
            Ffn::Dense(_) => None,
            Ffn::Moe(moe) => Some(&mut moe.experts),
        }
    }

    /// # Shapes
    /// - `x`: `[T, d]` -> output `[T, d]`
    pub fn forward(&self, x: Tensor<B, 2>) -> FfnOutput<B> {
        match self {
            Ffn::Dense(mlp) => FfnOutput {
                output: mlp.forward(x),
                aux_loss: None,
                stats: None,
            },
            Ffn::Moe(moe) => moe_output(moe.forward(x)),
        }
    }

    /// The output of [`Ffn::forward`] alone, for serving: an MoE layer runs
    /// [`MoeLayer::infer`] (no balance losses, no routing statistics).
    ///
    /// # Shapes
    /// - `x`: `[T, d]` -> `[T, d]`
    pub fn infer(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        match self {
            Ffn::Dense(mlp) => mlp.forward(x),
            Ffn::Moe(moe) => moe.infer(x),
        }
    }

    /// [`Ffn::forward`], and the routing decision of an MoE layer (`None` for a dense MLP).
    ///
    /// # Shapes
    /// - `x`: `[T, d]` -> output `[T, d]`, routing `[T, K]`
    pub fn forward_with_routing(&self, x: Tensor<B, 2>) -> (FfnOutput<B>, Option<Routing<B>>) {
        match self {
            Ffn::Dense(_) => (self.forward(x), None),
            Ffn::Moe(moe) => {
                let (out, routing) = moe.forward_with_routing(x);
                (moe_output(out), Some(routing))
            }
        }
    }
}

/// An MoE layer's output as the feed-forward's.
fn moe_output<B: Backend>(out: MoeOutput<B>) -> FfnOutput<B> {
    FfnOutput {
        output: out.output,
        aux_loss: Some(out.aux_loss),
        stats: Some(out.stats),
    }
}
