//! Expert-choice routing (Zhou et al. 2022) with Burn tensor ops: every expert takes the C tokens
//! of the batch that rank it highest (`moe_kernels::expert_capacity`), so load is balanced by
//! construction and confident tokens may get fewer experts than ambiguous ones. The weights are
//! the chosen experts' probabilities renormalised per token, as for every other policy.
//! `moe_kernels::route::expert_choice::reference` is the specification; no kernel covers it.

use burn::tensor::activation::softmax;
use burn::tensor::{IndexingUpdateOp, Int, Tensor, backend::Backend};
use moe_kernels::{UNUSED_SLOT, expert_capacity};

use crate::backend_ext::outputs::Routing;

/// Routes `logits` by expert choice; a token keeps at most `max_k` experts (its most probable).
///
/// # Shapes
/// - `logits`: `[T, E]`; returns ids and weights `[T, max_k]`, token_k `[T]`
pub fn route_expert_choice<B: Backend>(
    logits: Tensor<B, 2>,
    capacity_factor: f64,
    max_k: usize,
) -> Routing<B> {
    let [num_tokens, num_experts] = logits.dims();
    let device = logits.device();
    let probs = softmax(logits.clone(), 1); // [T, E]
    let capacity = expert_capacity(num_tokens, num_experts, capacity_factor);

    let by_expert = probs.clone().detach().transpose(); // [E, T]
    let (_, taken) = by_expert.topk_with_indices(capacity, 1); // [E, C]
    let chosen = Tensor::<B, 2>::zeros([num_experts, num_tokens], &device)
        .scatter(
            1,
            taken,
            Tensor::ones([num_experts, capacity], &device),
            IndexingUpdateOp::Add,
        )
        .transpose()
        .greater_elem(0.5); // [T, E]

    // Each token's chosen experts, most probable first; -1 marks the experts it was not given.
    let ranked = probs.clone().detach().mask_fill(chosen.bool_not(), -1.0); // [T, E]
    let (top, ids) = ranked.topk_with_indices(max_k, 1); // [T, max_k]
    let used = top.greater_equal_elem(0.0); // [T, max_k]
    let expert_ids = ids.mask_fill(used.clone().bool_not(), UNUSED_SLOT); // [T, max_k]
    let kept = probs
        .clone()
        .gather(1, expert_ids.clone().clamp_min(0))
        .mask_fill(used.clone().bool_not(), 0.0); // [T, max_k]
    let weights = kept.clone() / kept.sum_dim(1).clamp_min(f32::MIN_POSITIVE); // [T, max_k]
    let token_k: Tensor<B, 1, Int> = used.int().sum_dim(1).squeeze_dim(1); // [T]
    Routing {
        logits,
        expert_ids,
        weights,
        token_k,
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::TensorData;
    use moe_kernels::RoutingPolicy;
    use moe_kernels::route::reference;

    use super::*;
    use crate::test_support::{TestBackend, host_f64, host_i64, random_values, rng};

    #[test]
    fn matches_the_reference_and_gives_every_expert_exactly_c_tokens() {
        for (seed, tokens, experts, factor, max_k) in [
            (1, 64, 8, 1.0, 8),
            (2, 101, 8, 1.5, 8),
            (3, 37, 5, 2.0, 5),
            (4, 80, 8, 1.25, 2),
        ] {
            let logits = random_values(&mut rng(seed), tokens * experts, 3.0);
            let tensor = Tensor::<TestBackend, 2>::from_data(
                TensorData::new(logits.clone(), [tokens, experts]),
                &Default::default(),
            );
            let routing = route_expert_choice(tensor, factor, max_k);
            let policy = RoutingPolicy::ExpertChoice {
                capacity_factor: factor,
                max_k,
            };
            let expected = reference::route(&logits, experts, &policy);
            let ids = host_i64(routing.expert_ids);
            let got: Vec<i32> = ids.iter().map(|&v| v as i32).collect();
            assert_eq!(got, expected.expert_ids, "{policy}");
            let token_k: Vec<usize> = host_i64(routing.token_k)
                .iter()
                .map(|&k| k as usize)
                .collect();
            assert_eq!(token_k, expected.token_k, "{policy}");
            for (g, w) in host_f64(routing.weights).iter().zip(&expected.weights) {
                assert!((g - w).abs() < 1e-5, "{policy}: weight {g} vs {w}");
            }

            let capacity = (factor * tokens as f64 / experts as f64).ceil() as usize;
            if max_k == experts {
                for expert in 0..experts as i64 {
                    let taken = ids.iter().filter(|&&id| id == expert).count();
                    assert_eq!(taken, capacity, "{policy}: expert {expert}");
                }
                let mean_k = token_k.iter().sum::<usize>() as f64 / tokens as f64;
                assert!((mean_k - (capacity * experts) as f64 / tokens as f64).abs() < 1e-12);
            }
        }
    }
}
