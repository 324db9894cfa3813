//! The MoE layer's backend extension: routing, dispatch, the experts and combine as backend
//! operations, so a backend can bring its own kernels (Burn's custom-kernel pattern).
//!
//! The default methods are Burn tensor ops (`tensor_ops`) and serve every backend (NdArray here);
//! they are also the reference the kernel path is tested against. CubeCL backends override every
//! operation with the `moe-kernels` kernels, which run the whole layer without a host round trip;
//! a shape a kernel does not support falls back to the tensor ops and says so once. Under
//! `Autodiff`, the routing decision and the dispatch come from the inner backend (kernels on
//! CubeCL) and the differentiable parts (the renormalised weights, the experts, combine) are
//! tensor ops, so no hand-written backward pass is needed.

mod autodiff;
#[cfg(feature = "cubecl")]
mod cubecl;
mod fallback;
mod outputs;
#[cfg(all(test, feature = "cubecl", feature = "ndarray"))]
mod parity_tests;
#[cfg(all(test, feature = "cubecl"))]
mod precision_tests;
pub mod tensor_ops;

use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{DType, Int, Tensor};
use moe_kernels::grouped_gemm::ExpertShape;
use moe_kernels::{Activation, RoutingPolicy};

pub(crate) use fallback::note_fallback;
pub use fallback::{Fallback, take_fallbacks};
pub use outputs::{Dispatch, ExpertRows, Routing};

/// Rows per tile of the dispatch's work list when the backend has no preference (tensor ops do
/// not read the tile list).
pub const DEFAULT_TILE_ROWS: usize = 64;

/// A backend that runs the stages of the MoE layer.
pub trait MoeBackend: Backend {
    /// Whether the layer's operations run as kernels here: routing steps no kernel covers
    /// (expert choice, capacity dropping) then note a fallback to tensor ops.
    const ROUTING_KERNELS: bool = false;

    /// Applies `policy` to router `logits` (`[T, E]`).
    fn moe_route(logits: Tensor<Self, 2>, policy: &RoutingPolicy) -> Routing<Self> {
        tensor_ops::route(logits, policy)
    }

    /// Rows per tile of the dispatch's work list that [`MoeBackend::moe_experts`] needs for a
    /// batch of `shape` in float type `dtype` on `device`.
    fn moe_tile_rows(
        _shape: &ExpertShape,
        _activation: Activation,
        _dtype: DType,
        _device: &Self::Device,
    ) -> usize {
        DEFAULT_TILE_ROWS
    }

    /// Groups the routed pairs of `expert_ids` (`[T, K]`, -1 unused) by expert, with a tile list
    /// of `tile_rows` rows per tile.
    fn moe_dispatch(
        expert_ids: Tensor<Self, 2, Int>,
        num_experts: usize,
        tile_rows: usize,
    ) -> Dispatch<Self> {
        tensor_ops::dispatch(expert_ids, num_experts, tile_rows)
    }

    /// Every expert on its routed rows: `rows[row] = act(x[token of row] @ w_in[e]) @ w_out[e]`.
    ///
    /// # Shapes
    /// - `x`: `[T, d]`, `w_in`: `[E, d, input_columns(F)]`, `w_out`: `[E, F, d]`
    fn moe_experts(
        x: Tensor<Self, 2>,
        dispatch: &Dispatch<Self>,
        w_in: Tensor<Self, 3>,
        w_out: Tensor<Self, 3>,
        activation: Activation,
    ) -> ExpertRows<Self> {
        tensor_ops::experts(x, dispatch, w_in, w_out, activation)
    }

    /// Weighted sum of each token's expert rows (`weights` `[T, K]`); returns `[T, d]`.
    fn moe_combine(
        rows: ExpertRows<Self>,
        weights: Tensor<Self, 2>,
        dispatch: &Dispatch<Self>,
    ) -> Tensor<Self, 2> {
        tensor_ops::combine(rows, weights, dispatch)
    }
}

/// A training backend whose inner (inference) backend also runs the MoE layer.
pub trait MoeAutodiffBackend: MoeBackend + AutodiffBackend<InnerBackend: MoeBackend> {}

impl<B> MoeAutodiffBackend for B where B: MoeBackend + AutodiffBackend<InnerBackend: MoeBackend> {}

/// NdArray (f32) runs the MoE layer with the tensor-op defaults.
#[cfg(feature = "ndarray")]
impl MoeBackend for burn::backend::NdArray {}
