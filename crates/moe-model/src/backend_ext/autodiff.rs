//! `MoeBackend` under `Autodiff`: decisions from the inner backend; where it has kernels,
//! hand-written backwards for the routing weights and the router loss (`router_backward.rs`) and
//! for the experts (`expert_backward.rs`), and everywhere the combine's gather backward.

use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::tensor::{DType, Int, Tensor};
use moe_kernels::grouped_gemm::ExpertShape;
use moe_kernels::{Activation, RoutingPolicy};

use super::{
    Dispatch, ExpertRows, LossWeights, MoeBackend, Routing, combine_backward, expert_backward,
    router_backward, tensor_ops,
};

/// The combine runs the inner backend's forward with a gather backward; the routing weights, the
/// router loss and the experts use hand-written backwards where the inner backend has kernels
/// for them; the routing decision, the probabilities and the dispatch plan are not
/// differentiable and come from the inner backend.
impl<B: MoeBackend, C: CheckpointStrategy> MoeBackend for Autodiff<B, C> {
    const ROUTING_KERNELS: bool = B::ROUTING_KERNELS;

    /// The inner backend picks the experts and k; the weights differentiate into the logits
    /// (a node with a hand-written backward where the inner backend has routing kernels, else
    /// the tensor ops recomputed), so gradients reach the router.
    fn moe_route(logits: Tensor<Self, 2>, policy: &RoutingPolicy) -> Routing<Self> {
        let decision = B::moe_route(logits.clone().inner(), policy);
        let expert_ids: Tensor<Self, 2, Int> = Tensor::from_inner(decision.expert_ids.clone());
        let weights = match B::ROUTING_KERNELS {
            true => router_backward::routing_weights(
                logits.clone(),
                decision.expert_ids,
                decision.weights,
            ),
            false => tensor_ops::routing_weights(logits.clone(), expert_ids.clone()),
        };
        Routing {
            logits,
            expert_ids,
            weights,
            token_k: Tensor::from_inner(decision.token_k),
        }
    }

    /// The inner backend's weights with the hand-written backward where it has routing kernels,
    /// else the tensor ops, differentiated.
    fn moe_routing_weights(
        logits: Tensor<Self, 2>,
        expert_ids: Tensor<Self, 2, Int>,
    ) -> Tensor<Self, 2> {
        if !B::ROUTING_KERNELS {
            return tensor_ops::routing_weights(logits, expert_ids);
        }
        let expert_ids = expert_ids.inner();
        let weights = B::moe_routing_weights(logits.clone().inner(), expert_ids.clone());
        router_backward::routing_weights(logits, expert_ids, weights)
    }

    /// The inner backend's loss with the hand-written backward where it has routing kernels,
    /// else the tensor ops, differentiated.
    fn moe_router_loss(
        logits: Tensor<Self, 2>,
        expert_counts: Tensor<Self, 1, Int>,
        weights: LossWeights,
    ) -> Tensor<Self, 1> {
        match B::ROUTING_KERNELS {
            true => router_backward::router_loss(logits, expert_counts.inner(), weights),
            false => tensor_ops::router_loss(logits, expert_counts, weights),
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
