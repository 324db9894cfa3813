//! The MoE layer's backend extension: routing, dispatch and combine as backend operations, so a
//! backend can bring its own kernels (Burn's custom-kernel pattern).
//!
//! The default methods use Burn tensor ops and serve every backend (NdArray here). CubeCL
//! backends override route, dispatch and combine with the `moe-kernels` kernels. Under
//! `Autodiff`, the routing decision and the dispatch come from the inner backend (kernels on
//! CubeCL) and the differentiable parts (the renormalised weights, combine) are tensor ops, so
//! no hand-written backward pass is needed.

mod autodiff;
#[cfg(feature = "cubecl")]
mod cubecl;
#[cfg(all(test, feature = "cubecl", feature = "ndarray"))]
mod parity_tests;

use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor};
use moe_kernels::RoutingPolicy;

use crate::dispatch::{Dispatch, combine_with_tensor_ops, dispatch_with_tensor_ops};
use crate::router::{Routing, route};

/// A backend that runs the routing stages of the MoE layer.
pub trait MoeBackend: Backend {
    /// Whether route, dispatch and combine run as kernels here (routing steps no kernel covers
    /// then say once that they run with tensor ops).
    const ROUTING_KERNELS: bool = false;

    /// Applies `policy` to router `logits` (`[T, E]`).
    fn moe_route(logits: Tensor<Self, 2>, policy: &RoutingPolicy) -> Routing<Self> {
        route(logits, policy)
    }

    /// Groups the routed pairs of `expert_ids` (`[T, K]`, -1 unused) by expert.
    fn moe_dispatch(expert_ids: Tensor<Self, 2, Int>, num_experts: usize) -> Dispatch<Self> {
        dispatch_with_tensor_ops(expert_ids, num_experts)
    }

    /// Weighted sum of each token's expert rows (`expert_rows` `[S, d]`, `weights` `[T, K]`).
    fn moe_combine(
        expert_rows: Tensor<Self, 2>,
        weights: Tensor<Self, 2>,
        dispatch: &Dispatch<Self>,
    ) -> Tensor<Self, 2> {
        combine_with_tensor_ops(expert_rows, weights, dispatch)
    }
}

/// A training backend whose inner (inference) backend also runs the MoE layer.
pub trait MoeAutodiffBackend: MoeBackend + AutodiffBackend<InnerBackend: MoeBackend> {}

impl<B> MoeAutodiffBackend for B where B: MoeBackend + AutodiffBackend<InnerBackend: MoeBackend> {}

/// NdArray (f32) runs the MoE layer with the tensor-op defaults.
#[cfg(feature = "ndarray")]
impl MoeBackend for burn::backend::NdArray {}
