//! Routing policies and CubeCL kernels for variable-k Mixture-of-Experts layers, generic over the
//! CubeCL runtime (CUDA, wgpu) and the element types.
//!
//! Every operation comes with a plain-Rust `reference` module: the specification the kernels and
//! the Burn tensor-op path are tested against.

pub mod activate;
mod activation;
mod buffer;
pub mod capability;
pub mod combine;
pub mod dispatch;
mod error;
pub mod expert_grad;
pub mod grouped_gemm;
mod pipeline;
mod plane;
mod policy;
pub mod quantized;
pub mod route;
pub mod router_logits;
pub mod router_train;
pub mod stage;
#[cfg(test)]
mod testgen;

pub use activation::Activation;
pub use error::{InvalidValue, KernelError};
pub use policy::{RoutingPolicy, UNUSED_SLOT, expert_capacity};
