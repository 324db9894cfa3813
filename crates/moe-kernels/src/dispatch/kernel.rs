//! Padding-free dispatch, deterministic (no float or order-dependent atomics).
//!
//! Pairs are the flat `(token, slot)` indices `0..T*slots`. Up to [`SINGLE_CUBE_PAIRS`] pairs
//! (decode batches), one cube plans everything in one launch: `dispatch_in_one_cube`. Larger
//! inputs are cut into blocks of `BLOCK_PAIRS` pairs; rows are ordered by expert, then by pair, so
//! the first row of pair p of expert e in block b is
//! `offset[e] + (rows of e in blocks before b) + (rank of p among e's pairs in b)`:
//! 1. `count_blocks`: per block, the rank of every pair among earlier pairs of the same expert
//!    (plane ballots where planes are 32 wide, else a loop over the block's ids in shared memory)
//!    and the block's count of every expert, stored expert-major: `block_counts[e * num_blocks + b]`.
//! 2. `scan_block_rows`, only for more than [`FOLD_BLOCKS`] blocks: one cube per expert scans its
//!    row of counts in place (rows of e before each block) and stores the row's total.
//! 3. `scatter_pairs`: every cube reads, per expert, the rows of its earlier blocks and the total
//!    (with few blocks it sums the counts itself, which saves the launch of pass 2), scans the
//!    totals into the expert offsets, writes its share of the tile list and the permutation.

use cubecl::prelude::*;

use crate::plane::PLANE_UNITS;

/// Pairs per block of `count_blocks` and `scatter_pairs` (one unit per pair).
pub const BLOCK_PAIRS: usize = 256;
/// Most pairs `dispatch_in_one_cube` plans (one unit per pair); also its most experts.
pub const SINGLE_CUBE_PAIRS: usize = 1024;
/// Most blocks for which `scatter_pairs` sums the block counts itself (at most this many loads
/// per expert and unit) instead of reading rows scanned by `scan_block_rows`.
pub const FOLD_BLOCKS: usize = 64;
/// Units of each cube of `scan_block_rows`.
pub const ROW_SCAN_UNITS: usize = 256;

/// Pass 1: ranks within the block (into `pair_rank`) and per-expert counts of the block. With
/// `by_planes` (planes of exactly [`PLANE_UNITS`] units) the ranks come from plane ballots.
#[cube(launch_unchecked)]
pub fn count_blocks<I: Int>(
    expert_ids: &Array<I>,         // [P] expert of each pair, -1 if unused
    pair_rank: &mut Array<I>, // [P] out: rank among the block's earlier pairs of the same expert
    block_counts: &mut Array<u32>, // [E, B] out: pairs of expert e in block b
    num_pairs: usize,
    num_blocks: usize,
    #[comptime] num_experts: usize,
    #[comptime] by_planes: bool,
) {
    let block = CUBE_POS;
    let local = UNIT_POS as usize;
    let pair = block * BLOCK_PAIRS + local;
    let mut counts = SharedMemory::<u32>::new(num_experts);
    let id = load_expert(expert_ids, pair, num_pairs, num_experts);
    let rank = if by_planes {
        rank_in_block_by_planes(&mut counts, id, BLOCK_PAIRS, num_experts)
    } else {
        let mut ids = SharedMemory::<i32>::new(BLOCK_PAIRS);
        let pairs_here = min(BLOCK_PAIRS, num_pairs - block * BLOCK_PAIRS);
        rank_in_block(
            &mut ids,
            &mut counts,
            id,
            pairs_here,
            BLOCK_PAIRS,
            num_experts,
        )
    };
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

/// Like [`rank_in_block`] for a cube whose planes have exactly [`PLANE_UNITS`] units, every unit
/// holding a pair (-1 past the end): within a plane, ballots over the bits of `id + 1` give the
/// lanes that hold the same expert, so the rank costs a few ballots instead of a loop over the
/// block; the planes' counts per expert are then added in shared memory.
#[cube]
fn rank_in_block_by_planes(
    counts: &mut SharedMemory<u32>,
    id: i32,
    #[comptime] units: usize,
    #[comptime] num_experts: usize,
) -> u32 {
    let planes = comptime!(units / PLANE_UNITS);
    let key_bits = comptime!((num_experts as u32).ilog2() + 1); // keys 0 (unused) ..= E
    let local = UNIT_POS as usize;
    let lane = UNIT_POS_PLANE;
    let plane = local / PLANE_UNITS;
    // plane_counts[p * E + e]: pairs of expert e in plane p.
    let mut plane_counts = SharedMemory::<u32>::new(planes * num_experts);
    let mut i = local;
    while i < planes * num_experts {
        plane_counts[i] = 0u32;
        i += units;
    }

    let key = u32::cast_from(id + 1);
    let mut same = u32::new(u32::MAX as i64); // lanes whose key equals this lane's
    #[unroll]
    for bit in 0..key_bits {
        let set = ((key >> bit) & 1u32) == 1u32;
        let voters = plane_ballot(set)[0];
        same &= select(set, voters, !voters);
    }
    let lanes_below = (1u32 << lane) - 1u32;
    let rank_in_plane = (same & lanes_below).count_ones();
    sync_cube();
    if id >= 0 && (same >> lane) == 1u32 {
        // The plane's last lane of this expert reports the plane's count.
        plane_counts[plane * num_experts + usize::cast_from(id)] = rank_in_plane + 1;
    }
    sync_cube();

    let mut rank = rank_in_plane;
    if id >= 0 {
        for p in 0..plane {
            rank += plane_counts[p * num_experts + usize::cast_from(id)];
        }
    }
    let mut e = local;
    while e < num_experts {
        let mut total: u32 = 0;
        #[unroll]
        for p in 0..planes {
            total += plane_counts[p * num_experts + e];
        }
        counts[e] = total;
        e += units;
    }
    rank
}

/// Inclusive scan of `values[0..len]` in shared memory (Hillis-Steele) by all units of the cube,
/// which has at least `len` units and `values` an entry per unit (those past `len` are left
/// undefined).
#[cube]
fn scan_in_cube(values: &mut SharedMemory<u32>, #[comptime] len: usize) {
    let local = UNIT_POS as usize;
    let mut step: usize = 1;
    while step < len {
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

/// Exclusive scan of `values[0..len]` in shared memory by the cube's `units` units (any `len`):
/// afterwards `values[i]` is the sum of the entries before i and `values[len]` the total.
#[cube]
fn exclusive_scan_in_cube(
    values: &mut SharedMemory<u32>,
    #[comptime] len: usize,
    #[comptime] units: usize,
) {
    let items = comptime!(len.div_ceil(units)); // consecutive entries per unit
    let used_units = comptime!(len.div_ceil(items));
    let local = UNIT_POS as usize;
    let first = local * items;
    let mut partial = SharedMemory::<u32>::new(units);
    let mut sum: u32 = 0;
    #[unroll]
    for i in 0..items {
        if first + i < len {
            sum += values[first + i];
        }
    }
    partial[local] = sum;
    sync_cube();
    scan_in_cube(&mut partial, used_units);
    let mut running = partial[local] - sum;
    #[unroll]
    for i in 0..items {
        if first + i < len {
            let value = values[first + i];
            values[first + i] = running;
            running += value;
        }
    }
    if local == 0 {
        values[len] = partial[used_units - 1];
    }
    sync_cube();
}

/// Pass 2 (one cube per expert `CUBE_POS`): exclusive scan of the expert's row of block counts in
/// place, and the row's total.
#[cube(launch_unchecked)]
pub fn scan_block_rows(
    block_counts: &mut Array<u32>, // [E, B] in: counts; out: rows of e in the blocks before b
    expert_totals: &mut Array<u32>, // [E] out: rows of each expert
    num_blocks: usize,
) {
    let expert = CUBE_POS;
    let local = UNIT_POS as usize;
    let row = expert * num_blocks;
    let mut partial = SharedMemory::<u32>::new(ROW_SCAN_UNITS);
    let mut carry: u32 = 0;
    let mut chunk_start: usize = 0;
    while chunk_start < num_blocks {
        // One entry per unit and chunk: coalesced loads and stores.
        let block = chunk_start + local;
        let mut count: u32 = 0;
        if block < num_blocks {
            count = block_counts[row + block];
        }
        partial[local] = count;
        sync_cube();
        scan_in_cube(&mut partial, ROW_SCAN_UNITS);
        if block < num_blocks {
            block_counts[row + block] = carry + partial[local] - count;
        }
        carry += partial[ROW_SCAN_UNITS - 1];
        sync_cube();
        chunk_start += ROW_SCAN_UNITS;
    }
    if local == 0 {
        expert_totals[expert] = carry;
    }
}

/// Writes the share of cube `cube` of `num_cubes` (each of `units` units) of the outputs that
/// follow from the expert offsets (`offsets`, `[E + 1]` in shared memory): `expert_offsets` and
/// the tile count (the first cube) and the tile work list, where expert e owns
/// ceil(count_e / tile_rows) tiles, in expert order. Cubes past the tile list skip its scan.
#[cube]
#[allow(
    clippy::manual_div_ceil,
    clippy::too_many_arguments,
    reason = "kernel code: CubeCL expands operators, not div_ceil"
)]
fn write_offsets_and_tiles<I: Int>(
    offsets: &SharedMemory<u32>,
    expert_offsets: &mut Array<I>,
    tiles: &mut Array<I>,
    num_tiles: &mut Array<I>,
    max_tiles: usize,
    cube: usize,
    num_cubes: usize,
    #[comptime] num_experts: usize,
    #[comptime] tile_rows: usize,
    #[comptime] units: usize,
) {
    let local = UNIT_POS as usize;
    if cube == 0 {
        let mut e = local;
        while e <= num_experts {
            expert_offsets[e] = I::cast_from(offsets[e]);
            e += units;
        }
    }
    let first_tile = cube * units;
    if first_tile < max_tiles {
        // tile_start[e]: the first tile of expert e; tile_start[E]: the tiles in use.
        let mut tile_start = SharedMemory::<u32>::new(num_experts + 1);
        let mut e = local;
        while e < num_experts {
            let count = offsets[e + 1] - offsets[e];
            tile_start[e] = (count + tile_rows as u32 - 1) / tile_rows as u32;
            e += units;
        }
        sync_cube();
        exclusive_scan_in_cube(&mut tile_start, num_experts, units);
        let used_tiles = tile_start[num_experts] as usize;
        if cube == 0 && local == 0 {
            num_tiles[0] = I::cast_from(used_tiles);
        }

        let mut tile = first_tile + local;
        while tile < max_tiles {
            let mut expert = i32::new(-1);
            let mut first_row = i32::new(-1);
            if tile < used_tiles {
                let owner = expert_of_tile(&tile_start, tile, num_experts);
                expert = i32::cast_from(owner);
                first_row = i32::cast_from(
                    offsets[owner] as usize + (tile - tile_start[owner] as usize) * tile_rows,
                );
            }
            tiles[2 * tile] = I::cast_from(expert);
            tiles[2 * tile + 1] = I::cast_from(first_row);
            tile += num_cubes * units;
        }
    }
}

/// The expert whose tile range holds `tile` (< the tiles in use): the first e with
/// `tile_start[e + 1] > tile`, by binary search.
#[cube]
fn expert_of_tile(
    tile_start: &SharedMemory<u32>,
    tile: usize,
    #[comptime] num_experts: usize,
) -> usize {
    let mut low: usize = 0;
    let mut high = usize::new(comptime!((num_experts - 1) as i64));
    while low < high {
        let mid = (low + high) / 2;
        if tile_start[mid + 1] as usize > tile {
            high = mid;
        } else {
            low = mid + 1;
        }
    }
    low
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
    // The expert counts, scanned in place into the expert offsets.
    let mut offsets = SharedMemory::<u32>::new(num_experts + 1);
    let id = load_expert(expert_ids, pair, num_pairs, num_experts);
    let rank = rank_in_block(&mut ids, &mut offsets, id, num_pairs, units, num_experts);
    sync_cube();
    exclusive_scan_in_cube(&mut offsets, num_experts, units);
    write_offsets_and_tiles(
        &offsets,
        expert_offsets,
        tiles,
        num_tiles,
        max_tiles,
        0,
        1,
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

/// Pass 3: the expert offsets, the cube's share of the tile list and the row of every used pair
/// of its block: both directions of the permutation and the unused tail.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub fn scatter_pairs<I: Int>(
    expert_ids: &Array<I>,         // [P]
    block_counts: &Array<u32>,     // [E, B] counts, or rows before each block if `rows_scanned`
    expert_totals: &Array<u32>,    // [E] rows of each expert, if `rows_scanned`
    expert_offsets: &mut Array<I>, // [E + 1]
    row_of_pair: &mut Array<I>,    // [P] in: rank within the block; out: row, -1 if unused
    routed_pairs: &mut Array<I>,   // [P] out: pair of each row, -1 past the routed rows
    tiles: &mut Array<I>,          // [max_tiles, 2]
    num_tiles: &mut Array<I>,      // [1]
    num_pairs: usize,
    num_blocks: usize,
    max_tiles: usize,
    #[comptime] num_experts: usize,
    #[comptime] tile_rows: usize,
    #[comptime] rows_scanned: bool,
) {
    let block = CUBE_POS;
    let local = UNIT_POS as usize;
    // Per expert: its rows in the blocks before this one, and its total (scanned into offsets).
    let mut rows_before = SharedMemory::<u32>::new(num_experts);
    let mut offsets = SharedMemory::<u32>::new(num_experts + 1);
    let mut e = local;
    while e < num_experts {
        let row = e * num_blocks;
        if rows_scanned {
            rows_before[e] = block_counts[row + block];
            offsets[e] = expert_totals[e];
        } else {
            let mut before: u32 = 0;
            let mut total: u32 = 0;
            for b in 0..num_blocks {
                let count = block_counts[row + b];
                total += count;
                before += select(b < block, count, 0u32);
            }
            rows_before[e] = before;
            offsets[e] = total;
        }
        e += BLOCK_PAIRS;
    }
    sync_cube();
    exclusive_scan_in_cube(&mut offsets, num_experts, BLOCK_PAIRS);
    write_offsets_and_tiles(
        &offsets,
        expert_offsets,
        tiles,
        num_tiles,
        max_tiles,
        block,
        num_blocks,
        num_experts,
        tile_rows,
        BLOCK_PAIRS,
    );

    let pair = block * BLOCK_PAIRS + local;
    if pair < num_pairs {
        let id = load_expert(expert_ids, pair, num_pairs, num_experts);
        let mut row = i32::new(-1);
        if id >= 0 {
            let expert = usize::cast_from(id);
            row = i32::cast_from(
                offsets[expert] + rows_before[expert] + u32::cast_from(row_of_pair[pair]),
            );
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
