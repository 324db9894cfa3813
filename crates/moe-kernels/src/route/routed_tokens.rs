//! The routing decision of a batch in plain Rust, and the f64 softmax it starts from: what the
//! per-token reference (`reference.rs`) and the expert-choice reference (`expert_choice.rs`) both
//! produce.

/// The routing decision for a batch of tokens, in `[T, slots]` row-major layout.
#[derive(Clone, Debug, PartialEq)]
pub struct RoutedTokens {
    /// Slots per token (`policy.max_slots()`).
    pub slots: usize,
    /// Chosen expert of each slot, most probable first; [`UNUSED_SLOT`](crate::UNUSED_SLOT) where
    /// unused. `[T, slots]`
    pub expert_ids: Vec<i32>,
    /// Renormalised weight of each slot (0 where unused); a token's weights sum to 1. `[T, slots]`
    pub weights: Vec<f64>,
    /// Number of experts each token uses. `[T]`
    pub token_k: Vec<usize>,
}

/// Numerically stable softmax of one row, in f64.
pub fn softmax(row: &[f32]) -> Vec<f64> {
    let max = row
        .iter()
        .map(|&v| v as f64)
        .fold(f64::NEG_INFINITY, f64::max);
    let exps: Vec<f64> = row.iter().map(|&v| (v as f64 - max).exp()).collect();
    let sum: f64 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}
