//! Plain-Rust specification of the router logits, in f64.

/// `logits[t][e] = sum_k x[t][k] * weight[k][e]`: `x` is `[T, d]`, `weight` `[d, E]` (Burn's
/// `Linear` layout), both row-major; the result is `[T, E]`.
pub fn router_logits(x: &[f32], weight: &[f32], d_model: usize, num_experts: usize) -> Vec<f64> {
    let num_tokens = x.len() / d_model;
    let mut logits = vec![0.0; num_tokens * num_experts];
    for t in 0..num_tokens {
        for k in 0..d_model {
            let value = x[t * d_model + k] as f64;
            for e in 0..num_experts {
                logits[t * num_experts + e] += value * weight[k * num_experts + e] as f64;
            }
        }
    }
    logits
}
