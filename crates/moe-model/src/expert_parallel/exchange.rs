//! The exchange between the ranks of an expert-parallel group, apart from the layer: the layer
//! only plans and packs, an [`Exchange`] moves the blocks (in process for tests and the CPU;
//! NCCL's all-to-all on GPUs).

use burn::tensor::{Tensor, backend::Backend};

/// One rank's end of an all-to-all among N ranks. Every rank of the group makes the same calls
/// in the same order (a collective): a call returns once this rank has its blocks.
pub trait Exchange<B: Backend> {
    /// This rank's number, `0..N`.
    fn rank(&self) -> usize;

    /// Number of ranks N.
    fn num_ranks(&self) -> usize;

    /// Sends `counts[r]` to rank `r` and returns what each rank sent to this one, by source
    /// rank: the per-expert row counts that size the rows' exchange (NCCL needs both sides'
    /// sizes before it moves rows).
    fn exchange_counts(&self, counts: Vec<Vec<usize>>) -> Vec<Vec<usize>>;

    /// Sends the `send_rows[r]` rows of block `r` of `rows` (blocks in rank order) to rank `r`
    /// and returns the blocks received, `received_rows[r]` rows from rank `r`, concatenated in
    /// rank order on this rank's device. Rows keep their order within a block.
    ///
    /// # Shapes
    /// - `rows`: `[sum of send_rows, d]` -> `[sum of received_rows, d]`
    fn exchange_rows(
        &self,
        rows: Tensor<B, 2>,
        send_rows: &[usize],
        received_rows: &[usize],
    ) -> Tensor<B, 2>;
}
