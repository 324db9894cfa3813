//! Combine: `out[t, c] = sum over the token's used slots of weight * expert_rows[row, c]`.
//!
//! One unit per output element (grid-stride loop), so loads and stores are coalesced along the
//! model dimension; the slots are summed in slot order and a row's split-K blocks in block
//! order, so the result is deterministic (no atomics). Accumulates in f32. A row outside the
//! `num_rows` rows counts as an unused slot: a corrupt plan is never read out of bounds.

use cubecl::prelude::*;

/// Weighted sum of each token's expert output rows (each the sum of its `splits` blocks).
#[cube(launch_unchecked)]
#[allow(
    clippy::too_many_arguments,
    reason = "kernel arguments are buffers and sizes"
)]
pub fn combine_kernel<F: Float, E: Float, I: Int>(
    expert_rows: &Array<E>, // [splits, S, d] expert outputs (or partial sums), dispatch order
    weights: &Array<F>,     // [T, slots]
    row_of_pair: &Array<I>, // [T, slots] row of each pair, -1 if unused
    output: &mut Array<F>,  // [T, d]
    num_tokens: usize,
    num_rows: usize,
    d_model: usize,
    #[comptime] slots: usize,
    #[comptime] splits: usize,
) {
    let total = num_tokens * d_model;
    let stride = CUBE_COUNT * CUBE_DIM as usize;
    let block = num_rows * d_model;
    let rows_written = i32::cast_from(num_rows);
    let mut index = ABSOLUTE_POS;
    while index < total {
        let token = index / d_model;
        let column = index % d_model;
        let mut sum = f32::new(0.0);
        #[unroll]
        for s in 0..slots {
            let row = i32::cast_from(row_of_pair[token * slots + s]);
            if row >= 0 && row < rows_written {
                let weight = f32::cast_from(weights[token * slots + s]);
                let at = usize::cast_from(row) * d_model + column;
                let mut value = f32::new(0.0);
                #[unroll]
                for b in 0..splits {
                    value += f32::cast_from(expert_rows[b * block + at]);
                }
                sum += weight * value;
            }
        }
        output[index] = F::cast_from(sum);
        index += stride;
    }
}
