//! Plain-Rust router loss and gradients, in f64: the specification of the kernels.
//!
//! For one token with logits `l` over E experts, `p = softmax(l)` and `lse = log sum_e exp(l_e)`.
//! With `n_e` the routed pairs of expert e and `N = max(sum_e n_e, 1)`, the loss is the mean over
//! the T tokens of `c_t = balance * E / N * sum_e n_e p_e + z * lse^2`: the Switch loss
//! `E * sum_e f_e P_e` (`f_e = n_e / N`, `P_e` the mean probability) and the z-loss, weighted.

use crate::UNUSED_SLOT;

/// `log sum_e exp(row_e)` and the softmax of `row`.
fn softmax_f64(row: &[f32]) -> (f64, Vec<f64>) {
    let max = row.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
    let sum: f64 = row.iter().map(|&v| (v as f64 - max).exp()).sum();
    let lse = max + sum.ln();
    (lse, row.iter().map(|&v| (v as f64 - lse).exp()).collect())
}

/// Routed pairs over all experts, at least 1 (no pairs: the balance term is 0).
fn total_pairs(expert_counts: &[i32]) -> f64 {
    (expert_counts.iter().map(|&n| n as f64).sum::<f64>()).max(1.0)
}

/// The weighted auxiliary loss of `logits` (`[T, E]`) routed as `expert_counts` (`[E]`).
pub fn router_loss(logits: &[f32], expert_counts: &[i32], balance: f64, z: f64) -> f64 {
    let num_experts = expert_counts.len();
    let scale = balance * num_experts as f64 / total_pairs(expert_counts);
    let rows = logits.chunks(num_experts);
    let num_tokens = rows.len() as f64;
    rows.map(|row| {
        let (lse, probs) = softmax_f64(row);
        let load: f64 = probs
            .iter()
            .zip(expert_counts)
            .map(|(p, &n)| p * n as f64)
            .sum();
        scale * load + z * lse * lse
    })
    .sum::<f64>()
        / num_tokens
}

/// `d_loss * d router_loss / d logits`, `[T, E]`.
pub fn router_loss_grad(
    logits: &[f32],
    expert_counts: &[i32],
    balance: f64,
    z: f64,
    d_loss: f64,
) -> Vec<f64> {
    let num_experts = expert_counts.len();
    let scale = balance * num_experts as f64 / total_pairs(expert_counts);
    let rows = logits.chunks(num_experts);
    let per_token = d_loss / rows.len() as f64;
    rows.flat_map(|row| {
        let (lse, probs) = softmax_f64(row);
        let load: f64 = probs
            .iter()
            .zip(expert_counts)
            .map(|(p, &n)| p * n as f64)
            .sum();
        probs
            .into_iter()
            .zip(expert_counts)
            .map(move |(p, &n)| per_token * p * (scale * (n as f64 - load) + 2.0 * z * lse))
            .collect::<Vec<_>>()
    })
    .collect()
}

/// The gradient with respect to the logits (`[T, E]`) of routing weights that are the softmax of
/// each token's chosen logits (the renormalised probabilities), from the weights' gradient:
/// `d_logits[t, e_k] = w_k (g_k - sum_j w_j g_j)` for every used slot k, 0 elsewhere.
///
/// Shapes: `weights`, `expert_ids` (-1 unused) and `d_weights` `[T, slots]`.
pub fn routing_weights_grad(
    weights: &[f32],
    expert_ids: &[i32],
    d_weights: &[f32],
    slots: usize,
    num_experts: usize,
) -> Vec<f64> {
    let num_tokens = weights.len() / slots;
    let mut d_logits = vec![0.0; num_tokens * num_experts];
    for t in 0..num_tokens {
        let pairs = t * slots..(t + 1) * slots;
        let dot: f64 = pairs
            .clone()
            .filter(|&i| expert_ids[i] != UNUSED_SLOT)
            .map(|i| weights[i] as f64 * d_weights[i] as f64)
            .sum();
        for i in pairs.filter(|&i| expert_ids[i] != UNUSED_SLOT) {
            d_logits[t * num_experts + expert_ids[i] as usize] =
                weights[i] as f64 * (d_weights[i] as f64 - dot);
        }
    }
    d_logits
}
