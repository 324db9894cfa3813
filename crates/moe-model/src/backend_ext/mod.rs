//! The MoE layer's backend extension: routing, dispatch, the experts and combine as backend
//! operations, so a backend can bring its own kernels (Burn's custom-kernel pattern).
//!
//! The default methods are Burn tensor ops (`tensor_ops`) and serve every backend (NdArray here);
//! they are also the reference the kernel path is tested against. CubeCL backends override every
//! operation with the `moe-kernels` kernels, which run the whole layer without a host round trip;
//! a shape a kernel does not support falls back to the tensor ops and says so once. Under
//! `Autodiff`, the routing decision and the dispatch come from the inner backend (kernels on
//! CubeCL); the renormalised weights and the router loss are nodes with hand-written backwards
//! where the inner backend has routing kernels (`router_backward.rs`); the combine runs the inner
//! backend's forward with a backward of gathers (`combine_backward.rs`); the experts
//! train through a hand-written backward (`expert_backward.rs`: grouped GEMMs through
//! transposed weights and per-expert weight gradients) where the inner backend has kernels for
//! it, and through differentiated tensor ops elsewhere.

mod autodiff;
#[cfg(all(test, feature = "ndarray"))]
mod backward_tests;
mod combine_backward;
#[cfg(feature = "cubecl")]
mod cubecl;
#[cfg(feature = "cubecl")]
pub(crate) use cubecl::kernel_experts;
mod expert_backward;
mod fallback;
pub mod outputs;
#[cfg(all(test, feature = "cubecl", feature = "ndarray"))]
mod parity_tests;
#[cfg(all(test, feature = "cubecl"))]
mod precision_tests;
#[cfg(all(test, feature = "cubecl", feature = "ndarray"))]
mod quantized_tests;
mod router_backward;
#[cfg(all(test, feature = "ndarray"))]
mod router_backward_tests;
pub mod tensor_ops;

use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{DType, Int, Tensor};
use moe_kernels::grouped_gemm::ExpertShape;
pub use moe_kernels::router_train::LossWeights;
use moe_kernels::{Activation, RoutingPolicy};

use crate::feed_forward::{activate, activate_backward};
use crate::quantized_experts::QuantizedExperts;
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

    /// The router's logits `x @ weight` (`[T, d] @ [d, E]`, the gate without its bias).
    fn moe_router_logits(x: Tensor<Self, 2>, weight: Tensor<Self, 2>) -> Tensor<Self, 2> {
        x.matmul(weight)
    }

    /// Applies `policy` to router `logits` (`[T, E]`).
    fn moe_route(logits: Tensor<Self, 2>, policy: &RoutingPolicy) -> Routing<Self> {
        tensor_ops::route(logits, policy)
    }

    /// The weights of each token's chosen experts (`expert_ids` `[T, K]`, -1 unused) from the
    /// router `logits` (`[T, E]`): the softmax over the chosen logits, which is the renormalised
    /// probabilities; 0 in unused slots. The router learns from the combine through these.
    fn moe_routing_weights(
        logits: Tensor<Self, 2>,
        expert_ids: Tensor<Self, 2, Int>,
    ) -> Tensor<Self, 2> {
        tensor_ops::routing_weights(logits, expert_ids)
    }

    /// The gradient with respect to the logits (`[T, E]`) of routing `weights` (`[T, K]`, the
    /// softmax over the chosen logits as [`MoeBackend::moe_routing_weights`] computes them), from
    /// the weights' gradient `d_weights` (`[T, K]`); 0 for experts a token did not choose.
    fn moe_routing_weights_grad(
        weights: Tensor<Self, 2>,
        expert_ids: Tensor<Self, 2, Int>,
        d_weights: Tensor<Self, 2>,
        num_experts: usize,
    ) -> Tensor<Self, 2> {
        tensor_ops::routing_weights_grad(weights, expert_ids, d_weights, num_experts)
    }

    /// The router's weighted auxiliary loss (`[1]`): the Switch load-balancing loss and the
    /// z-loss of `logits` (`[T, E]`) routed as `expert_counts` (`[E]`), weighted by `weights`
    /// (specification: `moe_kernels::router_train::reference::router_loss`).
    fn moe_router_loss(
        logits: Tensor<Self, 2>,
        expert_counts: Tensor<Self, 1, Int>,
        weights: LossWeights,
    ) -> Tensor<Self, 1> {
        tensor_ops::router_loss(logits, expert_counts, weights)
    }

    /// `d_loss` (`[1]`) times the gradient of [`MoeBackend::moe_router_loss`] with respect to
    /// the logits, `[T, E]`.
    fn moe_router_loss_grad(
        logits: Tensor<Self, 2>,
        expert_counts: Tensor<Self, 1, Int>,
        weights: LossWeights,
        d_loss: Tensor<Self, 1>,
    ) -> Tensor<Self, 2> {
        tensor_ops::router_loss_grad(logits, expert_counts, weights, d_loss)
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

    /// [`MoeBackend::moe_experts`] with the experts' weights quantized (int8 or FP8 bytes and
    /// f32 scales): `rows[row] = act(x[token of row] @ dequantize(w_in[e])) @
    /// dequantize(w_out[e])`. The default dequantizes on the host and runs
    /// [`MoeBackend::moe_experts`] (`dequantized_experts`); CubeCL backends run the weight-only
    /// quantized kernel, which reads one byte per weight.
    ///
    /// # Shapes
    /// - `x`: `[T, d]`, `weights`: `w_in` `[E, d, input_columns(F)]`, `w_out` `[E, F, d]`
    fn moe_quantized_experts(
        x: Tensor<Self, 2>,
        dispatch: &Dispatch<Self>,
        weights: &QuantizedExperts<Self>,
        activation: Activation,
    ) -> ExpertRows<Self> {
        dequantized_experts(x, dispatch, weights, activation)
    }

    /// Whether [`MoeBackend::moe_expert_matmul`] and [`MoeBackend::moe_expert_weight_grad`] run
    /// as kernels: under `Autodiff` the experts then train through the hand-written backward
    /// (`expert_backward.rs`); otherwise Burn differentiates the tensor ops.
    const EXPERT_BACKWARD_KERNELS: bool = false;

    /// `out[row] = a[source of row] @ weights[e]` (or `@ weights[e]^T` when `transposed`) for
    /// every routed row, where the source is the row's token (`gather`) or the row itself:
    /// `[P, columns]` in dispatch order, rows past S unspecified. The training forward's
    /// projections and the backward's input gradients.
    ///
    /// # Shapes
    /// - `a`: `[T, depth]` (gather) or `[P, depth]`; `weights`: `[E, depth, columns]`, or
    ///   `[E, columns, depth]` when `transposed`
    fn moe_expert_matmul(
        a: Tensor<Self, 2>,
        gather: bool,
        dispatch: &Dispatch<Self>,
        weights: Tensor<Self, 3>,
        transposed: bool,
    ) -> Tensor<Self, 2> {
        tensor_ops::expert_matmul(a, gather, dispatch, weights, transposed)
    }

    /// The activation of every routed row's input projection: `act(pre[row])`, `[P, F]` in
    /// dispatch order, rows past S unspecified (the training forward, which keeps `pre` for the
    /// backward). The kernels run one element-wise kernel; Burn's tensor ops take several passes.
    ///
    /// # Shapes
    /// - `pre`: `[P, input_columns(F)]`
    fn moe_expert_activate(
        pre: Tensor<Self, 2>,
        _dispatch: &Dispatch<Self>,
        activation: Activation,
    ) -> Tensor<Self, 2> {
        activate(pre, activation)
    }

    /// The gradient of every routed row's input projection (before the activation) from the
    /// gradient of its output row: `activation'(pre[row])` applied to `d_rows[row] @ w_out[e]^T`,
    /// `[P, input_columns(F)]` in dispatch order, rows past S unspecified. The kernels fuse the
    /// SwiGLU backward into the GEMM's epilogue, so the hidden gradient is never stored.
    ///
    /// # Shapes
    /// - `d_rows`: `[P, d]`; `w_out`: `[E, F, d]`; `pre`: `[P, input_columns(F)]`
    fn moe_expert_pre_grad(
        d_rows: Tensor<Self, 2>,
        dispatch: &Dispatch<Self>,
        w_out: Tensor<Self, 3>,
        pre: Tensor<Self, 2>,
        activation: Activation,
    ) -> Tensor<Self, 2> {
        unfused_pre_grad(d_rows, dispatch, w_out, pre, activation)
    }

    /// `grad[e] = sum over the rows of e of outer(a[source of row], b[row])` (sources as in
    /// [`MoeBackend::moe_expert_matmul`]), zeros for experts without rows: the experts' weight
    /// gradients, deterministic.
    ///
    /// # Shapes
    /// - `a`: `[T, m]` (gather) or `[P, m]`; `b`: `[P, n]`; returns `[E, m, n]`
    fn moe_expert_weight_grad(
        a: Tensor<Self, 2>,
        gather: bool,
        b: Tensor<Self, 2>,
        dispatch: &Dispatch<Self>,
    ) -> Tensor<Self, 3> {
        tensor_ops::expert_weight_grad(a, gather, b, dispatch)
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

/// [`MoeBackend::moe_expert_pre_grad`] as two steps: the GEMM through the transposed weights,
/// then the activation's derivative as tensor ops.
fn unfused_pre_grad<B: MoeBackend>(
    d_rows: Tensor<B, 2>,
    dispatch: &Dispatch<B>,
    w_out: Tensor<B, 3>,
    pre: Tensor<B, 2>,
    activation: Activation,
) -> Tensor<B, 2> {
    let d_hidden = B::moe_expert_matmul(d_rows, false, dispatch, w_out, true);
    activate_backward(pre, d_hidden, activation)
}

/// [`MoeBackend::moe_quantized_experts`] on the float path: the weights dequantized on the host
/// (the reference's dequantization), in `x`'s type, through [`MoeBackend::moe_experts`].
fn dequantized_experts<B: MoeBackend>(
    x: Tensor<B, 2>,
    dispatch: &Dispatch<B>,
    weights: &QuantizedExperts<B>,
    activation: Activation,
) -> ExpertRows<B> {
    let dtype = x.dtype();
    let w_in = weights.w_in.dequantized(dtype); // [E, d, input_columns(F)]
    let w_out = weights.w_out.dequantized(dtype); // [E, F, d]
    B::moe_experts(x, dispatch, w_in, w_out, activation)
}

/// A training backend whose inner (inference) backend also runs the MoE layer.
pub trait MoeAutodiffBackend: MoeBackend + AutodiffBackend<InnerBackend: MoeBackend> {}

impl<B> MoeAutodiffBackend for B where B: MoeBackend + AutodiffBackend<InnerBackend: MoeBackend> {}

/// NdArray (f32) runs the MoE layer with the tensor-op defaults.
#[cfg(feature = "ndarray")]
impl MoeBackend for burn::backend::NdArray {}
