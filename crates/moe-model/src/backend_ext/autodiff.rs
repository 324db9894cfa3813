//! `MoeBackend` under `Autodiff`: decisions from the inner backend, gradients from tensor ops.

use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::tensor::activation::softmax;
use burn::tensor::{Int, Tensor};
use moe_kernels::RoutingPolicy;

use super::{Dispatch, MoeBackend, Routing};

/// The experts and combine take the tensor-op defaults (differentiable); the routing decision
/// and the dispatch plan are not differentiable and come from the inner backend.
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
