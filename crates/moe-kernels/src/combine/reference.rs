//! Plain-Rust combine: each token's output is the weighted sum of its experts' output rows.

use crate::UNUSED_SLOT;

/// `out[t] = sum over used slots s of weights[t, s] * expert_rows[row_of_pair[t, s]]`, in slot
/// order (the order a deterministic kernel must also use).
///
/// Shapes: `expert_rows` `[S, d]`, `weights` and `row_of_pair` `[T, slots]`; returns `[T, d]`.
pub fn combine(
    expert_rows: &[f32],
    d: usize,
    weights: &[f32],
    row_of_pair: &[i32],
    slots: usize,
) -> Vec<f64> {
    let num_tokens = weights.len() / slots;
    let mut out = vec![0.0; num_tokens * d];
    for t in 0..num_tokens {
        for s in 0..slots {
            let row = row_of_pair[t * slots + s];
            if row == UNUSED_SLOT {
                continue;
            }
            let weight = weights[t * slots + s] as f64;
            let source = &expert_rows[row as usize * d..(row as usize + 1) * d];
            for (acc, &v) in out[t * d..(t + 1) * d].iter_mut().zip(source) {
                *acc += weight * v as f64;
            }
        }
    }
    out
}
