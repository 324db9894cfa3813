//! Mean-k budget controller for threshold and top-p routing: the user asks for a mean number of
//! experts per token and the policy's limit (tau or p) follows it during training, by
//! `limit += gain * (target - measured mean k)` after each step (an integral controller on the
//! per-batch mean k). The limit is stored with the model and frozen at inference, so the compute
//! budget is the one asked for, not whatever a fixed threshold drifts to as the router sharpens.

use burn::module::{Module, RunningState};
use burn::tensor::{ElementConversion, Int, Tensor, backend::Backend};
use moe_kernels::RoutingPolicy;

use crate::InvalidValue;

/// Lowest p the controller sets for top-p routing (p must stay above 0).
const MIN_TOP_P: f64 = 0.01;

/// The adapting limit of one layer's routing policy.
#[derive(Module, Debug)]
pub struct MeanKBudget<B: Backend> {
    /// The policy's current tau (threshold) or p (top-p). `[1]`
    pub limit: RunningState<Tensor<B, 1>>,
    #[module(skip)]
    target_mean_k: f64,
    #[module(skip)]
    gain: f64,
    #[module(skip)]
    range: (f64, f64),
}

impl<B: Backend> MeanKBudget<B> {
    /// A controller starting from the limit of `policy` (threshold or top-p).
    pub fn new(policy: &RoutingPolicy, target_mean_k: f64, gain: f64, device: &B::Device) -> Self {
        let initial = policy.mass_limit().unwrap_or(1.0);
        Self {
            limit: RunningState::new(Tensor::from_floats([initial as f32], device)),
            target_mean_k,
            gain,
            range: limit_range(policy),
        }
    }

    /// The limit now (one scalar read from the device).
    pub fn limit(&self) -> f64 {
        self.limit.value_sync().into_scalar().elem::<f64>()
    }

    /// `base` with its limit replaced by the controller's.
    pub fn policy(&self, base: RoutingPolicy) -> RoutingPolicy {
        with_limit(base, self.limit())
    }

    /// One controller step after a training step whose tokens used `token_k` experts (`[T]`).
    pub fn observe(&self, token_k: Tensor<B, 1, Int>) {
        let mean_k = token_k.float().mean(); // [1]
        let limit = self.limit.value_sync().to_device(&mean_k.device());
        let next = limit
            + mean_k
                .neg()
                .add_scalar(self.target_mean_k)
                .mul_scalar(self.gain);
        self.limit
            .update(next.clamp(self.range.0, self.range.1).detach());
    }
}

/// `policy` with its mass limit set to `limit` (tau for threshold, p for top-p).
pub fn with_limit(policy: RoutingPolicy, limit: f64) -> RoutingPolicy {
    match policy {
        RoutingPolicy::Threshold { .. } => RoutingPolicy::Threshold { tau: limit },
        RoutingPolicy::TopP { max_k, .. } => RoutingPolicy::TopP { p: limit, max_k },
        other => other,
    }
}

/// Values the controller may give the limit of `policy`.
fn limit_range(policy: &RoutingPolicy) -> (f64, f64) {
    match policy {
        RoutingPolicy::TopP { .. } => (MIN_TOP_P, 1.0),
        _ => (0.0, 1.0),
    }
}

/// Checks a mean-k target against the policy it steers: threshold reaches k in [1, 2], top-p in
/// [1, max_k]; the other policies have no limit to adapt.
pub fn validate(policy: &RoutingPolicy, target_mean_k: f64, gain: f64) -> Result<(), InvalidValue> {
    let most = match policy {
        RoutingPolicy::Threshold { .. } => 2,
        RoutingPolicy::TopP { max_k, .. } => *max_k,
        other => {
            return Err(InvalidValue::new(
                "target_mean_k",
                target_mean_k,
                format!("needs policy \"threshold\" or \"top_p\" (a limit to adapt), not {other}"),
            ));
        }
    };
    if !(target_mean_k >= 1.0 && target_mean_k <= most as f64) {
        return Err(InvalidValue::new(
            "target_mean_k",
            target_mean_k,
            format!("must be in [1, {most}] for {policy}"),
        ));
    }
    if !(gain > 0.0 && gain.is_finite()) {
        return Err(InvalidValue::new(
            "budget_gain",
            gain,
            "must be a finite number > 0",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use burn::tensor::TensorData;

    use super::*;
    use crate::test_support::TestBackend;

    fn token_k(values: &[i64]) -> Tensor<TestBackend, 1, Int> {
        Tensor::from_data(
            TensorData::new(values.to_vec(), [values.len()]),
            &Default::default(),
        )
    }

    #[test]
    fn the_limit_moves_by_gain_times_the_error_and_stays_in_range() {
        let device = Default::default();
        let policy = RoutingPolicy::Threshold { tau: 0.5 };
        let budget = MeanKBudget::<TestBackend>::new(&policy, 1.25, 0.5, &device);
        // Mean k 1.75 is 0.5 over the target: tau falls by 0.5 * 0.5.
        budget.observe(token_k(&[2, 2, 1, 2]));
        assert!((budget.limit() - 0.25).abs() < 1e-6, "{}", budget.limit());
        // Mean k 1.0 is 0.25 under it: tau rises by 0.125.
        budget.observe(token_k(&[1, 1, 1, 1]));
        assert!((budget.limit() - 0.375).abs() < 1e-6);
        assert_eq!(
            budget.policy(policy),
            RoutingPolicy::Threshold {
                tau: budget.limit()
            }
        );
        // A large error is clamped at the end of the range.
        for _ in 0..10 {
            budget.observe(token_k(&[2, 2, 2, 2]));
        }
        assert_eq!(budget.limit(), 0.0);

        let top_p = RoutingPolicy::TopP { p: 0.9, max_k: 4 };
        let budget = MeanKBudget::<TestBackend>::new(&top_p, 1.5, 1.0, &device);
        budget.observe(token_k(&[4, 4]));
        assert!((budget.limit() - MIN_TOP_P).abs() < 1e-6);
    }

    #[test]
    fn targets_outside_what_the_policy_can_reach_are_rejected() {
        let threshold = RoutingPolicy::Threshold { tau: 0.5 };
        assert!(validate(&threshold, 1.3, 0.02).is_ok());
        assert!(
            validate(&threshold, 2.5, 0.02)
                .unwrap_err()
                .to_string()
                .contains("[1, 2]")
        );
        assert!(validate(&RoutingPolicy::TopP { p: 0.5, max_k: 4 }, 3.5, 0.02).is_ok());
        assert!(validate(&RoutingPolicy::TopK { k: 2 }, 1.5, 0.02).is_err());
        assert!(validate(&threshold, 1.5, 0.0).unwrap_err().field == "budget_gain");
    }
}
