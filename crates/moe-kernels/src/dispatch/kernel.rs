//! Padding-free dispatch, deterministic (no float or order-dependent atomics).
//!
//! Pairs are the flat `(token, slot)` indices `0..T*slots`. Up to [`SINGLE_CUBE_PAIRS`] pairs
//! (decode batches), one cube plans everything in one launch: `dispatch_in_one_cube`. Larger
//! inputs are cut into blocks of `BLOCK_PAIRS` and planned in three passes:
//! 1. `count_blocks`: per block, the rank of every pair among earlier pairs of the same expert
//!    (a loop over the block's ids in shared memory) and the block's count of every expert, stored
//!    expert-major: `block_counts[e * num_blocks + b]`.
//! 2. `scan_counts` (one cube): an exclusive scan of `block_counts` in that order gives every
//!    (expert, block) its first row, because rows are ordered by expert, then by pair. It also
//!    writes the expert offsets and the grouped GEMM's tile work list.
//! 3. `scatter_pairs`: row = first row of (expert, block) + rank; writes both directions of the
//!    permutation and marks the unused tail.

use cubecl::prelude::*;

/// Pairs per block of `count_blocks` and `scatter_pairs` (one unit per pair).
pub const BLOCK_PAIRS: usize = 256;
/// Units of the single-cube kernels `scan_counts` and `dispatch_in_one_cube`.
pub const SCAN_UNITS: usize = 1024;
/// Most pairs `dispatch_in_one_cube` plans (one unit per pair).
pub const SINGLE_CUBE_PAIRS: usize = SCAN_UNITS;
/// Consecutive elements each unit of `scan_counts` sums before the cube-wide scan. The scan's
/// time grows with its number of chunks of `SCAN_UNITS * SCAN_ITEMS_PER_UNIT` entries (on an
/// H100 with 4 items: about 3 us per chunk, from two cases of equal P with E x B 32768 and
/// 131072), so each unit takes many (its loads are unrolled).
pub const SCAN_ITEMS_PER_UNIT: usize = 16;

/// Pass 1: ranks within the block (into `pair_rank`) and per-expert counts of the block.
#[cube(launch_unchecked)]
pub fn count_blocks<I: Int>(
    expert_ids: &Array<I>,         // [P] expert of each pair, -1 if unused
    pair_rank: &mut Array<I>, // [P] out: rank among the block's earlier pairs of the same expert
    block_counts: &mut Array<u32>, // [E, B] out: pairs of expert e in block b
    num_pairs: usize,
    num_blocks: usize,
    #[comptime] num_experts: usize,
) {
    let block = CUBE_POS;
    let local = UNIT_POS as usize;
    let pair = block * BLOCK_PAIRS + local;
    let mut ids = SharedMemory::<i32>::new(BLOCK_PAIRS);
    let mut counts = SharedMemory::<u32>::new(num_experts);
    let id = load_expert(expert_ids, pair, num_pairs, num_experts);
    let pairs_here = min(BLOCK_PAIRS, num_pairs - block * BLOCK_PAIRS);
    let rank = rank_in_block(
        &mut ids,
        &mut counts,
        id,
        pairs_here,
        BLOCK_PAIRS,
        num_experts,
    );
    if id >= 0 {
        pair_rank[pair] = I::cast_from(rank);
    }
    sync_cube();

    let mut e = local;
    while e < num_experts {
        block_counts[e * num_blocks + block] = counts[e];
        e += BLOCK_PAIRS;
    }
}

/// The expert of `pair`, or -1 for an unused slot, a pair past the end or an out-of-range id
/// (treated as unused rather than read out of bounds).
#[cube]
fn load_expert<I: Int>(
    expert_ids: &Array<I>,
    pair: usize,
    num_pairs: usize,
    #[comptime] num_experts: usize,
) -> i32 {
    let mut id = i32::new(-1);
    if pair < num_pairs {
        id = i32::cast_from(expert_ids[pair]);
        if id >= comptime!(num_experts as i32) {
            id = i32::new(-1);
        }
    }
    id
}

/// For the cube's block of `pairs_here` pairs (one per unit of the `units`, unit `UNIT_POS`
/// holding expert `id`): fills `counts` with the block's pairs per expert and returns the unit's
/// rank among the block's earlier pairs of the same expert (0 when unused).
#[cube]
fn rank_in_block(
    ids: &mut SharedMemory<i32>,
    counts: &mut SharedMemory<u32>,
    id: i32,
    pairs_here: usize,
    #[comptime] units: usize,
    #[comptime] num_experts: usize,
) -> u32 {
    let local = UNIT_POS as usize;
    ids[local] = id;
    let mut e = local;
    while e < num_experts {
        counts[e] = 0u32;
        e += units;
    }
    sync_cube();

    let mut before: u32 = 0;
    if id >= 0 {
        let mut total: u32 = 0;
        for j in 0..pairs_here {
            let same = select(ids[j] == id, 1u32, 0u32);
            total += same;
            before += select(j < local, same, 0u32);
        }
        if before + 1 == total {
            counts[usize::cast_from(id)] = total; // the block's last pair of this expert reports it
        }
    }
    before
}

/// Inclusive scan of `values[0..units]` in shared memory (Hillis-Steele), by the cube's `units`.
#[cube]
fn scan_in_cube(values: &mut SharedMemory<u32>, #[comptime] units: usize) {
    let local = UNIT_POS as usize;
    let mut step: usize = 1;
    while step < units {
        let mut addend: u32 = 0;
        if local >= step {
            addend = values[local - step];
        }
        sync_cube();
        values[local] += addend;
        sync_cube();
        step *= 2;
    }
}

/// Pass 2 (one cube): exclusive scan of `block_counts` in place, expert offsets, tile list.
#[cube(launch_unchecked)]
pub fn scan_counts<I: Int>(
    block_counts: &mut Array<u32>, // [E, B] in: counts; out: first row of each (expert, block)
    expert_offsets: &mut Array<I>, // [E + 1]
    tiles: &mut Array<I>,          // [max_tiles, 2] (expert, first row); -1 past the used tiles
    num_tiles: &mut Array<I>,      // [1]
    num_blocks: usize,
    max_tiles: usize,
    #[comptime] num_experts: usize,
    #[comptime] tile_rows: usize,
) {
    let local = UNIT_POS as usize;
    let mut partial = SharedMemory::<u32>::new(SCAN_UNITS);
    let total_entries = num_experts * num_blocks;
    let chunk = SCAN_UNITS * SCAN_ITEMS_PER_UNIT;
    let mut carry: u32 = 0;
    let mut chunk_start: usize = 0;
    while chunk_start < total_entries {
        // Each unit sums its consecutive items, the cube scans the sums, units rewrite their items.
        let first = chunk_start + local * SCAN_ITEMS_PER_UNIT;
        let mut sum: u32 = 0;
        #[unroll]
        for i in 0..SCAN_ITEMS_PER_UNIT {
            if first + i < total_entries {
                sum += block_counts[first + i];
            }
        }
        partial[local] = sum;
        sync_cube();
        scan_in_cube(&mut partial, SCAN_UNITS);
        let mut running = carry + partial[local] - sum;
        #[unroll]
        for i in 0..SCAN_ITEMS_PER_UNIT {
            if first + i < total_entries {
                let count = block_counts[first + i];
                block_counts[first + i] = running;
                running += count;
            }
        }
        carry += partial[SCAN_UNITS - 1];
        sync_cube();
        chunk_start += chunk;
    }

    // Expert offsets: expert e starts at the first row of its first block.
    let mut offsets = SharedMemory::<u32>::new(num_experts + 1);
    let mut e = local;
    while e < num_experts {
        offsets[e] = block_counts[e * num_blocks];
        e += SCAN_UNITS;
    }
    if local == 0 {
        offsets[num_experts] = carry;
    }
    sync_cube();
    write_offsets_and_tiles(
        &offsets,
        expert_offsets,
        tiles,
        num_tiles,
        max_tiles,
        num_experts,
        tile_rows,
        SCAN_UNITS,
    );
}

/// Writes `offsets` (`[E + 1]`, in shared memory) to `expert_offsets`, and the tile work list:
/// expert e owns ceil(count_e / tile_rows) tiles, in expert order. Run by a cube of `units`
/// units, at least one per expert.
#[cube]
#[allow(
    clippy::manual_div_ceil,
    reason = "kernel code: CubeCL expands operators, not div_ceil"
)]
fn write_offsets_and_tiles<I: Int>(
    offsets: &SharedMemory<u32>,
    expert_offsets: &mut Array<I>,
    tiles: &mut Array<I>,
    num_tiles: &mut Array<I>,
    max_tiles: usize,
    #[comptime] num_experts: usize,
    #[comptime] tile_rows: usize,
    #[comptime] units: usize,
) {
    let local = UNIT_POS as usize;
    let mut e = local;
    while e <= num_experts {
        expert_offsets[e] = I::cast_from(offsets[e]);
        e += units;
    }

    let mut tile_start = SharedMemory::<u32>::new(units);
    let mut tiles_of_expert: u32 = 0;
    if local < num_experts {
        let count = offsets[local + 1] - offsets[local];
        tiles_of_expert = (count + tile_rows as u32 - 1) / tile_rows as u32;
    }
    tile_start[local] = tiles_of_expert;
    sync_cube();
    scan_in_cube(&mut tile_start, units); // inclusive: tile_start[e] is the end of expert e's tiles
    let used_tiles = tile_start[num_experts - 1] as usize;
    let mut tile = local;
    while tile < max_tiles {
        let mut expert = i32::new(-1);
        let mut first_row = i32::new(-1);
        if tile < used_tiles {
            // The expert whose tile range holds `tile`: the first e with tile_start[e] > tile.
            let mut low: usize = 0;
            let mut high = usize::new(comptime!((num_experts - 1) as i64));
            while low < high {
                let mid = (low + high) / 2;
                if tile_start[mid] as usize > tile {
                    high = mid;
                } else {
                    low = mid + 1;
                }
            }
            let mut first_tile: usize = 0;
            if low > 0 {
                first_tile = tile_start[low - 1] as usize;
            }
            expert = i32::cast_from(low);
            first_row = i32::cast_from(offsets[low] as usize + (tile - first_tile) * tile_rows);
        }
        tiles[2 * tile] = I::cast_from(expert);
        tiles[2 * tile + 1] = I::cast_from(first_row);
        tile += units;
    }
    if local == 0 {
        num_tiles[0] = I::cast_from(used_tiles);
    }
}

/// The whole plan of up to `units` pairs over up to `units` experts in one cube of `units` units
/// (one launch for a decode batch): ranks and counts as in pass 1, a scan of the expert counts,
/// the offsets and tile list as in pass 2, the permutation as in pass 3.
#[cube(launch_unchecked)]
pub fn dispatch_in_one_cube<I: Int>(
    expert_ids: &Array<I>,         // [P]
    expert_offsets: &mut Array<I>, // [E + 1]
    routed_pairs: &mut Array<I>,   // [P] out: pair of each row, -1 past the routed rows
    row_of_pair: &mut Array<I>,    // [P] out: row of each pair, -1 if unused
    tiles: &mut Array<I>,          // [max_tiles, 2]
    num_tiles: &mut Array<I>,      // [1]
    num_pairs: usize,
    max_tiles: usize,
    #[comptime] num_experts: usize,
    #[comptime] tile_rows: usize,
    #[comptime] units: usize,
) {
    plan_in_one_cube::<I>(
        expert_ids,
        expert_offsets,
        routed_pairs,
        row_of_pair,
        tiles,
        num_tiles,
        num_pairs,
        max_tiles,
        num_experts,
        tile_rows,
        units,
    );
}

/// The body of [`dispatch_in_one_cube`], also run by the fused routing stage. Every unit of the
/// cube (`units` of them) must call it.
#[cube]
#[allow(clippy::too_many_arguments)]
pub fn plan_in_one_cube<I: Int>(
    expert_ids: &Array<I>,
    expert_offsets: &mut Array<I>,
    routed_pairs: &mut Array<I>,
    row_of_pair: &mut Array<I>,
    tiles: &mut Array<I>,
    num_tiles: &mut Array<I>,
    num_pairs: usize,
    max_tiles: usize,
    #[comptime] num_experts: usize,
    #[comptime] tile_rows: usize,
    #[comptime] units: usize,
) {
    let pair = UNIT_POS as usize;
    let mut ids = SharedMemory::<i32>::new(units);
    let mut counts = SharedMemory::<u32>::new(num_experts);
    let id = load_expert(expert_ids, pair, num_pairs, num_experts);
    let rank = rank_in_block(&mut ids, &mut counts, id, num_pairs, units, num_experts);
    sync_cube();

    // Exclusive scan of the expert counts (E <= units) into the offsets.
    let mut scanned = SharedMemory::<u32>::new(units);
    let mut count: u32 = 0;
    if pair < num_experts {
        count = counts[pair];
    }
    scanned[pair] = count;
    sync_cube();
    scan_in_cube(&mut scanned, units);
    let mut offsets = SharedMemory::<u32>::new(num_experts + 1);
    if pair < num_experts {
        offsets[pair] = scanned[pair] - count;
    }
    if pair == 0 {
        offsets[num_experts] = scanned[units - 1];
    }
    sync_cube();
    write_offsets_and_tiles(
        &offsets,
        expert_offsets,
        tiles,
        num_tiles,
        max_tiles,
        num_experts,
        tile_rows,
        units,
    );

    if pair < num_pairs {
        let mut row = i32::new(-1);
        if id >= 0 {
            row = i32::cast_from(offsets[usize::cast_from(id)] + rank);
        }
        write_permutation(
            row_of_pair,
            routed_pairs,
            pair,
            row,
            offsets[num_experts] as usize,
        );
    }
}

/// Pass 3: the row of every used pair, both directions of the permutation, the unused tail.
#[cube(launch_unchecked)]
pub fn scatter_pairs<I: Int>(
    expert_ids: &Array<I>,       // [P]
    block_offsets: &Array<u32>,  // [E, B] first row of each (expert, block)
    expert_offsets: &Array<I>,   // [E + 1]
    row_of_pair: &mut Array<I>,  // [P] in: rank within the block; out: row, -1 if unused
    routed_pairs: &mut Array<I>, // [P] out: pair of each row, -1 past the routed rows
    num_pairs: usize,
    num_blocks: usize,
    #[comptime] num_experts: usize,
) {
    let pair = ABSOLUTE_POS;
    if pair < num_pairs {
        let id = load_expert(expert_ids, pair, num_pairs, num_experts);
        let mut row = i32::new(-1);
        if id >= 0 {
            let block = pair / BLOCK_PAIRS;
            row = i32::cast_from(
                block_offsets[usize::cast_from(id) * num_blocks + block]
                    + u32::cast_from(row_of_pair[pair]),
            );
        }
        write_permutation(
            row_of_pair,
            routed_pairs,
            pair,
            row,
            usize::cast_from(expert_offsets[num_experts]),
        );
    }
}

/// Writes both directions of the permutation for `pair` (`row` -1 if unused) and marks row
/// `pair` unused when it lies past the `routed_rows` rows in use.
#[cube]
fn write_permutation<I: Int>(
    row_of_pair: &mut Array<I>,
    routed_pairs: &mut Array<I>,
    pair: usize,
    row: i32,
    routed_rows: usize,
) {
    row_of_pair[pair] = I::cast_from(row);
    if row >= 0 {
        routed_pairs[usize::cast_from(row)] = I::cast_from(pair);
    }
    if pair >= routed_rows {
        routed_pairs[pair] = I::cast_from(-1i32);
    }
}
