//! Burn modules for variable-k Mixture-of-Experts layers and their dense baseline, generic over
//! the backend (NdArray on CPU, Wgpu, Cuda) and trainable under `Autodiff`.
//!
//! The MoE layer follows the data flow of `docs/DESIGN.md`: the router picks experts per token
//! ([`RoutingPolicy`]), dispatch groups the routed pairs by expert, each expert runs only on its
//! rows, and combine sums each token's expert outputs weighted by the router.

pub mod backend_ext;
pub mod expert_parallel;
pub mod experts;
pub mod feed_forward;
pub mod ffn;
mod init;
pub mod lm;
#[cfg(test)]
mod mixed_precision_tests;
pub mod mlp;
pub mod model;
pub mod moe;
pub mod offload;
pub mod precision;
pub mod prediction;
pub mod quantized_experts;
pub mod routing;
pub mod shared_experts;
#[cfg(test)]
mod test_support;

pub use backend_ext::{Dispatch, ExpertRows, MoeAutodiffBackend, MoeBackend, Routing};
pub use feed_forward::Activation;
pub use ffn::{Ffn, FfnConfig, FfnOutput};
pub use lm::{KvCache, Lm, LmConfig, LmOutput};
pub use mlp::{DenseMlp, DenseMlpConfig};
pub use model::{Block, BlockPass, Model, ModelConfig, ModelOutput, ParamCounts};
pub use moe::{MoeLayer, MoeLayerConfig, MoeOutput, RoutingStats};
pub use moe_kernels::quantized::QuantFormat;
pub use moe_kernels::{InvalidValue, RoutingPolicy, UNUSED_SLOT, expert_capacity};
pub use precision::{FloatType, UnknownFloatType, cast_float_params};
pub use quantized_experts::QuantizedExperts;
pub use routing::balance::BalanceMethod;
pub use routing::router::Router;
