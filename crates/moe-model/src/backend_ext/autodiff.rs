//! `MoeBackend` under `Autodiff`: decisions from the inner backend; gradients from tensor ops
//! (routing weights), the combine's hand-written gather backward, and for the experts the
//! hand-written backward where the inner backend has kernels.

use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::tensor::activation::softmax;
use burn::tensor::{DType, Int, Tensor};
use moe_kernels::grouped_gemm::ExpertShape;
use moe_kernels::{Activation, RoutingPolicy};

use super::{
    Dispatch, ExpertRows, MoeBackend, Routing, combine_backward, expert_backward, tensor_ops,
};

/// The combine runs the inner backend's forward with a gather backward; the experts use the
/// hand-written backward where the inner backend has kernels for it; the routing decision and
/// the dispatch plan are not differentiable and come from the inner backend.
impl<B: MoeBackend, C: CheckpointStrategy> MoeBackend for Autodiff<B, C> {
    const ROUTING_KERNELS: bool = B::ROUTING_KERNELS;

    /// The inner backend picks the experts and k; the weights are recomputed from the
    /// probabilities of the chosen experts with tensor ops, so gradients reach the router.
    fn moe_route(logits: Tensor<Self, 2>, policy: &RoutingPolicy) -> Routing<Self> {
        let decision = B::moe_route(logits.clone().inner(), policy);
        let expert_ids: Tensor<Self, 2, Int> = Tensor::from_inner(decision.expert_ids); // [T, K]
        let probs = softmax(logits.clone(), 1); // [T, E]
        let used = expert_ids.clone().greater_equal_elem(0); // [T, K]
        let chosen = probs.clone().gather(1, expert_ids.clone().clamp_min(0)); // [T, K]
        let kept = chosen.mask_fill(used.bool_not(), 0.0); // [T, K]
        let weights = kept.clone() / kept.sum_dim(1); // [T, K]
        Routing {
            logits,
            probs,
            expert_ids,
            weights,
            token_k: Tensor::from_inner(decision.token_k),
        }
    }

    fn moe_tile_rows(
        shape: &ExpertShape,
        activation: Activation,
        dtype: DType,
        device: &Self::Device,
    ) -> usize {
        B::moe_tile_rows(shape, activation, dtype, device)
    }

    /// Kernels' hand-written backward where the inner backend has it, else differentiated
    /// tensor ops.
    fn moe_experts(
        x: Tensor<Self, 2>,
        dispatch: &Dispatch<Self>,
        w_in: Tensor<Self, 3>,
        w_out: Tensor<Self, 3>,
        activation: Activation,
    ) -> ExpertRows<Self> {
        if B::EXPERT_BACKWARD_KERNELS {
            expert_backward::experts(x, dispatch, w_in, w_out, activation)
        } else {
            tensor_ops::experts(x, dispatch, w_in, w_out, activation)
        }
    }

    /// The inner backend's combine (the kernel on CubeCL), differentiated by gathers.
    fn moe_combine(
        rows: ExpertRows<Self>,
        weights: Tensor<Self, 2>,
        dispatch: &Dispatch<Self>,
    ) -> Tensor<Self, 2> {
        combine_backward::combine(rows, weights, dispatch)
    }

    fn moe_dispatch(
        expert_ids: Tensor<Self, 2, Int>,
        num_experts: usize,
        tile_rows: usize,
    ) -> Dispatch<Self> {
        let inner = B::moe_dispatch(expert_ids.inner(), num_experts, tile_rows);
        Dispatch {
            expert_offsets: Tensor::from_inner(inner.expert_offsets),
            routed_pairs: Tensor::from_inner(inner.routed_pairs),
            row_of_pair: Tensor::from_inner(inner.row_of_pair),
            tiles: Tensor::from_inner(inner.tiles),
            num_tiles: Tensor::from_inner(inner.num_tiles),
            tile_rows: inner.tile_rows,
        }
    }
}
