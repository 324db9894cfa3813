//! The fused routing stage: one cube routes every token (teams of units, as the route kernel),
//! then plans the dispatch of the expert ids it has just written (as the single-cube dispatch).

use cubecl::prelude::*;

use crate::dispatch::kernel::plan_in_one_cube;
use crate::route::kernel::route_token;

/// Routes `num_tokens` tokens and plans their dispatch in one cube of `units` units.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub fn route_and_dispatch_in_one_cube<F: Float, I: Int>(
    logits: &Array<F>,             // [T, E]
    expert_ids: &mut Array<I>,     // [T, slots]
    weights: &mut Array<F>,        // [T, slots]
    token_k: &mut Array<I>,        // [T]
    expert_offsets: &mut Array<I>, // [E + 1]
    routed_pairs: &mut Array<I>,   // [T * slots]
    row_of_pair: &mut Array<I>,    // [T * slots]
    tiles: &mut Array<I>,          // [max_tiles, 2]
    num_tiles: &mut Array<I>,      // [1]
    num_tokens: usize,
    mass_limit: f32,
    max_tiles: usize,
    #[comptime] num_experts: usize,
    #[comptime] slots: usize,
    #[comptime] team: usize,
    #[comptime] has_mass_limit: bool,
    #[comptime] tile_rows: usize,
    #[comptime] units: usize,
    #[comptime] by_planes: bool,
) {
    route_token::<F, I>(
        logits,
        expert_ids,
        weights,
        token_k,
        UNIT_POS as usize / team,
        num_tokens,
        mass_limit,
        num_experts,
        slots,
        team,
        units,
        has_mass_limit,
        by_planes,
    );
    // The ids written above, by other units of this cube, are read below.
    sync_storage();
    sync_cube();
    plan_in_one_cube::<I>(
        expert_ids,
        expert_offsets,
        routed_pairs,
        row_of_pair,
        tiles,
        num_tiles,
        num_tokens * slots,
        max_tiles,
        num_experts,
        tile_rows,
        units,
    );
}
