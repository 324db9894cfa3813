//! Dispatch and combine with Burn tensor ops: the portable path, and the reference the kernel
//! path is compared with.

use burn::tensor::{IndexingUpdateOp, Int, Tensor, TensorData, backend::Backend};
use moe_kernels::dispatch::reference::plan;

/// Where each routed (token, slot) pair goes (the tensor form of
/// `moe_kernels::dispatch::reference::DispatchPlan`): experts own contiguous row ranges, rows of
/// one expert follow token order. Sized for every slot used; -1 marks the unused parts.
#[derive(Clone, Debug)]
pub struct Dispatch<B: Backend> {
    /// Expert `e` owns rows `expert_offsets[e]..expert_offsets[e + 1]`; the last is S. `[E + 1]`
    pub expert_offsets: Tensor<B, 1, Int>,
    /// Flat pair index `token * K + slot` of each row, -1 past S. `[T * K]`
    pub routed_pairs: Tensor<B, 1, Int>,
    /// Row of each (token, slot) pair, -1 for unused slots. `[T, K]`
    pub row_of_pair: Tensor<B, 2, Int>,
    /// `(expert, first row)` of each tile of the grouped GEMM, -1 past the used tiles.
    /// `[max_tiles, 2]`
    pub tiles: Tensor<B, 2, Int>,
    /// Tiles in use. `[1]`
    pub num_tiles: Tensor<B, 1, Int>,
}

/// Plans the dispatch of `expert_ids` on the host (a device round trip) and uploads the plan.
///
/// # Shapes
/// - `expert_ids`: `[T, K]`, -1 for unused slots
pub fn dispatch_with_tensor_ops<B: Backend>(
    expert_ids: Tensor<B, 2, Int>,
    num_experts: usize,
) -> Dispatch<B> {
    let [num_tokens, slots] = expert_ids.dims();
    let device = expert_ids.device();
    let ids = expert_ids.into_data().convert::<i32>();
    let plan = plan(ids.as_slice::<i32>().expect("i32 data"), num_experts);
    let int = |values: Vec<i32>| {
        let len = values.len();
        Tensor::<B, 1, Int>::from_data(TensorData::new(values, [len]), &device)
    };
    let num_tile_slots = plan.tiles.len();
    Dispatch {
        expert_offsets: int(plan.expert_offsets),
        routed_pairs: int(plan.routed_pairs),
        row_of_pair: int(plan.row_of_pair).reshape([num_tokens, slots]),
        tiles: int(plan.tiles.concat()).reshape([num_tile_slots, 2]),
        num_tiles: int(vec![plan.num_tiles]),
    }
}

/// `out[t] = sum_s weights[t, s] * expert_rows[row of (t, s)]` with gather and scatter-add;
/// differentiable in `expert_rows` and `weights`.
///
/// # Shapes
/// - `expert_rows`: `[S, d]` in dispatch order, `weights`: `[T, K]`
/// - returns `[T, d]`
pub fn combine_with_tensor_ops<B: Backend>(
    expert_rows: Tensor<B, 2>,
    weights: Tensor<B, 2>,
    dispatch: &Dispatch<B>,
) -> Tensor<B, 2> {
    let [num_rows, d_model] = expert_rows.dims();
    let [num_tokens, slots] = weights.dims();
    let pairs = dispatch.routed_pairs.clone().slice([0..num_rows]); // [S]
    let tokens = pairs.clone().div_scalar(slots as i64); // [S]
    let row_weights = weights.reshape([num_tokens * slots]).select(0, pairs); // [S]
    let weighted = expert_rows * row_weights.unsqueeze_dim(1); // [S, d]
    Tensor::zeros([num_tokens, d_model], &weighted.device()).select_assign(
        0,
        tokens,
        weighted,
        IndexingUpdateOp::Add,
    )
}
