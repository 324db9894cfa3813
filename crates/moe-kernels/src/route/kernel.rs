//! Fused router: softmax, top-k and the variable-k decision in one pass over each row of logits.
//!
//! Tiling: a team of `team` consecutive units routes one token. Member m reads experts
//! m, m + team, m + 2 * team, ... (so a plane's loads are contiguous) in chunks of loads issued
//! together, keeps its own top `slots` experts by logit in registers (a small sorted list; ties
//! keep the lower expert index) and the sum of exp(logit - its own maximum), in one pass. The
//! team then merges its members' lists and sums in log2(team) rounds, by plane shuffles where the
//! device has 32-wide planes, else through shared memory: the merged list is the row's top
//! `slots`, because the order (logit descending, index ascending) is total. The team's first
//! member applies the policy: slot s is used while the probability mass of slots `0..s` is below
//! `mass_limit` (no limit: every slot), and writes the renormalised weights. Computation is in
//! f32 whatever the logits' type. Assumes contiguous row-major buffers and finite logits.

use cubecl::prelude::*;

/// Most logits a team member loads at once (in flight together) before using them.
const LOAD_CHUNK: usize = 16;

/// Routes token `ABSOLUTE_POS / team` (see the module docs).
#[cube(launch_unchecked)]
pub fn route_kernel<F: Float, I: Int>(
    logits: &Array<F>,         // [T, E]
    expert_ids: &mut Array<I>, // [T, slots]; -1 in unused slots
    weights: &mut Array<F>,    // [T, slots]; 0 in unused slots
    token_k: &mut Array<I>,    // [T]
    num_tokens: usize,
    mass_limit: f32,
    #[comptime] num_experts: usize,
    #[comptime] slots: usize,
    #[comptime] team: usize,
    #[comptime] cube_units: usize,
    #[comptime] has_mass_limit: bool,
    #[comptime] by_planes: bool,
) {
    route_token::<F, I>(
        logits,
        expert_ids,
        weights,
        token_k,
        ABSOLUTE_POS / team,
        num_tokens,
        mass_limit,
        num_experts,
        slots,
        team,
        cube_units,
        has_mass_limit,
        by_planes,
    );
}

/// The body of [`route_kernel`] for the unit's `token`, also run by the fused routing stage.
/// Every unit of the cube (`cube_units` of them) must call it: the team merge synchronises the
/// cube, or with `by_planes` (planes of exactly `PLANE_UNITS` units) exchanges through plane
/// shuffles.
#[cube]
#[allow(
    clippy::too_many_arguments,
    clippy::manual_is_multiple_of,
    reason = "kernel code: CubeCL expands operators, not is_multiple_of"
)]
pub fn route_token<F: Float, I: Int>(
    logits: &Array<F>,
    expert_ids: &mut Array<I>,
    weights: &mut Array<F>,
    token_k: &mut Array<I>,
    token: usize,
    num_tokens: usize,
    mass_limit: f32,
    #[comptime] num_experts: usize,
    #[comptime] slots: usize,
    #[comptime] team: usize,
    #[comptime] cube_units: usize,
    #[comptime] has_mass_limit: bool,
    #[comptime] by_planes: bool,
) {
    let member = UNIT_POS as usize % team;
    let active = token < num_tokens;

    // Phase 1: the member's top `slots` and its softmax partial sum, relative to its maximum.
    let mut top_logit = Array::<f32>::new(slots);
    let mut top_expert = Array::<u32>::new(slots);
    #[unroll]
    for s in 0..slots {
        top_logit[s] = f32::min_value();
        top_expert[s] = u32::MAX;
    }
    let mut max_logit = f32::min_value();
    let mut sum = 0.0f32;
    if active {
        let row = token * num_experts;
        let per_member = comptime!(num_experts.div_ceil(team));
        let chunk_len = comptime!(per_member.min(LOAD_CHUNK));
        let mut first: usize = 0; // the chunk's first index among the member's experts
        while first < per_member {
            // A chunk of loads in flight at once, then the sum (rescaled to the new maximum once
            // per chunk) and the top list.
            let mut chunk = Array::<f32>::new(chunk_len);
            #[unroll]
            for i in 0..chunk_len {
                let e = member + (first + i) * team;
                chunk[i] = f32::min_value();
                if e < num_experts {
                    chunk[i] = f32::cast_from(logits[row + e]);
                }
            }
            let mut chunk_max = max_logit;
            #[unroll]
            for i in 0..chunk_len {
                chunk_max = f32::max(chunk_max, chunk[i]);
            }
            sum *= f32::exp(max_logit - chunk_max);
            #[unroll]
            for i in 0..chunk_len {
                let e = member + (first + i) * team;
                if e < num_experts {
                    sum += f32::exp(chunk[i] - chunk_max);
                    insert(&mut top_logit, &mut top_expert, chunk[i], e as u32, slots);
                }
            }
            max_logit = chunk_max;
            first += chunk_len;
        }
    }

    // Phase 2: merge the team's lists and sums.
    if by_planes {
        // Butterfly within the plane: each round every member merges with member ^ mask, so all
        // end with the team's list (partners always hold disjoint experts).
        let mut partner_logit = Array::<f32>::new(slots);
        let mut partner_expert = Array::<u32>::new(slots);
        let mut mask: u32 = 1;
        while (mask as usize) < team {
            #[unroll]
            for s in 0..slots {
                partner_logit[s] = plane_shuffle_xor(top_logit[s], mask);
                partner_expert[s] = plane_shuffle_xor(top_expert[s], mask);
            }
            let partner_max = plane_shuffle_xor(max_logit, mask);
            let partner_sum = plane_shuffle_xor(sum, mask);
            #[unroll]
            for s in 0..slots {
                insert(
                    &mut top_logit,
                    &mut top_expert,
                    partner_logit[s],
                    partner_expert[s],
                    slots,
                );
            }
            sum = merged_sum(sum, max_logit, partner_sum, partner_max);
            max_logit = f32::max(max_logit, partner_max);
            mask *= 2;
        }
    } else {
        // Through shared memory, halving the members holding data each round.
        let mut shared_logit = SharedMemory::<f32>::new(cube_units * slots);
        let mut shared_expert = SharedMemory::<u32>::new(cube_units * slots);
        let mut shared_max = SharedMemory::<f32>::new(cube_units);
        let mut shared_sum = SharedMemory::<f32>::new(cube_units);
        let local = UNIT_POS as usize;
        let mut step: usize = 1;
        while step < team {
            #[unroll]
            for s in 0..slots {
                shared_logit[local * slots + s] = top_logit[s];
                shared_expert[local * slots + s] = top_expert[s];
            }
            shared_max[local] = max_logit;
            shared_sum[local] = sum;
            sync_cube();
            if member % (2 * step) == 0 {
                let partner = local + step;
                #[unroll]
                for s in 0..slots {
                    insert(
                        &mut top_logit,
                        &mut top_expert,
                        shared_logit[partner * slots + s],
                        shared_expert[partner * slots + s],
                        slots,
                    );
                }
                let partner_max = shared_max[partner];
                sum = merged_sum(sum, max_logit, shared_sum[partner], partner_max);
                max_logit = f32::max(max_logit, partner_max);
            }
            sync_cube();
            step *= 2;
        }
    }

    // Phase 3: the policy's prefix, then renormalised weights.
    if active && member == 0 {
        let mut used: usize = 1;
        let mut mass = f32::exp(top_logit[0] - max_logit) / sum;
        #[unroll]
        for s in 1..slots {
            let below_limit = !has_mass_limit || mass < mass_limit;
            if used == s && below_limit {
                used += 1;
                mass += f32::exp(top_logit[s] - max_logit) / sum;
            }
        }

        let kept_sum = mass * sum; // sum of exp(logit - max) over the used slots
        #[unroll]
        for s in 0..slots {
            let out = token * slots + s;
            if s < used {
                expert_ids[out] = I::cast_from(top_expert[s]);
                weights[out] = F::cast_from(f32::exp(top_logit[s] - max_logit) / kept_sum);
            } else {
                expert_ids[out] = I::cast_from(-1i32);
                weights[out] = F::cast_from(0.0f32);
            }
        }
        token_k[token] = I::cast_from(used);
    }
}

/// The sum of exp(logit - m) over two members' experts, m the larger of their maxima, from each
/// member's sum relative to its own maximum.
#[cube]
fn merged_sum(sum: f32, max_logit: f32, partner_sum: f32, partner_max: f32) -> f32 {
    let merged_max = f32::max(max_logit, partner_max);
    sum * f32::exp(max_logit - merged_max) + partner_sum * f32::exp(partner_max - merged_max)
}

/// Inserts `(logit, expert)` into the sorted list `top_*` (logit descending, expert ascending),
/// dropping the last entry, if it ranks before that entry.
#[cube]
fn insert(
    top_logit: &mut Array<f32>,
    top_expert: &mut Array<u32>,
    logit: f32,
    expert: u32,
    #[comptime] slots: usize,
) {
    let last = slots - 1;
    let enters = logit > top_logit[last] || (logit == top_logit[last] && expert < top_expert[last]);
    if enters {
        let mut candidate_logit = logit;
        let mut candidate_expert = expert;
        #[unroll]
        for s in 0..slots {
            let kept_logit = top_logit[s];
            let kept_expert = top_expert[s];
            let wins = candidate_logit > kept_logit
                || (candidate_logit == kept_logit && candidate_expert < kept_expert);
            top_logit[s] = select(wins, candidate_logit, kept_logit);
            top_expert[s] = select(wins, candidate_expert, kept_expert);
            candidate_logit = select(wins, kept_logit, candidate_logit);
            candidate_expert = select(wins, kept_expert, candidate_expert);
        }
    }
}
