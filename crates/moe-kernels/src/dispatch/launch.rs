//! Host side of dispatch: validate, allocate, launch the single-cube plan or the three passes.

use cubecl::prelude::*;
use cubecl::server::Handle;

use super::kernel::{
    BLOCK_PAIRS, FOLD_BLOCKS, ROW_SCAN_UNITS, SINGLE_CUBE_PAIRS, count_blocks,
    dispatch_in_one_cube, scan_block_rows, scatter_pairs,
};
use super::reference::max_tiles;
use crate::buffer::{expect_len, expect_positive};
use crate::plane::has_planes_of_32;
use crate::{InvalidValue, KernelError};

/// The dispatch plan in device buffers (the device form of
/// [`DispatchPlan`](super::reference::DispatchPlan)); all of element type `I`.
#[derive(Clone, Debug)]
pub struct DispatchOnDevice {
    /// `[E + 1]`; the last entry is the routed row count S.
    pub expert_offsets: Handle,
    /// Pair of each row, -1 past S. `[P]`
    pub routed_pairs: Handle,
    /// Row of each pair, -1 for unused slots. `[P]`
    pub row_of_pair: Handle,
    /// `(expert, first row)` per tile of `tile_rows` rows, -1 past the used tiles. `[max_tiles, 2]`
    pub tiles: Handle,
    /// Tiles in use. `[1]`
    pub num_tiles: Handle,
    /// Pairs P = T * slots.
    pub num_pairs: usize,
    /// Experts E.
    pub num_experts: usize,
    /// Rows per tile of the tile list (the grouped GEMM's tile rows).
    pub tile_rows: usize,
}

impl DispatchOnDevice {
    /// Uninitialised buffers for `num_pairs` pairs over `num_experts` experts, tiles of
    /// `tile_rows` rows.
    pub fn empty<R: Runtime, I: CubeElement>(
        client: &ComputeClient<R>,
        num_pairs: usize,
        num_experts: usize,
        tile_rows: usize,
    ) -> Self {
        let int = size_of::<I>();
        Self {
            expert_offsets: client.empty((num_experts + 1) * int),
            routed_pairs: client.empty(num_pairs * int),
            row_of_pair: client.empty(num_pairs * int),
            tiles: client.empty(2 * max_tiles(num_pairs, num_experts, tile_rows.max(1)) * int),
            num_tiles: client.empty(int),
            num_pairs,
            num_experts,
            tile_rows,
        }
    }

    /// Checks that this is the dispatch of a batch of `num_pairs` pairs over `num_experts`
    /// experts in tiles of `tile_rows` rows (what a grouped GEMM reads), with buffers of `I`
    /// of those sizes.
    pub fn expect_batch<I: CubeElement>(
        &self,
        num_pairs: usize,
        num_experts: usize,
        tile_rows: usize,
    ) -> Result<(), KernelError> {
        if self.num_pairs != num_pairs || self.num_experts != num_experts {
            return Err(InvalidValue::new(
                "plan",
                format!("{} pairs over {} experts", self.num_pairs, self.num_experts),
                format!(
                    "must be the dispatch of this batch ({num_pairs} pairs over {num_experts} experts)"
                ),
            )
            .into());
        }
        if self.tile_rows != tile_rows {
            return Err(InvalidValue::new(
                "plan.tile_rows",
                self.tile_rows,
                format!("must equal the GEMM's tile rows ({tile_rows})"),
            )
            .into());
        }
        let int = size_of::<I>();
        let tiles = max_tiles(num_pairs, num_experts, tile_rows);
        expect_len(&self.routed_pairs, "routed_pairs", num_pairs, int)?;
        expect_len(&self.expert_offsets, "expert_offsets", num_experts + 1, int)?;
        expect_len(&self.tiles, "tiles", 2 * tiles, int)?;
        expect_len(&self.num_tiles, "num_tiles", 1, int)?;
        Ok(())
    }
}

/// Most experts dispatch supports: the single-cube plan keeps one unit per expert.
pub const MAX_EXPERTS: usize = SINGLE_CUBE_PAIRS;

/// Plans the dispatch of `expert_ids` (`[num_pairs]` of `I`, -1 for unused slots) with a tile
/// list of `tile_rows` rows per tile.
pub fn dispatch<R: Runtime, I: Int + CubeElement>(
    client: &ComputeClient<R>,
    expert_ids: &Handle,
    num_pairs: usize,
    num_experts: usize,
    tile_rows: usize,
) -> Result<DispatchOnDevice, KernelError> {
    let plan = DispatchOnDevice::empty::<R, I>(client, num_pairs, num_experts, tile_rows);
    dispatch_into::<R, I>(client, expert_ids, &plan)?;
    Ok(plan)
}

/// Like [`dispatch`], into caller-provided buffers (which tests poison first).
pub fn dispatch_into<R: Runtime, I: Int + CubeElement>(
    client: &ComputeClient<R>,
    expert_ids: &Handle,
    plan: &DispatchOnDevice,
) -> Result<(), KernelError> {
    validate_into::<R, I>(client, expert_ids, plan)?;
    launch::<R, I>(client, expert_ids, plan);
    Ok(())
}

/// Launches the plan of `expert_ids` into `plan`, whose buffers [`validate_into`] has checked.
pub(crate) fn launch<R: Runtime, I: Int + CubeElement>(
    client: &ComputeClient<R>,
    expert_ids: &Handle,
    plan: &DispatchOnDevice,
) {
    let (num_pairs, num_experts) = (plan.num_pairs, plan.num_experts);
    let num_blocks = num_pairs.div_ceil(BLOCK_PAIRS);
    let tiles_capacity = max_tiles(num_pairs, num_experts, plan.tile_rows);
    if num_pairs <= SINGLE_CUBE_PAIRS {
        // One unit per pair and per expert (the scans), a whole plane at least.
        let units = num_pairs.max(num_experts).next_power_of_two().max(32);
        // SAFETY: as below; the one cube has a unit per pair and indexes below num_pairs.
        unsafe {
            dispatch_in_one_cube::launch_unchecked::<I, R>(
                client,
                CubeCount::Static(1, 1, 1),
                CubeDim::new_1d(units as u32),
                ArrayArg::from_raw_parts(expert_ids.clone(), num_pairs),
                ArrayArg::from_raw_parts(plan.expert_offsets.clone(), num_experts + 1),
                ArrayArg::from_raw_parts(plan.routed_pairs.clone(), num_pairs),
                ArrayArg::from_raw_parts(plan.row_of_pair.clone(), num_pairs),
                ArrayArg::from_raw_parts(plan.tiles.clone(), 2 * tiles_capacity),
                ArrayArg::from_raw_parts(plan.num_tiles.clone(), 1),
                num_pairs,
                tiles_capacity,
                num_experts,
                plan.tile_rows,
                units,
            );
        }
        return;
    }

    let counts_len = num_experts * num_blocks;
    let counts = client.empty(counts_len * size_of::<u32>());
    let rows_scanned = num_blocks > FOLD_BLOCKS;
    // Written by `scan_block_rows`; with few blocks `scatter_pairs` sums the counts instead.
    let totals = client.empty(num_experts * size_of::<u32>());
    // SAFETY: `validate_into` checked the buffers against (num_pairs, num_experts, num_blocks); the
    // kernels index `expert_ids`, `row_of_pair` and `routed_pairs` below num_pairs, the block
    // counts below E * B, the totals below E, `expert_offsets` up to E and `tiles` below
    // 2 * max_tiles.
    unsafe {
        count_blocks::launch_unchecked::<I, R>(
            client,
            CubeCount::Static(num_blocks as u32, 1, 1),
            CubeDim::new_1d(BLOCK_PAIRS as u32),
            ArrayArg::from_raw_parts(expert_ids.clone(), num_pairs),
            ArrayArg::from_raw_parts(plan.row_of_pair.clone(), num_pairs),
            ArrayArg::from_raw_parts(counts.clone(), counts_len),
            num_pairs,
            num_blocks,
            num_experts,
            has_planes_of_32(client),
        );
        if rows_scanned {
            scan_block_rows::launch_unchecked::<R>(
                client,
                CubeCount::Static(num_experts as u32, 1, 1),
                CubeDim::new_1d(ROW_SCAN_UNITS as u32),
                ArrayArg::from_raw_parts(counts.clone(), counts_len),
                ArrayArg::from_raw_parts(totals.clone(), num_experts),
                num_blocks,
            );
        }
        scatter_pairs::launch_unchecked::<I, R>(
            client,
            CubeCount::Static(num_blocks as u32, 1, 1),
            CubeDim::new_1d(BLOCK_PAIRS as u32),
            ArrayArg::from_raw_parts(expert_ids.clone(), num_pairs),
            ArrayArg::from_raw_parts(counts.clone(), counts_len),
            ArrayArg::from_raw_parts(totals.clone(), num_experts),
            ArrayArg::from_raw_parts(plan.expert_offsets.clone(), num_experts + 1),
            ArrayArg::from_raw_parts(plan.row_of_pair.clone(), num_pairs),
            ArrayArg::from_raw_parts(plan.routed_pairs.clone(), num_pairs),
            ArrayArg::from_raw_parts(plan.tiles.clone(), 2 * tiles_capacity),
            ArrayArg::from_raw_parts(plan.num_tiles.clone(), 1),
            num_pairs,
            num_blocks,
            tiles_capacity,
            num_experts,
            plan.tile_rows,
            rows_scanned,
        );
    }
}

/// Checks the arguments of [`dispatch_into`] (also those of the fused routing stage).
pub(crate) fn validate_into<R: Runtime, I: Int + CubeElement>(
    client: &ComputeClient<R>,
    expert_ids: &Handle,
    plan: &DispatchOnDevice,
) -> Result<(), KernelError> {
    let (num_pairs, num_experts) = (plan.num_pairs, plan.num_experts);
    expect_positive(&[
        ("num_pairs", num_pairs),
        ("tile_rows", plan.tile_rows),
        ("num_experts", num_experts),
    ])?;
    if num_experts > MAX_EXPERTS {
        return Err(KernelError::Unsupported(format!(
            "num_experts = {num_experts} (dispatch plans at most {MAX_EXPERTS} experts)"
        )));
    }
    let int = size_of::<I>();
    expect_len(expert_ids, "expert_ids", num_pairs, int)?;
    expect_len(&plan.expert_offsets, "expert_offsets", num_experts + 1, int)?;
    expect_len(&plan.routed_pairs, "routed_pairs", num_pairs, int)?;
    expect_len(&plan.row_of_pair, "row_of_pair", num_pairs, int)?;
    expect_len(
        &plan.tiles,
        "tiles",
        2 * max_tiles(num_pairs, num_experts, plan.tile_rows),
        int,
    )?;
    expect_len(&plan.num_tiles, "num_tiles", 1, int)?;
    let num_blocks = num_pairs.div_ceil(BLOCK_PAIRS);
    let max_cubes = client.properties().hardware.max_cube_count.0 as usize;
    if num_blocks > max_cubes {
        return Err(KernelError::Unsupported(format!(
            "num_pairs = {num_pairs} (at most {} on this device)",
            max_cubes * BLOCK_PAIRS
        )));
    }
    Ok(())
}
