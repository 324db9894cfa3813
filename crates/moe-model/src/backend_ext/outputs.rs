//! What the MoE backend operations return: the routing decision, the dispatch plan and the
//! experts' output rows, as tensors of the backend.

use burn::tensor::activation::softmax;
use burn::tensor::{DType, Int, Tensor, backend::Backend};

use crate::precision::in_dtype;

/// The routing decision for a batch of tokens (the tensor form of
/// `moe_kernels::route::reference::RoutedTokens`).
#[derive(Clone, Debug)]
pub struct Routing<B: Backend> {
    /// Router logits. `[T, E]`
    pub logits: Tensor<B, 2>,
    /// Chosen experts, most probable first; -1 where the policy left a slot unused. `[T, K]`
    pub expert_ids: Tensor<B, 2, Int>,
    /// Renormalised weights of the chosen experts, 0 in unused slots. `[T, K]`
    pub weights: Tensor<B, 2>,
    /// Number of experts each token uses. `[T]`
    pub token_k: Tensor<B, 1, Int>,
}

impl<B: Backend> Routing<B> {
    /// Router probabilities, the softmax of the logits, computed on demand (inference does not
    /// need them): for statistics and predictors, not a gradient path (the router learns through
    /// `weights` and `MoeBackend::moe_router_loss`). `[T, E]`
    pub fn probs(&self) -> Tensor<B, 2> {
        softmax(self.logits.clone().detach(), 1)
    }

    /// The same decision with its weights in `dtype`: the router decides in f32, the combine
    /// weighs the experts' rows in the layer's type.
    pub fn with_weights_in(self, dtype: DType) -> Self {
        Self {
            weights: in_dtype(self.weights, dtype),
            ..self
        }
    }
}

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
    /// Most rows per tile.
    pub tile_rows: usize,
}

impl<B: Backend> Dispatch<B> {
    /// Rows routed to each expert, computed on the device. `[E]`
    pub fn expert_counts(&self) -> Tensor<B, 1, Int> {
        let [offsets] = self.expert_offsets.dims();
        let ends = self.expert_offsets.clone().slice([1..offsets]);
        let starts = self.expert_offsets.clone().slice([0..offsets - 1]);
        ends - starts
    }
}

/// The experts' output rows in dispatch order, as `splits` blocks whose sum is the rows:
/// `[splits, rows, d]`. The tensor ops return one block of exactly S rows; the kernels return
/// blocks of T * K rows (rows past S unwritten) and, with split-K, f32 partial sums.
#[derive(Clone, Debug)]
pub struct ExpertRows<B: Backend> {
    /// `[splits, rows, d]`
    pub blocks: Tensor<B, 3>,
}
