//! Host side of the routing stage: validate, allocate, launch fused or in sequence.

use cubecl::prelude::*;
use cubecl::server::Handle;

use super::kernel::route_and_dispatch_in_one_cube;
use crate::dispatch::reference::max_tiles;
use crate::dispatch::{self, DispatchOnDevice};
use crate::plane::has_planes_of_32;
use crate::route::{self, RoutedOnDevice};
use crate::{InvalidValue, KernelError, RoutingPolicy};

/// Largest cube of the fused stage: it routes and plans up to this many (token, slot) pairs over
/// up to this many experts in one launch.
pub const FUSED_UNITS: usize = 256;

/// Routes `logits` (`[num_tokens, num_experts]` of `F`, contiguous) with `policy` and plans the
/// dispatch of the result: one launch, without host synchronisation, when
/// `num_tokens * slots <= FUSED_UNITS` and `num_experts <= FUSED_UNITS`. The tile list has
/// `tile_rows` rows per tile.
pub fn route_and_dispatch<R: Runtime, F: Float + CubeElement, I: Int + CubeElement>(
    client: &ComputeClient<R>,
    logits: &Handle,
    num_tokens: usize,
    num_experts: usize,
    policy: &RoutingPolicy,
    tile_rows: usize,
) -> Result<(RoutedOnDevice, DispatchOnDevice), KernelError> {
    let routed = RoutedOnDevice::empty::<R, F, I>(client, num_tokens, policy);
    let plan =
        DispatchOnDevice::empty::<R, I>(client, num_tokens * routed.slots, num_experts, tile_rows);
    route_and_dispatch_into::<R, F, I>(client, logits, &routed, &plan, policy)?;
    Ok((routed, plan))
}

/// Like [`route_and_dispatch`], into caller-provided buffers (which tests poison first).
pub fn route_and_dispatch_into<R: Runtime, F: Float + CubeElement, I: Int + CubeElement>(
    client: &ComputeClient<R>,
    logits: &Handle,
    routed: &RoutedOnDevice,
    plan: &DispatchOnDevice,
    policy: &RoutingPolicy,
) -> Result<(), KernelError> {
    let num_experts = plan.num_experts;
    let num_pairs = routed.num_tokens * routed.slots;
    if plan.num_pairs != num_pairs {
        return Err(KernelError::from(InvalidValue::new(
            "plan.num_pairs",
            plan.num_pairs,
            format!("must equal tokens x slots ({num_pairs})"),
        )));
    }
    route::launch::validate_into::<R, F, I>(client, logits, routed, num_experts, policy)?;
    dispatch::launch::validate_into::<R, I>(client, &routed.expert_ids, plan)?;
    let Some((units, team)) = fused_shape(routed.num_tokens, routed.slots, num_experts) else {
        route::launch::launch::<R, F, I>(client, logits, routed, num_experts, policy);
        dispatch::launch::launch::<R, I>(client, &routed.expert_ids, plan);
        return Ok(());
    };

    let (num_tokens, slots) = (routed.num_tokens, routed.slots);
    let tiles_capacity = max_tiles(num_pairs, num_experts, plan.tile_rows);
    // SAFETY: the buffers were checked against (num_tokens, slots, num_experts) above; the cube
    // has a unit per pair, per expert and per team member of every token, and indexes inside them.
    unsafe {
        route_and_dispatch_in_one_cube::launch_unchecked::<F, I, R>(
            client,
            CubeCount::Static(1, 1, 1),
            CubeDim::new_1d(units as u32),
            ArrayArg::from_raw_parts(logits.clone(), num_tokens * num_experts),
            ArrayArg::from_raw_parts(routed.expert_ids.clone(), num_pairs),
            ArrayArg::from_raw_parts(routed.weights.clone(), num_pairs),
            ArrayArg::from_raw_parts(routed.token_k.clone(), num_tokens),
            ArrayArg::from_raw_parts(plan.expert_offsets.clone(), num_experts + 1),
            ArrayArg::from_raw_parts(plan.routed_pairs.clone(), num_pairs),
            ArrayArg::from_raw_parts(plan.row_of_pair.clone(), num_pairs),
            ArrayArg::from_raw_parts(plan.tiles.clone(), 2 * tiles_capacity),
            ArrayArg::from_raw_parts(plan.num_tiles.clone(), 1),
            num_tokens,
            policy.mass_limit().unwrap_or(0.0) as f32,
            tiles_capacity,
            num_experts,
            slots,
            team,
            policy.mass_limit().is_some(),
            plan.tile_rows,
            units,
            has_planes_of_32(client),
        );
    }
    Ok(())
}

/// `(units, team)` of the fused cube, or `None` when the batch is too large for one cube: a unit
/// per pair and per expert, and a team (a power of two, as large as the route kernel's, as the
/// cube allows) per token.
fn fused_shape(num_tokens: usize, slots: usize, num_experts: usize) -> Option<(usize, usize)> {
    let num_pairs = num_tokens * slots;
    if num_pairs > FUSED_UNITS || num_experts > FUSED_UNITS {
        return None;
    }
    let room = FUSED_UNITS / num_tokens; // >= slots >= 1
    let team = route::launch::team_size(num_tokens, num_experts, slots).min(1 << room.ilog2());
    let units = num_pairs
        .max(num_experts)
        .max(num_tokens * team)
        .next_power_of_two()
        .max(32);
    Some((units, team))
}
