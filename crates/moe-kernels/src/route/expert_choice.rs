//! Expert-choice routing in plain Rust, f64: the specification the tensor-op path is tested
//! against. No kernel implements it (the route kernel decides per token; expert choice ranks the
//! tokens of the whole batch for each expert).

use std::cmp::Ordering;

use super::routed_tokens::{RoutedTokens, softmax};
use crate::{UNUSED_SLOT, expert_capacity};

/// Each expert takes the `C = expert_capacity(T, E, capacity_factor)` tokens with the highest
/// probability for it (equal probabilities: the lower token index first); each token then keeps
/// at most `max_k` of the experts that took it, most probable first (ties: lower expert index),
/// with weights renormalised over those. A token no expert took has k = 0 and weight 0.
pub fn reference(
    logits: &[f32],
    num_experts: usize,
    capacity_factor: f64,
    max_k: usize,
) -> RoutedTokens {
    assert!(
        num_experts > 0 && logits.len().is_multiple_of(num_experts),
        "logits must be [T, num_experts]"
    );
    let num_tokens = logits.len() / num_experts;
    let probs: Vec<Vec<f64>> = logits.chunks(num_experts).map(softmax).collect();
    let capacity = expert_capacity(num_tokens, num_experts, capacity_factor);

    let mut taken_by: Vec<Vec<usize>> = vec![Vec::new(); num_tokens];
    for expert in 0..num_experts {
        let mut tokens: Vec<usize> = (0..num_tokens).collect();
        tokens.sort_by(|&a, &b| descending(probs[a][expert], probs[b][expert]).then(a.cmp(&b)));
        for &token in tokens.iter().take(capacity) {
            taken_by[token].push(expert);
        }
    }

    let mut routed = RoutedTokens {
        slots: max_k,
        expert_ids: vec![UNUSED_SLOT; num_tokens * max_k],
        weights: vec![0.0; num_tokens * max_k],
        token_k: vec![0; num_tokens],
    };
    for (token, experts) in taken_by.iter_mut().enumerate() {
        let p = &probs[token];
        experts.sort_by(|&a, &b| descending(p[a], p[b]).then(a.cmp(&b)));
        experts.truncate(max_k);
        let mass: f64 = experts.iter().map(|&e| p[e]).sum();
        for (slot, &expert) in experts.iter().enumerate() {
            routed.expert_ids[token * max_k + slot] = expert as i32;
            routed.weights[token * max_k + slot] = p[expert] / mass;
        }
        routed.token_k[token] = experts.len();
    }
    routed
}

fn descending(a: f64, b: f64) -> Ordering {
    b.partial_cmp(&a).unwrap_or(Ordering::Equal)
}

#[cfg(test)]
mod tests {
    use super::reference;

    #[test]
    fn each_expert_takes_its_top_tokens_and_tokens_keep_their_best_experts() {
        // 4 tokens, 2 experts, capacity factor 1 -> C = ceil(1 * 4 / 2) = 2 tokens per expert.
        // p0 of tokens 0..4 = 0.881, 0.731, 0.047, 0.5: expert 0 takes tokens 0 and 1.
        // p1 = 0.119, 0.269, 0.953, 0.5: expert 1 takes tokens 2 and 3.
        let logits = [2.0, 0.0, 1.0, 0.0, -3.0, 0.0, 0.0, 0.0];
        let routed = reference(&logits, 2, 1.0, 2);
        assert_eq!(routed.expert_ids, vec![0, -1, 0, -1, 1, -1, 1, -1]);
        assert_eq!(routed.token_k, vec![1, 1, 1, 1]);
        assert_eq!(routed.weights, vec![1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0]);

        // Capacity factor 2 with E = 2: every expert takes every token; weights are the probs.
        let all = reference(&logits, 2, 2.0, 2);
        assert_eq!(all.token_k, vec![2; 4]);
        let p0 = 1.0 / (1.0 + (-2.0f64).exp());
        assert!((all.weights[0] - p0).abs() < 1e-12 && all.expert_ids[..2] == [0, 1]);
        // max_k = 1: each token keeps its most probable expert (token 3: a tie, expert 0).
        let capped = reference(&logits, 2, 2.0, 1);
        assert_eq!(capped.expert_ids, vec![0, 0, 1, 0]);
    }
}
