//! Combine: `out[t, c] = sum over the token's used slots of weight * expert_rows[row, c]`.
//!
//! One unit per output element (grid-stride loop), so loads and stores are coalesced along the
//! model dimension; the slots are summed in slot order, so the result is deterministic (no
//! atomics). Accumulates in f32.

use cubecl::prelude::*;

/// Weighted sum of each token's expert output rows.
#[cube(launch_unchecked)]
pub fn combine_kernel<F: Float, I: Int>(
    expert_rows: &Array<F>, // [S, d] expert outputs, rows in dispatch order
    weights: &Array<F>,     // [T, slots]
    row_of_pair: &Array<I>, // [T, slots] row of each pair, -1 if unused
    output: &mut Array<F>,  // [T, d]
    num_tokens: usize,
    d_model: usize,
    #[comptime] slots: usize,
) {
    let total = num_tokens * d_model;
    let stride = CUBE_COUNT * CUBE_DIM as usize;
    let mut index = ABSOLUTE_POS;
    while index < total {
        let token = index / d_model;
        let column = index % d_model;
        let mut sum = f32::new(0.0);
        #[unroll]
        for s in 0..slots {
            let row = i32::cast_from(row_of_pair[token * slots + s]);
            if row >= 0 {
                let weight = f32::cast_from(weights[token * slots + s]);
                sum +=
                    weight * f32::cast_from(expert_rows[usize::cast_from(row) * d_model + column]);
            }
        }
        output[index] = F::cast_from(sum);
        index += stride;
    }
}
