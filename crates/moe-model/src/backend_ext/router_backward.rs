//! The router's differentiable outputs under `Autodiff` as nodes with hand-written backwards, for
//! backends with routing kernels.
//!
//! Differentiating the routing weights (softmax, gather, mask, renormalisation) and the auxiliary
//! losses (softmax, balance loss, log-sum-exp, z-loss) as tensor ops took about fifty launches per
//! layer and training step, which at the default model's size cost more than the experts. Here
//! each is one node whose forward is already computed (the route kernel's weights, the loss
//! kernel) and whose backward is one call of the inner backend
//! (`MoeBackend::moe_routing_weights_grad`, `MoeBackend::moe_router_loss_grad`: kernels on
//! CubeCL).

use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::tensor::{Int, Tensor};

use super::expert_backward::float;
use super::{LossWeights, MoeBackend};

/// What the routing weights' backward needs, as tensors of the inner backend.
#[derive(Clone, Debug)]
struct WeightsSaved<B: MoeBackend> {
    /// `[T, K]`
    weights: Tensor<B, 2>,
    /// `[T, K]`, -1 unused
    expert_ids: Tensor<B, 2, Int>,
    num_experts: usize,
}

/// The backward step of the routing weights: parent `logits`.
#[derive(Debug)]
struct RoutingWeightsBackward;

impl<B: MoeBackend> Backward<B, 1> for RoutingWeightsBackward {
    type State = WeightsSaved<B>;

    fn backward(
        self,
        ops: Ops<Self::State, 1>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let WeightsSaved {
            weights,
            expert_ids,
            num_experts,
        } = ops.state;
        let d_weights = float::<B, 2>(grads.consume::<B>(&ops.node));
        if let [Some(node)] = ops.parents {
            let d_logits = B::moe_routing_weights_grad(weights, expert_ids, d_weights, num_experts);
            grads.register::<B>(node.id, d_logits.into_primitive().tensor());
        }
    }
}

/// The routing weights `weights` (already computed by the inner backend from `logits` and
/// `expert_ids`: the softmax over each token's chosen logits) as a tensor that differentiates
/// into `logits`.
///
/// # Shapes
/// - `logits`: `[T, E]`; `expert_ids`, `weights`: `[T, K]`
pub(super) fn routing_weights<B: MoeBackend, C: CheckpointStrategy>(
    logits: Tensor<Autodiff<B, C>, 2>,
    expert_ids: Tensor<B, 2, Int>,
    weights: Tensor<B, 2>,
) -> Tensor<Autodiff<B, C>, 2> {
    let [_, num_experts] = logits.dims();
    let output = weights.clone().into_primitive().tensor();
    let nodes = [logits.into_primitive().tensor().node];
    let output = match RoutingWeightsBackward
        .prepare::<C>(nodes)
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(
            WeightsSaved {
                weights,
                expert_ids,
                num_experts,
            },
            output,
        ),
        OpsKind::UnTracked(prep) => prep.finish(output),
    };
    float::<Autodiff<B, C>, 2>(output)
}

/// What the router loss's backward needs, as tensors of the inner backend.
#[derive(Clone, Debug)]
struct LossSaved<B: MoeBackend> {
    /// `[T, E]`
    logits: Tensor<B, 2>,
    /// `[E]`
    expert_counts: Tensor<B, 1, Int>,
    weights: LossWeights,
}

/// The backward step of the router loss: parent `logits`.
#[derive(Debug)]
struct RouterLossBackward;

impl<B: MoeBackend> Backward<B, 1> for RouterLossBackward {
    type State = LossSaved<B>;

    fn backward(
        self,
        ops: Ops<Self::State, 1>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let LossSaved {
            logits,
            expert_counts,
            weights,
        } = ops.state;
        let d_loss = float::<B, 1>(grads.consume::<B>(&ops.node));
        if let [Some(node)] = ops.parents {
            let d_logits = B::moe_router_loss_grad(logits, expert_counts, weights, d_loss);
            grads.register::<B>(node.id, d_logits.into_primitive().tensor());
        }
    }
}

/// The inner backend's router loss (`MoeBackend::moe_router_loss`) with its hand-written
/// backward.
///
/// # Shapes
/// - `logits`: `[T, E]`, `expert_counts`: `[E]` -> `[1]`
pub(super) fn router_loss<B: MoeBackend, C: CheckpointStrategy>(
    logits: Tensor<Autodiff<B, C>, 2>,
    expert_counts: Tensor<B, 1, Int>,
    weights: LossWeights,
) -> Tensor<Autodiff<B, C>, 1> {
    let logits_inner = logits.clone().inner();
    let output = B::moe_router_loss(logits_inner.clone(), expert_counts.clone(), weights)
        .into_primitive()
        .tensor();
    let nodes = [logits.into_primitive().tensor().node];
    let output = match RouterLossBackward
        .prepare::<C>(nodes)
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(
            LossSaved {
                logits: logits_inner,
                expert_counts,
                weights,
            },
            output,
        ),
        OpsKind::UnTracked(prep) => prep.finish(output),
    };
    float::<Autodiff<B, C>, 1>(output)
}
