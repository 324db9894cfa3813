//! Fused router: softmax, top-k and the variable-k decision for a block of tokens per cube.
//!
//! Tiling: a cube routes `rows_per_cube` consecutive tokens. Its units first copy the block's
//! logits (`[rows, E]`, contiguous in memory) into shared memory with coalesced loads, rows padded
//! to an odd stride so that the units of a plane reading "their" rows hit distinct banks, then
//! unit r routes token r from shared memory in two passes: the top `slots` experts by logit (a small
//! sorted list in registers; ties keep the lower expert index), then the softmax denominator.
//! The policy keeps a prefix of the sorted list: slot s is used while the probability mass of
//! slots `0..s` is below `mass_limit` (no limit: every slot). Computation is in f32 whatever the
//! logits' type. Assumes contiguous row-major buffers and finite logits.

use cubecl::prelude::*;

/// Routes tokens `CUBE_POS * rows_per_cube ..` (see the module docs).
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
    #[comptime] rows_per_cube: usize,
    #[comptime] has_mass_limit: bool,
) {
    let first_token = CUBE_POS * rows_per_cube;
    let tokens_here = min(rows_per_cube, num_tokens - first_token);

    // Phase 1: coalesced copy of the block's logits into shared memory, rows `stride` apart.
    let stride = comptime!(shared_row_stride(num_experts));
    let mut block = SharedMemory::<f32>::new(rows_per_cube * stride);
    let block_len = tokens_here * num_experts;
    let block_start = first_token * num_experts;
    let mut i = UNIT_POS as usize;
    while i < block_len {
        block[(i / num_experts) * stride + i % num_experts] =
            f32::cast_from(logits[block_start + i]);
        i += CUBE_DIM as usize;
    }
    sync_cube();

    let local = UNIT_POS as usize;
    if local < tokens_here {
        let row = local * stride;

        // Phase 2a: top `slots` experts by (logit descending, index ascending).
        let mut top_logit = Array::<f32>::new(slots);
        let mut top_expert = Array::<u32>::new(slots);
        #[unroll]
        for s in 0..slots {
            top_logit[s] = f32::min_value();
            top_expert[s] = u32::MAX;
        }
        for e in 0..num_experts {
            let logit = block[row + e];
            let mut candidate_logit = logit;
            let mut candidate_expert = e as u32;
            let last = slots - 1;
            let enters = logit > top_logit[last]
                || (logit == top_logit[last] && candidate_expert < top_expert[last]);
            if enters {
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

        // Phase 2b: softmax denominator, relative to the largest logit.
        let max_logit = top_logit[0];
        let mut denominator = 0.0f32;
        for e in 0..num_experts {
            denominator += f32::exp(block[row + e] - max_logit);
        }

        // Phase 2c: the policy's prefix, then renormalised weights.
        let mut used: usize = 1;
        let mut mass = f32::exp(top_logit[0] - max_logit) / denominator;
        #[unroll]
        for s in 1..slots {
            let below_limit = !has_mass_limit || mass < mass_limit;
            if used == s && below_limit {
                used += 1;
                mass += f32::exp(top_logit[s] - max_logit) / denominator;
            }
        }

        let token = first_token + local;
        let kept_sum = mass * denominator; // sum of exp(logit - max) over the used slots
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

/// Shared-memory distance between two rows of logits: `num_experts` rounded up to an odd number,
/// so that 32 units reading one element of 32 consecutive rows touch 32 different banks.
pub const fn shared_row_stride(num_experts: usize) -> usize {
    num_experts | 1
}
