//! The combine under `Autodiff` with a hand-written backward made of gathers.
//!
//! Forward: the inner backend's `moe_combine` (the kernel on CubeCL). Differentiating the
//! tensor-op combine makes Burn scatter the rows' gradient with `select_assign`, which took
//! 3.5 ms of a 32 ms Mixtral training step on the H100 (T = 4096, d = 4096); every row of the
//! dispatch belongs to exactly one (token, slot) pair, so the same gradient is a gather:
//! - `d_rows[r] = weight[pair(r)] * d_out[token(pair(r))]` for the S routed rows, 0 past S;
//! - `d_weights[t, k] = <d_out[t], rows[row_of_pair[t, k]]>`, 0 for unused slots.
//!
//! Both run as tensor ops on the inner backend (gathers, a product and a row sum), so every
//! backend takes this node; nothing is read back to the host.

use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::tensor::{Int, Tensor};

use super::expert_backward::{float, inner};
use super::{Dispatch, ExpertRows, MoeBackend};

/// What the backward needs from the forward, as tensors of the inner backend.
#[derive(Clone, Debug)]
struct Saved<B: MoeBackend> {
    /// The rows summed over their split blocks (split-K blocks are f32). `[R, d]`
    rows: Tensor<B, 2>,
    /// Split blocks of the rows' parent (each receives the same gradient).
    splits: usize,
    /// `[T, K]`
    weights: Tensor<B, 2>,
    dispatch: Dispatch<B>,
}

/// The backward step of the combine: parents `rows.blocks`, `weights`.
#[derive(Debug)]
struct CombineBackward;

impl<B: MoeBackend> Backward<B, 2> for CombineBackward {
    type State = Saved<B>;

    fn backward(
        self,
        ops: Ops<Self::State, 2>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let Saved {
            rows,
            splits,
            weights,
            dispatch,
        } = ops.state;
        let d_out = float::<B, 2>(grads.consume::<B>(&ops.node)); // [T, d]
        let [rows_node, weights_node] = ops.parents;
        let [num_tokens, slots] = weights.dims();
        let [num_rows, d_model] = rows.dims();

        if let Some(node) = rows_node {
            let pair = dispatch.routed_pairs.clone().slice([0..num_rows]); // [R], -1 past S
            let routed = pair.clone().greater_equal_elem(0);
            let pair = pair.clamp_min(0);
            let token: Tensor<B, 1, Int> = pair.clone().div_scalar(slots as i64);
            let weight = weights
                .clone()
                .reshape([num_tokens * slots])
                .select(0, pair)
                .mask_fill(routed.bool_not(), 0.0); // [R]
            let d_rows = d_out.clone().select(0, token) * weight.unsqueeze_dim(1); // [R, d]
            let d_blocks = d_rows
                .cast(rows.dtype())
                .unsqueeze_dim::<3>(0)
                .expand([splits, num_rows, d_model]);
            grads.register::<B>(node.id, d_blocks.into_primitive().tensor());
        }
        if let Some(node) = weights_node {
            let row_of_pair = dispatch.row_of_pair.reshape([num_tokens * slots]); // [T*K]
            let used = row_of_pair.clone().greater_equal_elem(0);
            let pair_rows = rows
                .select(0, row_of_pair.clamp_min(0))
                .cast(d_out.dtype())
                .reshape([num_tokens, slots, d_model]); // [T, K, d]
            let d_weights = (pair_rows * d_out.unsqueeze_dim::<3>(1)) // broadcast over K
                .sum_dim(2)
                .reshape([num_tokens * slots])
                .mask_fill(used.bool_not(), 0.0)
                .reshape([num_tokens, slots]);
            grads.register::<B>(node.id, d_weights.into_primitive().tensor());
        }
    }
}

/// Weighted sum of each token's expert rows with the gather backward (module docs).
///
/// # Shapes
/// - `rows.blocks`: `[splits, R, d]` in dispatch order, `weights`: `[T, K]`; returns `[T, d]`
pub(super) fn combine<B: MoeBackend, C: CheckpointStrategy>(
    rows: ExpertRows<Autodiff<B, C>>,
    weights: Tensor<Autodiff<B, C>, 2>,
    dispatch: &Dispatch<Autodiff<B, C>>,
) -> Tensor<Autodiff<B, C>, 2> {
    let inner_dispatch = inner(dispatch);
    let blocks = rows.blocks.clone().inner();
    let [splits, num_rows, d_model] = blocks.dims();
    let weights_inner = weights.clone().inner();
    let output = B::moe_combine(
        ExpertRows {
            blocks: blocks.clone(),
        },
        weights_inner.clone(),
        &inner_dispatch,
    )
    .into_primitive()
    .tensor();

    let nodes = [
        rows.blocks.into_primitive().tensor().node,
        weights.into_primitive().tensor().node,
    ];
    let output = match CombineBackward
        .prepare::<C>(nodes)
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(
            Saved {
                rows: if splits == 1 {
                    blocks.reshape([num_rows, d_model])
                } else {
                    blocks.sum_dim(0).reshape([num_rows, d_model])
                },
                splits,
                weights: weights_inner,
                dispatch: inner_dispatch,
            },
            output,
        ),
        OpsKind::UnTracked(prep) => prep.finish(output),
    };
    float::<Autodiff<B, C>, 2>(output)
}
