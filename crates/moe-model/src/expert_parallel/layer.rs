//! The MoE layer with its experts sharded over the N ranks of an [`Exchange`]: every rank holds
//! the router (and any shared experts) and E / N experts, routes its own tokens, sends each
//! routed row to the rank holding its expert, runs its experts on the rows it receives, sends
//! the results back and combines locally.
//!
//! Why the output equals the single-device layer on the ranks' tokens concatenated in rank
//! order (per-token policies, whose decision does not depend on the batch):
//! - each rank's dispatch is the single-device one restricted to its tokens, and contiguous
//!   shards make it grouped by destination, so it is sent as it is (`plan.rs`);
//! - a rank receives, for each of its experts, the rows of rank 0's tokens, then rank 1's, ...:
//!   the expert's rows of the single-device dispatch in the same order, so the grouped GEMM
//!   computes the same products;
//! - the results travel back in the order they were sent, so the source combines its rows
//!   through its own `row_of_pair`, summing each token's slots in the same order.
//!
//! Expert choice and capacity dropping decide over the batch: here each rank decides over its
//! own tokens (per-rank capacity), which differs from deciding over all of them.

use burn::tensor::{DType, Int, Tensor, TensorData};
use moe_kernels::grouped_gemm::ExpertShape;

use super::exchange::Exchange;
use super::plan::{ExpertShards, block_rows, received_experts};
use crate::backend_ext::tensor_ops::{host_offsets, routed_inputs};
use crate::backend_ext::{Dispatch, ExpertRows, MoeBackend};
use crate::{InvalidValue, MoeLayer};

/// One rank's part of a [`MoeLayer`] under expert parallelism (see the module docs).
#[derive(Debug)]
pub struct ExpertParallelLayer<B: MoeBackend> {
    /// The layer's router, routing control and shared experts, with `experts` holding this
    /// rank's shard alone; run only through `MoeLayer::pass_with`, never its own forward.
    replica: MoeLayer<B>,
    shards: ExpertShards,
    rank: usize,
}

impl<B: MoeBackend> ExpertParallelLayer<B> {
    /// Rank `rank`'s part of `layer` when its experts are sharded over `num_ranks` ranks. Errors
    /// when the experts cannot be shared evenly (more ranks than experts, E not a multiple of
    /// N) or `rank` is not below `num_ranks`.
    pub fn new(layer: &MoeLayer<B>, num_ranks: usize, rank: usize) -> Result<Self, InvalidValue> {
        let shards = ExpertShards::new(layer.num_experts(), num_ranks)?;
        if rank >= num_ranks {
            return Err(InvalidValue::new(
                "rank",
                rank,
                format!("must be below the number of ranks ({num_ranks})"),
            ));
        }
        let mut replica = layer.clone();
        replica.experts = layer.experts.shard(shards.experts_of(rank));
        Ok(Self {
            replica,
            shards,
            rank,
        })
    }

    /// [`MoeLayer::infer`] on this rank's tokens, the experts run where they live. Every rank of
    /// `exchange` must call it at the same time (it exchanges twice); `exchange` must be this
    /// rank's end of a group of the layer's rank count.
    ///
    /// # Shapes
    /// - `x`: `[T, d]` (this rank's tokens, T >= 1) -> `[T, d]`
    pub fn infer(&self, x: Tensor<B, 2>, exchange: &impl Exchange<B>) -> Tensor<B, 2> {
        assert_eq!(
            (exchange.rank(), exchange.num_ranks()),
            (self.rank, self.shards.num_ranks()),
            "the exchange must be this rank's end of a group of the layer's ranks"
        );
        let rows_dtype = x.dtype();
        self.replica
            .pass_with(x, |x, dispatch| {
                self.remote_experts(x, dispatch, exchange, rows_dtype)
            })
            .output
    }

    /// The experts' step of the pass: this rank's routed rows to their experts' ranks, this
    /// rank's experts on what it receives, the results back in dispatch order, in `rows_dtype`.
    ///
    /// # Shapes
    /// - `x`: `[T, d]` in the compute type -> rows `[1, S, d]`
    fn remote_experts(
        &self,
        x: Tensor<B, 2>,
        dispatch: &Dispatch<B>,
        exchange: &impl Exchange<B>,
        rows_dtype: DType,
    ) -> ExpertRows<B> {
        let offsets = host_offsets(dispatch);
        let num_rows = *offsets.last().expect("E + 1 offsets");
        let send_counts = self.shards.send_counts(&offsets); // [N][E / N]
        let send_rows = block_rows(&send_counts);
        let received_counts = exchange.exchange_counts(send_counts); // [N][E / N]
        let received_rows = block_rows(&received_counts);
        let rows = routed_inputs(x, true, dispatch, num_rows); // [S, d]
        let received = exchange.exchange_rows(rows, &send_rows, &received_rows); // [R, d]
        let results = self.local_experts(received, &received_counts, rows_dtype); // [R, d]
        let returned = exchange.exchange_rows(results, &received_rows, &send_rows); // [S, d]
        ExpertRows {
            blocks: returned.unsqueeze_dim(0), // [1, S, d]
        }
    }

    /// This rank's experts on the rows it received (each source's rows grouped by expert), as
    /// the layer runs them: the received rows are the tokens of a dispatch with one slot each,
    /// over the E / N local experts. Returns the results in the order received, in `dtype`.
    ///
    /// # Shapes
    /// - `received`: `[R, d]` -> `[R, d]`
    fn local_experts(
        &self,
        received: Tensor<B, 2>,
        received_counts: &[Vec<usize>],
        dtype: DType,
    ) -> Tensor<B, 2> {
        let local_ids = received_experts(received_counts); // [R]
        let [num_rows, d_model] = received.dims();
        if num_rows == 0 {
            return received.cast(dtype);
        }
        let device = received.device();
        let experts = &self.replica.experts;
        let activation = experts.activation();
        let shape = ExpertShape {
            num_tokens: num_rows,
            slots: 1,
            num_experts: self.shards.experts_per_rank(),
            d_model,
            width: experts.w_out.dims()[1],
        };
        let local_ids =
            Tensor::<B, 2, Int>::from_data(TensorData::new(local_ids, [num_rows, 1]), &device); // [R, 1]
        let tile_rows = B::moe_tile_rows(&shape, activation, received.dtype(), &device);
        let dispatch = B::moe_dispatch(local_ids, shape.num_experts, tile_rows);
        let (w_in, w_out) = experts.compute_weights();
        let rows = B::moe_experts(received, &dispatch, w_in, w_out, activation);
        // Weight 1 (exact): the rows back in the order received, split-K partial sums added.
        let ones = Tensor::ones([num_rows, 1], (&device, dtype));
        B::moe_combine(rows, ones, &dispatch) // [R, d]
    }
}
