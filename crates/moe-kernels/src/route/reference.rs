//! Plain-Rust routing in f64: the specification every routing implementation is tested against.

use std::cmp::Ordering;

pub use super::routed_tokens::{RoutedTokens, softmax};
use crate::{RoutingPolicy, UNUSED_SLOT};

/// Routes every row of `logits` (`[T, num_experts]`, row-major): softmax, experts in descending
/// order (by logit, which is the probability order without ties from underflow; equal logits: the
/// lower expert index first), the policy's prefix, weights renormalised over that prefix.
pub fn route(logits: &[f32], num_experts: usize, policy: &RoutingPolicy) -> RoutedTokens {
    assert!(
        num_experts > 0 && logits.len().is_multiple_of(num_experts),
        "logits must be [T, num_experts]"
    );
    if let RoutingPolicy::ExpertChoice {
        capacity_factor,
        max_k,
    } = *policy
    {
        return super::expert_choice::reference(logits, num_experts, capacity_factor, max_k);
    }
    let slots = policy.max_slots();
    let num_tokens = logits.len() / num_experts;
    let mut routed = RoutedTokens {
        slots,
        expert_ids: vec![UNUSED_SLOT; num_tokens * slots],
        weights: vec![0.0; num_tokens * slots],
        token_k: vec![0; num_tokens],
    };
    for (token, row) in logits.chunks(num_experts).enumerate() {
        let probs = softmax(row);
        let mut order: Vec<usize> = (0..num_experts).collect();
        // `partial_cmp`, not `total_cmp`: -0.0 and 0.0 are the same logit (a tie).
        order.sort_by(|&a, &b| {
            row[b]
                .partial_cmp(&row[a])
                .unwrap_or(Ordering::Equal)
                .then(a.cmp(&b))
        });

        let mut mass = 0.0;
        let mut k = 0;
        while k < slots && policy.uses_slot(k, mass) {
            mass += probs[order[k]];
            k += 1;
        }
        for (slot, &expert) in order.iter().take(k).enumerate() {
            routed.expert_ids[token * slots + slot] = expert as i32;
            routed.weights[token * slots + slot] = probs[expert] / mass;
        }
        routed.token_k[token] = k;
    }
    routed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threshold_uses_one_expert_only_when_confident() {
        // Row 0: p ~ [0.84, 0.11, 0.04] -> confident; row 1: p ~ [0.42, 0.42, 0.15] -> two experts.
        let logits = [3.0, 1.0, 0.0, 1.0, 1.0, 0.0];
        let routed = route(&logits, 3, &RoutingPolicy::Threshold { tau: 0.6 });
        assert_eq!(routed.token_k, vec![1, 2]);
        assert_eq!(routed.expert_ids, vec![0, UNUSED_SLOT, 0, 1]);
        assert_eq!(routed.weights[0], 1.0);
        assert!((routed.weights[2] - 0.5).abs() < 1e-12 && (routed.weights[3] - 0.5).abs() < 1e-12);
    }

    #[test]
    fn ties_go_to_the_lower_expert_index() {
        let routed = route(&[2.0, 5.0, 5.0, 5.0], 4, &RoutingPolicy::TopK { k: 2 });
        assert_eq!(routed.expert_ids, vec![1, 2]);
    }

    #[test]
    fn top_p_stops_at_the_first_prefix_reaching_p() {
        // p ~ [0.665, 0.245, 0.090]: mass 0.665 < 0.8, then 0.910 >= 0.8 -> k = 2.
        let routed = route(
            &[2.0, 1.0, 0.0],
            3,
            &RoutingPolicy::TopP { p: 0.8, max_k: 3 },
        );
        assert_eq!(routed.token_k, vec![2]);
        let capped = route(
            &[2.0, 1.0, 0.0],
            3,
            &RoutingPolicy::TopP { p: 1.0, max_k: 2 },
        );
        assert_eq!(capped.token_k, vec![2]);
    }
}
