//! The router's training kernels (see [`super::reference`] for the formulas).
//!
//! One unit per token (grid-stride loop) reads the token's row of logits; arithmetic is f32
//! whatever the storage type. The loss runs as one cube that sums its units' per-token terms in
//! shared memory, so the value is deterministic and needs no second launch. Assumes contiguous
//! row-major buffers and finite logits.

use cubecl::prelude::*;

/// `log sum_e exp(logits[row + e])` over the `num_experts` logits of one token.
#[cube]
fn log_sum_exp<F: Float>(logits: &Array<F>, row: usize, num_experts: usize) -> f32 {
    let mut max = f32::min_value();
    for e in 0..num_experts {
        max = f32::max(max, f32::cast_from(logits[row + e]));
    }
    let mut sum = 0.0f32;
    for e in 0..num_experts {
        sum += f32::exp(f32::cast_from(logits[row + e]) - max);
    }
    max + f32::ln(sum)
}

/// `sum_e n_e p_e` for one token: its probabilities weighted by the experts' routed pairs.
#[cube]
fn routed_load<F: Float, I: Int>(
    logits: &Array<F>,
    expert_counts: &Array<I>,
    row: usize,
    num_experts: usize,
    lse: f32,
) -> f32 {
    let mut load = 0.0f32;
    for e in 0..num_experts {
        let prob = f32::exp(f32::cast_from(logits[row + e]) - lse);
        load += f32::cast_from(expert_counts[e]) * prob;
    }
    load
}

/// `balance * E / N`, N the routed pairs over all experts (at least 1): the factor of the
/// balance term on `sum_e n_e p_e`.
#[cube]
fn balance_scale<I: Int>(expert_counts: &Array<I>, num_experts: usize, balance: f32) -> f32 {
    let mut pairs = 0.0f32;
    for e in 0..num_experts {
        pairs += f32::cast_from(expert_counts[e]);
    }
    balance * f32::cast_from(num_experts) / f32::max(pairs, 1.0)
}

/// `loss[0]` = the weighted auxiliary loss; one cube of `cube_units` (a power of two) units.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments, reason = "kernel signature")]
pub fn router_loss_kernel<F: Float, I: Int>(
    logits: &Array<F>,        // [T, E]
    expert_counts: &Array<I>, // [E]
    loss: &mut Array<F>,      // [1]
    num_tokens: usize,
    num_experts: usize,
    balance: f32,
    z: f32,
    #[comptime] cube_units: usize,
) {
    let scale = balance_scale::<I>(expert_counts, num_experts, balance);
    let mut partial = 0.0f32;
    let mut token = UNIT_POS as usize;
    while token < num_tokens {
        let row = token * num_experts;
        let lse = log_sum_exp::<F>(logits, row, num_experts);
        partial += scale * routed_load::<F, I>(logits, expert_counts, row, num_experts, lse)
            + z * lse * lse;
        token += cube_units;
    }

    let mut shared = SharedMemory::<f32>::new(cube_units);
    let local = UNIT_POS as usize;
    shared[local] = partial;
    sync_cube();
    let mut half = CUBE_DIM as usize / 2;
    while half > 0 {
        if local < half {
            shared[local] += shared[local + half];
        }
        sync_cube();
        half /= 2;
    }
    if local == 0 {
        loss[0] = F::cast_from(shared[0] / f32::cast_from(num_tokens));
    }
}

/// `d_logits = d_loss[0] * d loss / d logits`.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments, reason = "kernel signature")]
pub fn router_loss_grad_kernel<F: Float, I: Int>(
    logits: &Array<F>,        // [T, E]
    expert_counts: &Array<I>, // [E]
    d_loss: &Array<F>,        // [1]
    d_logits: &mut Array<F>,  // [T, E]
    num_tokens: usize,
    num_experts: usize,
    balance: f32,
    z: f32,
) {
    let scale = balance_scale::<I>(expert_counts, num_experts, balance);
    let per_token = f32::cast_from(d_loss[0]) / f32::cast_from(num_tokens);
    let stride = CUBE_COUNT * CUBE_DIM as usize;
    let mut token = ABSOLUTE_POS;
    while token < num_tokens {
        let row = token * num_experts;
        let lse = log_sum_exp::<F>(logits, row, num_experts);
        let load = routed_load::<F, I>(logits, expert_counts, row, num_experts, lse);
        for e in 0..num_experts {
            let prob = f32::exp(f32::cast_from(logits[row + e]) - lse);
            let pairs = f32::cast_from(expert_counts[e]);
            d_logits[row + e] =
                F::cast_from(per_token * prob * (scale * (pairs - load) + 2.0 * z * lse));
        }
        token += stride;
    }
}

/// `d_logits[t, e_k] = w_k (g_k - sum_j w_j g_j)` for the used slots, 0 for the other experts.
/// Slots whose expert id is outside `0..num_experts` (the unused, -1) are skipped.
#[cube(launch_unchecked)]
pub fn routing_weights_grad_kernel<F: Float, I: Int>(
    weights: &Array<F>,      // [T, slots]
    expert_ids: &Array<I>,   // [T, slots]
    d_weights: &Array<F>,    // [T, slots]
    d_logits: &mut Array<F>, // [T, E]
    num_tokens: usize,
    num_experts: usize,
    slots: usize,
) {
    let stride = CUBE_COUNT * CUBE_DIM as usize;
    let mut token = ABSOLUTE_POS;
    while token < num_tokens {
        let pairs = token * slots;
        let row = token * num_experts;
        let mut dot = 0.0f32;
        for k in 0..slots {
            let id = i32::cast_from(expert_ids[pairs + k]);
            if id >= 0 && (id as usize) < num_experts {
                dot += f32::cast_from(weights[pairs + k]) * f32::cast_from(d_weights[pairs + k]);
            }
        }
        for e in 0..num_experts {
            d_logits[row + e] = F::cast_from(0.0f32);
        }
        for k in 0..slots {
            let id = i32::cast_from(expert_ids[pairs + k]);
            if id >= 0 && (id as usize) < num_experts {
                let weight = f32::cast_from(weights[pairs + k]);
                let grad = f32::cast_from(d_weights[pairs + k]);
                d_logits[row + id as usize] = F::cast_from(weight * (grad - dot));
            }
        }
        token += stride;
    }
}
