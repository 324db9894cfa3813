//! `MoeBackend` for CubeCL backends (CUDA, wgpu): the `moe-kernels` route, dispatch, grouped
//! GEMMs and combine, with no host round trip between them. One file per stage (`routing.rs`,
//! `experts.rs`, `quantized.rs`, `combine.rs`); every operation runs through `launch.rs`'s [`on_kernels`].
//!
//! The kernels run in the element type of the tensors they are given (f32, f16 or bf16), not in
//! the backend's default float type: Burn keeps default dtypes per device, so a tensor on a
//! `CubeBackend<R, bf16>` can hold f32 values when another backend set up the device first.
//!
//! A kernel that reports an input it does not support (e.g. more slots than the route kernel
//! keeps in registers), or that the runtime refuses at its first launch (compilation, shared
//! memory), hands the operation to the tensor ops, and the fallback is printed once
//! (`fallback.rs`). An invalid input means the layer built wrong arguments: that is a bug, and it
//! panics with the kernel's message rather than hiding behind the slow path.

mod combine;
mod experts;
mod launch;
#[cfg(test)]
mod launch_tests;
mod quantized;
mod routing;
mod tensors;

use burn::tensor::{DType, Int, Tensor};
use burn_cubecl::{BoolElement, CubeRuntime, FloatElement, IntElement};
use moe_kernels::grouped_gemm::ExpertShape;
use moe_kernels::{Activation, RoutingPolicy};

pub(crate) use experts::kernel_experts;
use tensors::Cube;

use super::{Dispatch, ExpertRows, LossWeights, MoeBackend, Routing};
use crate::quantized_experts::QuantizedExperts;

impl<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement> MoeBackend
    for Cube<R, F, I, BT>
{
    const ROUTING_KERNELS: bool = true;

    /// The router-logits kernel at every batch size (each token's logits summed the same way
    /// whatever the batch).
    fn moe_router_logits(x: Tensor<Self, 2>, weight: Tensor<Self, 2>) -> Tensor<Self, 2> {
        routing::router_logits(x, weight)
    }

    fn moe_route(logits: Tensor<Self, 2>, policy: &RoutingPolicy) -> Routing<Self> {
        routing::route(logits, policy)
    }

    fn moe_routing_weights_grad(
        weights: Tensor<Self, 2>,
        expert_ids: Tensor<Self, 2, Int>,
        d_weights: Tensor<Self, 2>,
        num_experts: usize,
    ) -> Tensor<Self, 2> {
        routing::routing_weights_grad(weights, expert_ids, d_weights, num_experts)
    }

    fn moe_router_loss(
        logits: Tensor<Self, 2>,
        expert_counts: Tensor<Self, 1, Int>,
        weights: LossWeights,
    ) -> Tensor<Self, 1> {
        routing::router_loss(logits, expert_counts, weights)
    }

    fn moe_router_loss_grad(
        logits: Tensor<Self, 2>,
        expert_counts: Tensor<Self, 1, Int>,
        weights: LossWeights,
        d_loss: Tensor<Self, 1>,
    ) -> Tensor<Self, 2> {
        routing::router_loss_grad(logits, expert_counts, weights, d_loss)
    }

    fn moe_tile_rows(
        shape: &ExpertShape,
        activation: Activation,
        dtype: DType,
        device: &Self::Device,
    ) -> usize {
        experts::tile_rows::<R>(shape, activation, dtype, device)
    }

    fn moe_dispatch(
        expert_ids: Tensor<Self, 2, Int>,
        num_experts: usize,
        tile_rows: usize,
    ) -> Dispatch<Self> {
        routing::dispatch(expert_ids, num_experts, tile_rows)
    }

    fn moe_experts(
        x: Tensor<Self, 2>,
        dispatch: &Dispatch<Self>,
        w_in: Tensor<Self, 3>,
        w_out: Tensor<Self, 3>,
        activation: Activation,
    ) -> ExpertRows<Self> {
        experts::experts(x, dispatch, w_in, w_out, activation)
    }

    fn moe_quantized_experts(
        x: Tensor<Self, 2>,
        dispatch: &Dispatch<Self>,
        weights: &QuantizedExperts<Self>,
        activation: Activation,
    ) -> ExpertRows<Self> {
        quantized::quantized_experts(x, dispatch, weights, activation)
    }

    const EXPERT_BACKWARD_KERNELS: bool = true;

    fn moe_expert_matmul(
        a: Tensor<Self, 2>,
        gather: bool,
        dispatch: &Dispatch<Self>,
        weights: Tensor<Self, 3>,
        transposed: bool,
    ) -> Tensor<Self, 2> {
        experts::expert_matmul(a, gather, dispatch, weights, transposed)
    }

    fn moe_expert_activate(
        pre: Tensor<Self, 2>,
        dispatch: &Dispatch<Self>,
        activation: Activation,
    ) -> Tensor<Self, 2> {
        experts::expert_activate(pre, dispatch, activation)
    }

    fn moe_expert_pre_grad(
        d_rows: Tensor<Self, 2>,
        dispatch: &Dispatch<Self>,
        w_out: Tensor<Self, 3>,
        pre: Tensor<Self, 2>,
        activation: Activation,
    ) -> Tensor<Self, 2> {
        experts::expert_pre_grad(d_rows, dispatch, w_out, pre, activation)
    }

    fn moe_expert_weight_grad(
        a: Tensor<Self, 2>,
        gather: bool,
        b: Tensor<Self, 2>,
        dispatch: &Dispatch<Self>,
    ) -> Tensor<Self, 3> {
        experts::expert_weight_grad(a, gather, b, dispatch)
    }

    fn moe_combine(
        rows: ExpertRows<Self>,
        weights: Tensor<Self, 2>,
        dispatch: &Dispatch<Self>,
    ) -> Tensor<Self, 2> {
        combine::combine(rows, weights, dispatch)
    }
}
