//! Plain-Rust router loss and gradients, in f64: the specification of the kernels.
//!
//! For one token with logits `l` over E experts, `p = softmax(l)` and `lse = log sum_e exp(l_e)`.
//! With `n_e` the routed pairs of expert e and `N = max(sum_e n_e, 1)`, the loss is the mean over
//! the T tokens of `c_t = balance * E / N * sum_e n_e p_e + z * lse^2`: the Switch loss
//! `E * sum_e f_e P_e` (`f_e = n_e / N`, `P_e` the mean probability) and the z-loss, weighted.

use crate::UNUSED_SLOT;

/// One token's `lse`, probabilities `p` and routed load `sum_e n_e p_e`.
struct TokenTerms {
    lse: f64,
    probs: Vec<f64>,
    load: f64,
}

/// The terms of every token of `logits` (`[T, E]`), and the balance factor `balance * E / N`.
fn token_terms(logits: &[f32], expert_counts: &[i32], balance: f64) -> (Vec<TokenTerms>, f64) {
    let num_experts = expert_counts.len();
    // Routed pairs over all experts, at least 1 (no pairs: the balance term is 0).
    let pairs = (expert_counts.iter().map(|&n| n as f64).sum::<f64>()).max(1.0);
    let terms = logits
        .chunks(num_experts)
        .map(|row| {
            let max = row.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
            let sum: f64 = row.iter().map(|&v| (v as f64 - max).exp()).sum();
            let lse = max + sum.ln();
            let probs: Vec<f64> = row.iter().map(|&v| (v as f64 - lse).exp()).collect();
            let load = probs
                .iter()
                .zip(expert_counts)
                .map(|(p, &n)| p * n as f64)
                .sum();
            TokenTerms { lse, probs, load }
        })
        .collect();
    (terms, balance * num_experts as f64 / pairs)
}

/// The weighted auxiliary loss of `logits` (`[T, E]`) routed as `expert_counts` (`[E]`).
pub fn router_loss(logits: &[f32], expert_counts: &[i32], balance: f64, z: f64) -> f64 {
    let (terms, scale) = token_terms(logits, expert_counts, balance);
    let total: f64 = terms
        .iter()
        .map(|t| scale * t.load + z * t.lse * t.lse)
        .sum();
    total / terms.len() as f64
}

/// `d_loss * d router_loss / d logits`, `[T, E]`.
pub fn router_loss_grad(
    logits: &[f32],
    expert_counts: &[i32],
    balance: f64,
    z: f64,
    d_loss: f64,
) -> Vec<f64> {
    let (terms, scale) = token_terms(logits, expert_counts, balance);
    let per_token = d_loss / terms.len() as f64;
    terms
        .iter()
        .flat_map(|t| {
            t.probs
                .iter()
                .zip(expert_counts)
                .map(move |(p, &n)| per_token * p * (scale * (n as f64 - t.load) + 2.0 * z * t.lse))
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
