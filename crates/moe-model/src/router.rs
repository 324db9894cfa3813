//! The router: scores every expert for every token and applies the routing policy.

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::activation::softmax;
use burn::tensor::{Int, Tensor, backend::Backend};
use moe_kernels::{RoutingPolicy, UNUSED_SLOT};

use crate::backend_ext::MoeBackend;

/// The routing decision for a batch of tokens (the tensor form of
/// `moe_kernels::route::reference::RoutedTokens`).
#[derive(Clone, Debug)]
pub struct Routing<B: Backend> {
    /// Router logits. `[T, E]`
    pub logits: Tensor<B, 2>,
    /// Router probabilities, the softmax of the logits. `[T, E]`
    pub probs: Tensor<B, 2>,
    /// Chosen experts, most probable first; [`UNUSED_SLOT`] where the policy left a slot unused.
    /// `[T, K]`
    pub expert_ids: Tensor<B, 2, Int>,
    /// Renormalised weights of the chosen experts, 0 in unused slots. `[T, K]`
    pub weights: Tensor<B, 2>,
    /// Number of experts each token uses. `[T]`
    pub token_k: Tensor<B, 1, Int>,
}

/// Linear gate `d -> E` (no bias) followed by the routing policy.
#[derive(Module, Debug)]
pub struct Router<B: Backend> {
    /// The gate projection.
    pub gate: Linear<B>,
    #[module(skip)]
    policy: RoutingPolicy,
}

impl<B: Backend> Router<B> {
    /// A router over `num_experts` experts for rows of width `d_model`.
    pub fn new(
        d_model: usize,
        num_experts: usize,
        policy: RoutingPolicy,
        device: &B::Device,
    ) -> Self {
        Self {
            gate: LinearConfig::new(d_model, num_experts)
                .with_bias(false)
                .init(device),
            policy,
        }
    }

    /// The policy this router applies.
    pub fn policy(&self) -> RoutingPolicy {
        self.policy
    }
}

impl<B: MoeBackend> Router<B> {
    /// Scores the experts and applies the policy with the backend's routing (kernels on CubeCL).
    ///
    /// # Shapes
    /// - `x`: `[T, d]`
    pub fn forward(&self, x: Tensor<B, 2>) -> Routing<B> {
        B::moe_route(self.gate.forward(x), &self.policy)
    }
}

/// Applies `policy` to router `logits` with Burn tensor ops; differentiable in the weights.
///
/// # Shapes
/// - `logits`: `[T, E]`
pub fn route<B: Backend>(logits: Tensor<B, 2>, policy: &RoutingPolicy) -> Routing<B> {
    let [num_tokens, _] = logits.dims();
    let slots = policy.max_slots();
    let probs = softmax(logits.clone(), 1); // [T, E]
    let (top_probs, top_ids) = probs.clone().topk_with_indices(slots, 1); // [T, K]

    let used = match policy.mass_limit() {
        None => top_probs.ones_like().bool(),
        Some(limit) => {
            let sorted = top_probs.clone().detach();
            let mass_before = sorted.clone().cumsum(1) - sorted; // [T, K]
            // Slot 0 is always used: give it a mass below any limit.
            let mass_before = mass_before.slice_fill([0..num_tokens, 0..1], -1.0);
            mass_before.lower_elem(limit)
        }
    }; // [T, K]

    let kept = top_probs * used.clone().float(); // [T, K]
    let weights = kept.clone() / kept.sum_dim(1); // [T, K]
    let expert_ids = top_ids.mask_fill(used.clone().bool_not(), UNUSED_SLOT); // [T, K]
    let token_k = used.int().sum_dim(1).squeeze_dim(1); // [T]
    Routing {
        logits,
        probs,
        expert_ids,
        weights,
        token_k,
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Tensor, TensorData};
    use moe_kernels::route::reference;

    use super::*;
    use crate::test_support::{TestBackend, host_f64, host_i64, random_values, rng};

    /// Routes random logits with tensor ops and with the f64 reference; ids and k must match
    /// exactly, weights to f32 precision.
    fn check_against_reference(
        policy: RoutingPolicy,
        num_tokens: usize,
        num_experts: usize,
        seed: u64,
    ) {
        let device = Default::default();
        let logits = random_values(&mut rng(seed), num_tokens * num_experts, 4.0);
        let tensor = Tensor::<TestBackend, 2>::from_data(
            TensorData::new(logits.clone(), [num_tokens, num_experts]),
            &device,
        );
        let routing = route(tensor, &policy);
        let expected = reference::route(&logits, num_experts, &policy);

        let ids: Vec<i32> = host_i64(routing.expert_ids)
            .into_iter()
            .map(|v| v as i32)
            .collect();
        let token_k: Vec<usize> = host_i64(routing.token_k)
            .into_iter()
            .map(|v| v as usize)
            .collect();
        assert_eq!(ids, expected.expert_ids, "{policy}");
        assert_eq!(token_k, expected.token_k, "{policy}");
        for (got, want) in host_f64(routing.weights).iter().zip(&expected.weights) {
            assert!(
                (got - want).abs() < 1e-5,
                "{policy}: weight {got} vs {want}"
            );
        }
    }

    #[test]
    fn every_policy_matches_the_reference_on_random_logits() {
        let policies = [
            RoutingPolicy::TopK { k: 1 },
            RoutingPolicy::TopK { k: 2 },
            RoutingPolicy::TopK { k: 8 },
            RoutingPolicy::Threshold { tau: 0.0 },
            RoutingPolicy::Threshold { tau: 0.5 },
            RoutingPolicy::Threshold { tau: 0.9 },
            RoutingPolicy::Threshold { tau: 1.0 },
            RoutingPolicy::TopP { p: 0.5, max_k: 4 },
            RoutingPolicy::TopP { p: 0.9, max_k: 8 },
            RoutingPolicy::TopP { p: 1.0, max_k: 3 },
        ];
        for (seed, policy) in policies.into_iter().enumerate() {
            check_against_reference(policy, 257, 8, seed as u64);
        }
        check_against_reference(RoutingPolicy::Threshold { tau: 0.3 }, 64, 64, 99);
    }

    #[test]
    fn weights_of_every_token_sum_to_one_and_unused_slots_weigh_nothing() {
        let device = Default::default();
        let logits = random_values(&mut rng(5), 100 * 6, 3.0);
        let tensor =
            Tensor::<TestBackend, 2>::from_data(TensorData::new(logits, [100, 6]), &device);
        let routing = route(tensor, &RoutingPolicy::TopP { p: 0.7, max_k: 3 });
        let weights = host_f64(routing.weights);
        let ids = host_i64(routing.expert_ids);
        for (token_weights, token_ids) in weights.chunks(3).zip(ids.chunks(3)) {
            assert!((token_weights.iter().sum::<f64>() - 1.0).abs() < 1e-6);
            for (w, id) in token_weights.iter().zip(token_ids) {
                assert_eq!(*id == UNUSED_SLOT as i64, *w == 0.0);
            }
        }
    }
}
