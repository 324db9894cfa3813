//! Token-choice capacity with token dropping (Switch, GShard): each expert takes at most
//! `C = ceil(capacity_factor * S / E)` of the S routed pairs of a batch; the pairs over that, the
//! lowest-scored ones (by router probability), are dropped. A dropped pair contributes nothing
//! (its slot becomes unused, weight 0, the others are not renormalised) and its token keeps its
//! other experts; a token that loses every expert passes through the residual only.
//!
//! Tensor ops (and one scalar read: the routed-pair count sets C); no kernel covers it (the
//! dispatch kernels then run on the kept pairs).

use burn::tensor::{ElementConversion, IndexingUpdateOp, Int, Tensor, backend::Backend};
use moe_kernels::UNUSED_SLOT;

use crate::backend_ext::Routing;

/// Largest number of pairs each expert takes when `routed_pairs` pairs are spread over
/// `num_experts` experts with `capacity_factor` headroom (at least 1).
pub fn pair_capacity(routed_pairs: usize, num_experts: usize, capacity_factor: f64) -> usize {
    ((capacity_factor * routed_pairs as f64 / num_experts as f64).ceil() as usize).max(1)
}

/// `routing` with the overflow pairs of every expert dropped, and the pairs each token lost.
///
/// # Shapes
/// - `routing.expert_ids`, `routing.weights`: `[T, K]`
/// - returns the routing (same shapes) and dropped pairs per token `[T]`
pub fn drop_overflow<B: Backend>(
    routing: Routing<B>,
    capacity_factor: f64,
) -> (Routing<B>, Tensor<B, 1, Int>) {
    let [num_tokens, slots] = routing.expert_ids.dims();
    let num_experts = routing.logits.dims()[1];
    let num_pairs = num_tokens * slots;
    let device = routing.logits.device();

    let used = routing.expert_ids.clone().greater_equal_elem(0); // [T, K]
    let routed_pairs: usize = used.clone().int().sum().into_scalar().elem::<i64>() as usize;
    let capacity = pair_capacity(routed_pairs, num_experts, capacity_factor).min(num_pairs);

    // Score of each pair, -1 for unused slots (probabilities are >= 0).
    let ids = routing.expert_ids.clone().clamp_min(0); // [T, K]
    let scores = routing.probs().gather(1, ids.clone()); // [T, K]
    let scores = scores
        .mask_fill(used.clone().bool_not(), -1.0)
        .reshape([1, num_pairs]);
    // Row e holds the scores of expert e's pairs, -1 elsewhere; its top C are the kept pairs.
    let experts = Tensor::<B, 1, Int>::arange(0..num_experts as i64, &device)
        .reshape([num_experts, 1])
        .expand([num_experts, num_pairs]);
    let of_expert = ids
        .reshape([1, num_pairs])
        .expand([num_experts, num_pairs])
        .equal(experts); // [E, P]
    let table = scores
        .expand([num_experts, num_pairs])
        .mask_fill(of_expert.bool_not(), -1.0); // [E, P]
    let (top_scores, top_pairs) = table.topk_with_indices(capacity, 1); // [E, C]
    let real = top_scores.greater_equal_elem(0.0).float(); // [E, C]: padding picks are not kept
    let kept = Tensor::<B, 2>::zeros([num_experts, num_pairs], &device)
        .scatter(1, top_pairs, real, IndexingUpdateOp::Add)
        .sum_dim(0)
        .reshape([num_tokens, slots])
        .greater_elem(0.5); // [T, K]
    let dropped = used.clone().bool_and(kept.clone().bool_not()); // [T, K]

    let dropped_per_token = dropped.clone().int().sum_dim(1).squeeze_dim(1); // [T]
    let routing = Routing {
        expert_ids: routing.expert_ids.mask_fill(dropped.clone(), UNUSED_SLOT),
        weights: routing.weights.mask_fill(dropped, 0.0),
        token_k: routing.token_k - dropped_per_token.clone(),
        logits: routing.logits,
    };
    (routing, dropped_per_token)
}

#[cfg(test)]
mod tests {
    use burn::tensor::TensorData;
    use burn::tensor::activation::softmax;

    use super::*;
    use crate::RoutingPolicy;
    use crate::backend_ext::tensor_ops::route;
    use crate::test_support::{TestBackend, host_f64, host_i64, random_values, rng};

    fn routing_of(
        logits: &[f32],
        num_experts: usize,
        policy: RoutingPolicy,
    ) -> Routing<TestBackend> {
        let tokens = logits.len() / num_experts;
        let tensor = Tensor::<TestBackend, 2>::from_data(
            TensorData::new(logits.to_vec(), [tokens, num_experts]),
            &Default::default(),
        );
        route(tensor, &policy)
    }

    #[test]
    fn a_hand_computed_overflow_drops_the_lowest_scored_pairs() {
        // 4 tokens, top-1 over 2 experts; every token prefers expert 0 with probability
        // sigmoid(logit gap): 0.73, 0.95, 0.88, 0.62. S = 4, capacity factor 1 -> C = 2: expert 0
        // keeps tokens 1 and 2 (0.95, 0.88) and drops tokens 0 and 3.
        let logits = [1.0, 0.0, 3.0, 0.0, 2.0, 0.0, 0.5, 0.0];
        let routing = routing_of(&logits, 2, RoutingPolicy::TopK { k: 1 });
        let (kept, dropped) = drop_overflow(routing, 1.0);
        assert_eq!(host_i64(kept.expert_ids), vec![-1, 0, 0, -1]);
        assert_eq!(host_i64(kept.token_k), vec![0, 1, 1, 0]);
        assert_eq!(host_i64(dropped), vec![1, 0, 0, 1]);
        assert_eq!(host_f64(kept.weights), vec![0.0, 1.0, 1.0, 0.0]);

        // Top-2 with capacity factor 1: S = 8, C = 4, no expert is over it: nothing dropped.
        let routing = routing_of(&logits, 2, RoutingPolicy::TopK { k: 2 });
        let (_, dropped) = drop_overflow(routing, 1.0);
        assert_eq!(host_i64(dropped), vec![0; 4]);
    }

    /// On random routings: per expert, exactly max(0, n_e - C) pairs are dropped, and every
    /// dropped pair scores no higher than every kept pair of the same expert; tokens keep the
    /// rest of their experts and weights.
    #[test]
    fn random_routings_lose_exactly_their_overflow_pairs() {
        for (seed, policy, factor) in [
            (1, RoutingPolicy::TopK { k: 2 }, 1.0),
            (2, RoutingPolicy::Threshold { tau: 0.4 }, 1.25),
            (3, RoutingPolicy::TopP { p: 0.8, max_k: 3 }, 0.8),
        ] {
            let (tokens, experts) = (203, 6);
            // Skewed logits: expert 0 is favoured, so it overflows.
            let mut logits = random_values(&mut rng(seed), tokens * experts, 2.0);
            logits.iter_mut().step_by(experts).for_each(|l| *l += 1.5);
            let routing = routing_of(&logits, experts, policy);
            let slots = policy.max_slots();
            let ids = host_i64(routing.expert_ids.clone());
            let weights = host_f64(routing.weights.clone());
            let probs = host_f64(softmax(
                Tensor::<TestBackend, 2>::from_data(
                    TensorData::new(logits.clone(), [tokens, experts]),
                    &Default::default(),
                ),
                1,
            ));
            let (kept, dropped) = drop_overflow(routing, factor);
            let kept_ids = host_i64(kept.expert_ids);
            let kept_weights = host_f64(kept.weights);
            let dropped = host_i64(dropped);

            let routed = ids.iter().filter(|&&id| id >= 0).count();
            let capacity = (factor * routed as f64 / experts as f64).ceil() as usize;
            let mut total_dropped = 0;
            for expert in 0..experts as i64 {
                let pairs: Vec<usize> = (0..ids.len()).filter(|&p| ids[p] == expert).collect();
                let score = |p: usize| probs[(p / slots) * experts + expert as usize];
                let (kept_pairs, lost): (Vec<usize>, Vec<usize>) =
                    pairs.iter().partition(|&&p| kept_ids[p] == expert);
                assert_eq!(
                    lost.len(),
                    pairs.len().saturating_sub(capacity),
                    "{policy} e{expert}"
                );
                total_dropped += lost.len();
                let lowest_kept = kept_pairs.iter().map(|&p| score(p)).fold(1.0, f64::min);
                assert!(
                    lost.iter().all(|&p| score(p) <= lowest_kept),
                    "{policy} e{expert}"
                );
                for &p in &kept_pairs {
                    assert_eq!(kept_weights[p], weights[p]);
                }
                for &p in &lost {
                    assert_eq!((kept_ids[p], kept_weights[p]), (-1, 0.0));
                }
            }
            assert!(
                total_dropped > 0,
                "{policy}: the skew must overflow expert 0"
            );
            assert_eq!(dropped.iter().sum::<i64>() as usize, total_dropped);
            for token in 0..tokens {
                let lost = (0..slots)
                    .filter(|&s| ids[token * slots + s] >= 0 && kept_ids[token * slots + s] < 0)
                    .count();
                assert_eq!(dropped[token] as usize, lost);
            }
        }
    }
}
