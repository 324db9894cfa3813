//! The experts under `Autodiff` with a hand-written backward (Burn's custom-kernel pattern).
//!
//! Forward, on the inner backend: `pre = x[token of row] @ w_in[e]` (kept), `hidden = act(pre)`
//! (kept; [`MoeBackend::moe_expert_activate`]), `rows = hidden @ w_out[e]`. Backward from `d_rows` (`[P, d]`, dispatch order):
//! - `d_w_out[e] = hidden_e^T d_rows_e`, `d_w_in[e] = x_e^T d_pre_e`: per-expert reductions over
//!   the expert's rows ([`MoeBackend::moe_expert_weight_grad`]), deterministic;
//! - `d_pre = act'(pre, d_rows @ w_out[e]^T)` ([`MoeBackend::moe_expert_pre_grad`]: the kernels
//!   fuse SwiGLU's backward into the GEMM's epilogue), `d_token_rows = d_pre @ w_in[e]^T`
//!   (grouped GEMMs through the transposed weights);
//! - `d_x[t] = sum over t's slots of d_token_rows[row]`: the gather's backward is a combine with
//!   weight 1 per used slot, so it is deterministic too.
//!
//! Every step is a backend operation on the device: on a CubeCL backend no step reads anything
//! back to the host.

use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::tensor::{Tensor, TensorPrimitive};
use moe_kernels::Activation;

use super::{Dispatch, ExpertRows, MoeBackend};

/// What the backward needs from the forward, as tensors of the inner backend.
#[derive(Clone, Debug)]
struct Saved<B: MoeBackend> {
    /// `[T, d]`
    x: Tensor<B, 2>,
    /// `[E, d, input_columns(F)]`
    w_in: Tensor<B, 3>,
    /// `[E, F, d]`
    w_out: Tensor<B, 3>,
    /// Input projection before the activation. `[P, input_columns(F)]`
    pre: Tensor<B, 2>,
    /// `[P, F]`
    hidden: Tensor<B, 2>,
    dispatch: Dispatch<B>,
    activation: Activation,
}

/// The backward step of the experts: parents `x`, `w_in`, `w_out`.
#[derive(Debug)]
struct ExpertsBackward;

impl<B: MoeBackend> Backward<B, 3> for ExpertsBackward {
    type State = Saved<B>;

    fn backward(
        self,
        ops: Ops<Self::State, 3>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let saved = ops.state;
        let dispatch = &saved.dispatch;
        let d_rows = float::<B, 2>(grads.consume::<B>(&ops.node)); // [P, d]
        let [x_node, w_in_node, w_out_node] = ops.parents;

        if let Some(node) = w_out_node {
            let grad = B::moe_expert_weight_grad(saved.hidden, false, d_rows.clone(), dispatch);
            grads.register::<B>(node.id, grad.into_primitive().tensor());
        }
        if x_node.is_none() && w_in_node.is_none() {
            return;
        }
        let d_pre =
            B::moe_expert_pre_grad(d_rows, dispatch, saved.w_out, saved.pre, saved.activation); // [P, cF]
        if let Some(node) = w_in_node {
            let grad = B::moe_expert_weight_grad(saved.x, true, d_pre.clone(), dispatch);
            grads.register::<B>(node.id, grad.into_primitive().tensor());
        }
        if let Some(node) = x_node {
            let dtype = d_pre.dtype();
            let d_token_rows = B::moe_expert_matmul(d_pre, false, dispatch, saved.w_in, true); // [P, d]
            let used = dispatch
                .row_of_pair
                .clone()
                .greater_equal_elem(0)
                .float()
                .cast(dtype); // [T, K]
            let rows = ExpertRows {
                blocks: d_token_rows.unsqueeze_dim(0),
            };
            let grad = B::moe_combine(rows, used, dispatch); // [T, d]
            grads.register::<B>(node.id, grad.into_primitive().tensor());
        }
    }
}

/// The experts' rows (`[1, P, d]`, rows past S unspecified) with the hand-written backward.
///
/// # Shapes
/// - `x`: `[T, d]`, `w_in`: `[E, d, input_columns(F)]`, `w_out`: `[E, F, d]`
pub(super) fn experts<B: MoeBackend, C: CheckpointStrategy>(
    x: Tensor<Autodiff<B, C>, 2>,
    dispatch: &Dispatch<Autodiff<B, C>>,
    w_in: Tensor<Autodiff<B, C>, 3>,
    w_out: Tensor<Autodiff<B, C>, 3>,
    activation: Activation,
) -> ExpertRows<Autodiff<B, C>> {
    let inner_dispatch = inner(dispatch);
    let (x_inner, w_in_inner, w_out_inner) = (
        x.clone().inner(),
        w_in.clone().inner(),
        w_out.clone().inner(),
    );
    let pre = B::moe_expert_matmul(
        x_inner.clone(),
        true,
        &inner_dispatch,
        w_in_inner.clone(),
        false,
    ); // [P, cF]
    let hidden = B::moe_expert_activate(pre.clone(), &inner_dispatch, activation); // [P, F]
    let rows = B::moe_expert_matmul(
        hidden.clone(),
        false,
        &inner_dispatch,
        w_out_inner.clone(),
        false,
    ); // [P, d]

    let nodes = [
        x.into_primitive().tensor().node,
        w_in.into_primitive().tensor().node,
        w_out.into_primitive().tensor().node,
    ];
    let rows = rows.into_primitive().tensor();
    let output = match ExpertsBackward
        .prepare::<C>(nodes)
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(
            Saved {
                x: x_inner,
                w_in: w_in_inner,
                w_out: w_out_inner,
                pre,
                hidden,
                dispatch: inner_dispatch,
                activation,
            },
            rows,
        ),
        OpsKind::UnTracked(prep) => prep.finish(rows),
    };
    ExpertRows {
        blocks: float::<Autodiff<B, C>, 2>(output).unsqueeze_dim(0),
    }
}

/// The dispatch's tensors on the inner backend (they carry no gradient).
pub(super) fn inner<B: MoeBackend, C: CheckpointStrategy>(
    dispatch: &Dispatch<Autodiff<B, C>>,
) -> Dispatch<B> {
    Dispatch {
        expert_offsets: dispatch.expert_offsets.clone().inner(),
        routed_pairs: dispatch.routed_pairs.clone().inner(),
        row_of_pair: dispatch.row_of_pair.clone().inner(),
        tiles: dispatch.tiles.clone().inner(),
        num_tiles: dispatch.num_tiles.clone().inner(),
        tile_rows: dispatch.tile_rows,
    }
}

/// A float tensor over a backend primitive.
pub(super) fn float<B: burn::tensor::backend::Backend, const D: usize>(
    primitive: B::FloatTensorPrimitive,
) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(primitive))
}
