//! Plain-Rust dispatch: the specification of the expert-contiguous order of routed pairs and of
//! the grouped GEMM's tile work list.

use crate::UNUSED_SLOT;

/// Where each routed (token, slot) pair goes. Experts own contiguous row ranges and, within an
/// expert, rows follow token order; the row count S is the number of used slots (no padding).
/// Buffers are sized for the worst case (every slot used) so a device needs no host round trip;
/// entries past the used part hold [`UNUSED_SLOT`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DispatchPlan {
    /// Expert `e` owns rows `expert_offsets[e]..expert_offsets[e + 1]`; the last entry is S.
    /// `[E + 1]`
    pub expert_offsets: Vec<i32>,
    /// Flat pair index `token * slots + slot` of each row. `[T * slots]`, used: `[S]`
    pub routed_pairs: Vec<i32>,
    /// Row of each (token, slot) pair. `[T * slots]`
    pub row_of_pair: Vec<i32>,
    /// `(expert, first row)` of each tile of at most `tile_rows` rows, in expert order.
    /// `[max_tiles(T * slots, E, tile_rows), 2]`, used: `[num_tiles, 2]`
    pub tiles: Vec<[i32; 2]>,
    /// Tiles in use.
    pub num_tiles: i32,
    /// Most rows per tile.
    pub tile_rows: usize,
}

impl DispatchPlan {
    /// Rows routed to each expert. `[E]`
    pub fn expert_counts(&self) -> Vec<usize> {
        self.expert_offsets
            .windows(2)
            .map(|w| (w[1] - w[0]) as usize)
            .collect()
    }

    /// Number of routed rows S.
    pub fn num_rows(&self) -> usize {
        *self.expert_offsets.last().expect("E + 1 offsets") as usize
    }
}

/// Capacity of the tile list for `num_pairs` (token, slot) pairs over `num_experts` experts in
/// tiles of `tile_rows` rows: every expert's last tile may be partial, so at most
/// `ceil(pairs / tile_rows) + E` tiles.
pub fn max_tiles(num_pairs: usize, num_experts: usize, tile_rows: usize) -> usize {
    num_pairs.div_ceil(tile_rows) + num_experts
}

/// Plans the dispatch of `expert_ids` (`[T, slots]`, row-major, [`UNUSED_SLOT`] where unused)
/// with a tile list of `tile_rows` rows per tile.
pub fn plan(expert_ids: &[i32], num_experts: usize, tile_rows: usize) -> DispatchPlan {
    let num_pairs = expert_ids.len();
    let mut counts = vec![0i32; num_experts];
    for &id in expert_ids.iter().filter(|&&id| id != UNUSED_SLOT) {
        counts[id as usize] += 1;
    }
    let mut expert_offsets = vec![0i32; num_experts + 1];
    for (e, count) in counts.iter().enumerate() {
        expert_offsets[e + 1] = expert_offsets[e] + count;
    }

    let mut next_row = expert_offsets.clone();
    let mut routed_pairs = vec![UNUSED_SLOT; num_pairs];
    let mut row_of_pair = vec![UNUSED_SLOT; num_pairs];
    for (pair, &id) in expert_ids
        .iter()
        .enumerate()
        .filter(|(_, id)| **id != UNUSED_SLOT)
    {
        let row = next_row[id as usize];
        routed_pairs[row as usize] = pair as i32;
        row_of_pair[pair] = row;
        next_row[id as usize] += 1;
    }

    let mut tiles = vec![[UNUSED_SLOT; 2]; max_tiles(num_pairs, num_experts, tile_rows)];
    let mut num_tiles = 0;
    for (expert, range) in expert_offsets.windows(2).enumerate() {
        for first_row in (range[0]..range[1]).step_by(tile_rows) {
            tiles[num_tiles] = [expert as i32, first_row];
            num_tiles += 1;
        }
    }
    DispatchPlan {
        expert_offsets,
        routed_pairs,
        row_of_pair,
        tiles,
        num_tiles: num_tiles as i32,
        tile_rows,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_pairs_by_expert_in_token_order() {
        // Token 0 -> experts 2, 0; token 1 -> expert 2 only; token 2 -> experts 0, 2.
        let plan = plan(&[2, 0, 2, UNUSED_SLOT, 0, 2], 3, 64);
        assert_eq!(plan.expert_offsets, vec![0, 2, 2, 5]);
        assert_eq!(plan.routed_pairs, vec![1, 4, 0, 2, 5, UNUSED_SLOT]);
        assert_eq!(plan.row_of_pair, vec![2, 0, 3, UNUSED_SLOT, 1, 4]);
        assert_eq!(plan.expert_counts(), vec![2, 0, 3]);
        assert_eq!(plan.num_tiles, 2);
        assert_eq!(&plan.tiles[..3], &[[0, 0], [2, 2], [UNUSED_SLOT; 2]]);
    }

    #[test]
    fn a_large_expert_spans_several_tiles() {
        let plan = plan(&[1; 33], 2, 16);
        assert_eq!(plan.num_tiles, 3);
        assert_eq!(&plan.tiles[..3], &[[1, 0], [1, 16], [1, 32]]);
    }
}
