//! The MoE layer on a cache's slots: expert ids become slot indices before dispatch, so the
//! grouped GEMM reads `w_in [slots, d, c]` and `w_out [slots, F, d]`, and the output is
//! bit-identical to the layer with all experts resident.
//!
//! Why the output does not change:
//! - every routed row is computed from the same token row and the same expert weights, by a
//!   kernel configured for the full layer (`num_experts = E`): the size rule picks tiles and
//!   split-K from the number of experts, so [`OffloadBackend::offload_experts`] keeps the
//!   configuration of the resident layer instead of one for the slot count;
//! - an expert's rows keep their token order (dispatch is stable), so tiles hold the same rows;
//! - combine adds each token's rows in slot order `k = 0..K` from `row_of_pair`, whichever
//!   position the rows have; when a batch needs more experts than the cache has slots, the
//!   experts run in groups and their rows are concatenated, with `row_of_pair` pointing into the
//!   concatenation, so combine still runs once.

use burn::tensor::{Int, Tensor, TensorData};
use moe_kernels::Activation;
use moe_kernels::grouped_gemm::ExpertShape;

use crate::backend_ext::{Dispatch, ExpertRows, MoeBackend};

/// A backend that runs the experts on slot tensors with the tile configuration of the full
/// layer. The default (tensor ops: one matmul pair per expert) has no configuration to keep.
pub trait OffloadBackend: MoeBackend {
    /// [`MoeBackend::moe_experts`] on `w_in [slots, d, c]` and `w_out [slots, F, d]`, with
    /// kernels configured for `full` (the layer with every expert), not for the slot count.
    ///
    /// # Shapes
    /// - `x`: `[T, d]`; `dispatch` over `slots` experts
    fn offload_experts(
        x: Tensor<Self, 2>,
        dispatch: &Dispatch<Self>,
        w_in: Tensor<Self, 3>,
        w_out: Tensor<Self, 3>,
        activation: Activation,
        full: &ExpertShape,
    ) -> ExpertRows<Self> {
        let _ = full;
        Self::moe_experts(x, dispatch, w_in, w_out, activation)
    }
}

/// NdArray runs the experts with tensor ops, whose results do not depend on the slot count.
#[cfg(feature = "ndarray")]
impl OffloadBackend for burn::backend::NdArray {}

/// One group of experts on the slots: their rows and the dispatch that placed them.
pub struct GroupRows<B: MoeBackend> {
    /// Rows of the group's pairs, `[splits, R, d]`; the first `pairs` rows hold them.
    pub rows: ExpertRows<B>,
    /// The group's dispatch over slot indices (`row_of_pair` -1 outside the group).
    pub dispatch: Dispatch<B>,
    /// Routed pairs of the group (S of its dispatch).
    pub pairs: usize,
}

/// Runs the experts of the pairs whose slot in `slot_ids` (`[T * K]`, -1: not this group) is
/// set, on the slot tensors.
///
/// # Shapes
/// - `x`: `[T, d]`, `w_in`: `[slots, d, c]`, `w_out`: `[slots, F, d]`
pub fn run_group<B: OffloadBackend>(
    x: Tensor<B, 2>,
    slot_ids: Vec<i32>,
    w_in: Tensor<B, 3>,
    w_out: Tensor<B, 3>,
    activation: Activation,
    full: &ExpertShape,
    tile_rows: usize,
) -> GroupRows<B> {
    let num_slots = w_in.dims()[0];
    let pairs = slot_ids.iter().filter(|&&s| s >= 0).count();
    let slot_ids = Tensor::<B, 2, Int>::from_data(
        TensorData::new(slot_ids, [full.num_tokens, full.slots]),
        &x.device(),
    ); // [T, K]
    let dispatch = B::moe_dispatch(slot_ids, num_slots, tile_rows);
    let rows = B::offload_experts(x, &dispatch, w_in, w_out, activation, full);
    GroupRows {
        rows,
        dispatch,
        pairs,
    }
}

/// Combines the rows of one or more groups that together cover every routed pair once. Several
/// groups: each group's `pairs` rows are concatenated (S rows in all, within the T * K rows
/// combine accepts) and `row_of_pair` points into the concatenation.
///
/// # Shapes
/// - `weights`: `[T, K]` -> `[T, d]`
pub fn combine_groups<B: MoeBackend>(
    groups: Vec<GroupRows<B>>,
    weights: Tensor<B, 2>,
) -> Tensor<B, 2> {
    let mut groups = groups.into_iter();
    let first = groups.next().expect("at least one group");
    let rest: Vec<GroupRows<B>> = groups.collect();
    if rest.is_empty() {
        return B::moe_combine(first.rows, weights, &first.dispatch);
    }
    let routed = |group: &GroupRows<B>| {
        group
            .rows
            .blocks
            .clone()
            .slice([0..group.rows.blocks.dims()[0], 0..group.pairs])
    };
    let mut offset = first.pairs as i64;
    let mut row_of_pair = first.dispatch.row_of_pair.clone(); // [T, K]
    let mut blocks = vec![routed(&first)]; // [splits, S_0, d]
    for group in rest {
        let rows = group.dispatch.row_of_pair.clone(); // [T, K]
        let used = rows.clone().greater_equal_elem(0);
        row_of_pair = row_of_pair.mask_where(used, rows.add_scalar(offset));
        offset += group.pairs as i64;
        blocks.push(routed(&group));
    }
    let merged = Dispatch {
        row_of_pair,
        ..first.dispatch
    };
    let rows = ExpertRows {
        blocks: Tensor::cat(blocks, 1), // [splits, sum of R, d]
    };
    B::moe_combine(rows, weights, &merged)
}
