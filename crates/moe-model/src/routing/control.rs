//! The routing step of an MoE layer around the policy: router jitter (training), the selection
//! bias of auxiliary-loss-free balancing, the mean-k budget's adaptive limit, expert choice, and
//! capacity dropping. [`MoeLayer::forward`](crate::MoeLayer::forward) calls [`RoutingControl::route`]
//! in place of the bare router and [`RoutingControl::loss_weights`] for the balancing loss's weights.
//!
//! Policies the route kernel covers (top-k, threshold, top-p, with or without bias and budget)
//! go through `MoeBackend::moe_route`; expert choice and capacity dropping run with tensor ops on
//! every backend, and a backend with routing kernels notes the fallback
//! (`backend_ext::note_fallback`: printed once per process, recorded for tests).

use burn::module::Module;
use burn::tensor::{Distribution, Int, Tensor, backend::Backend};
use moe_kernels::RoutingPolicy;

use crate::InvalidValue;
use crate::backend_ext::{LossWeights, MoeBackend, Routing, note_fallback};
use crate::balance::BalanceMethod;
use crate::bias_balance::{ExpertBias, expert_load};
use crate::budget::{self, MeanKBudget};
use crate::capacity::drop_overflow;
use crate::expert_choice::route_expert_choice;
use crate::moe::MoeLayerConfig;
use crate::router::Router;

/// Routing state and settings of one layer beyond its policy.
#[derive(Module, Debug)]
pub struct RoutingControl<B: Backend> {
    /// Selection bias (`balance = "bias"`).
    pub bias: Option<ExpertBias<B>>,
    /// Adaptive limit (`target_mean_k`).
    pub budget: Option<MeanKBudget<B>>,
    #[module(skip)]
    balance: BalanceMethod,
    #[module(skip)]
    router_jitter: f64,
    #[module(skip)]
    capacity_factor: Option<f64>,
}

impl<B: Backend> RoutingControl<B> {
    /// The routing step `config` describes, with a zero bias and the policy's initial limit.
    pub fn new(config: &MoeLayerConfig, device: &B::Device) -> Self {
        Self {
            bias: (config.balance == BalanceMethod::Bias)
                .then(|| ExpertBias::new(config.num_experts, config.bias_update_rate, device)),
            budget: config.target_mean_k.map(|target| {
                MeanKBudget::new(&config.routing, target, config.budget_gain, device)
            }),
            balance: config.balance,
            router_jitter: config.router_jitter,
            capacity_factor: config.capacity_factor,
        }
    }

    /// The policy in force: the router's, with the budget's current limit if there is one.
    pub fn policy(&self, router_policy: RoutingPolicy) -> RoutingPolicy {
        match &self.budget {
            Some(budget) => budget.policy(router_policy),
            None => router_policy,
        }
    }

    /// The budget's limit (tau or p) now, if the layer has a budget.
    pub fn limit(&self) -> Option<f64> {
        self.budget.as_ref().map(MeanKBudget::limit)
    }

    /// The weights of the router loss: `balance` for the Switch loss under `aux_loss` (zero
    /// under the other balance methods), `z` for the z-loss.
    pub fn loss_weights(&self, balance: f64, z: f64) -> LossWeights {
        LossWeights {
            balance: match self.balance {
                BalanceMethod::AuxLoss => balance,
                BalanceMethod::None | BalanceMethod::Bias => 0.0,
            },
            z,
        }
    }
}

impl<B: MoeBackend> RoutingControl<B> {
    /// Scores the experts and decides the routing; in training also steps the bias and the
    /// budget. Returns the routing (dropped pairs already removed) and the pairs each token lost
    /// to capacity.
    ///
    /// # Shapes
    /// - `x`: `[T, d]` -> routing `[T, K]`, dropped pairs `[T]`
    pub fn route(&self, router: &Router<B>, x: Tensor<B, 2>) -> (Routing<B>, Tensor<B, 1, Int>) {
        let device = x.device();
        let [num_tokens, _] = x.dims();
        let training = B::ad_enabled(&device);
        let x = match training && self.router_jitter > 0.0 {
            true => {
                let jitter =
                    Distribution::Uniform(1.0 - self.router_jitter, 1.0 + self.router_jitter);
                x.clone() * Tensor::random(x.shape(), jitter, &device) // [T, d]
            }
            false => x,
        };
        let logits = router.logits(x); // [T, E]
        let num_experts = logits.dims()[1];
        let policy = self.policy(router.policy());
        let routing = match (policy, &self.bias) {
            (
                RoutingPolicy::ExpertChoice {
                    capacity_factor,
                    max_k,
                },
                _,
            ) => {
                note_routing_fallback::<B>(EXPERT_CHOICE_FALLBACK);
                route_expert_choice(logits, capacity_factor, max_k)
            }
            (_, Some(bias)) => route_with_bias(logits, bias, &policy),
            (_, None) => B::moe_route(logits, &policy),
        };
        if training {
            if let Some(budget) = &self.budget {
                budget.observe(routing.token_k.clone());
            }
            if let Some(bias) = &self.bias {
                bias.update(expert_load(routing.expert_ids.clone(), num_experts));
            }
        }
        match self.capacity_factor {
            Some(factor) => {
                note_routing_fallback::<B>(CAPACITY_FALLBACK);
                drop_overflow(routing, factor)
            }
            None => (routing, Tensor::zeros([num_tokens], &device)),
        }
    }
}

/// Experts and k chosen by `policy` on the biased logits (the backend's routing, kernels on
/// CubeCL); weights from the unbiased probabilities of the chosen experts, renormalised.
fn route_with_bias<B: MoeBackend>(
    logits: Tensor<B, 2>,
    bias: &ExpertBias<B>,
    policy: &RoutingPolicy,
) -> Routing<B> {
    let decision = B::moe_route(bias.selection_logits(logits.clone()), policy);
    let weights = B::moe_routing_weights(logits.clone(), decision.expert_ids.clone()); // [T, K]
    Routing {
        logits,
        expert_ids: decision.expert_ids,
        weights,
        token_k: decision.token_k,
    }
}

/// Top-1 expert and router entropy (nats) of every token, for the routing metrics.
///
/// # Shapes
/// - `logits`: `[T, E]` -> `[T]`, `[T]`
pub fn router_summary<B: Backend>(logits: &Tensor<B, 2>) -> (Tensor<B, 1, Int>, Tensor<B, 1>) {
    let logits = logits.clone().detach();
    let top_expert = logits.clone().argmax(1).squeeze_dim(1); // [T]
    let probs = burn::tensor::activation::softmax(logits, 1);
    let entropy = (probs.clone() * probs.clamp_min(1e-30).log())
        .sum_dim(1)
        .squeeze_dim(1)
        .neg(); // [T]
    (top_expert, entropy)
}

/// Checks the routing-step settings of `config` (names as in the config file).
pub fn validate(config: &MoeLayerConfig) -> Result<(), InvalidValue> {
    let finite_at_least_zero = |field: &str, value: f64| {
        (!(value >= 0.0 && value.is_finite()))
            .then(|| InvalidValue::new(field, value, "must be a finite number >= 0"))
    };
    if let Some(error) = finite_at_least_zero("bias_update_rate", config.bias_update_rate) {
        return Err(error);
    }
    if !(0.0..1.0).contains(&config.router_jitter) {
        return Err(InvalidValue::new(
            "router_jitter",
            config.router_jitter,
            "must be in [0, 1)",
        ));
    }
    if let Some(factor) = config.capacity_factor
        && !(factor > 0.0 && factor.is_finite())
    {
        return Err(InvalidValue::new(
            "capacity_factor",
            factor,
            "must be a finite number > 0 (leave it out for no capacity limit)",
        ));
    }
    if config.shared_experts > 0 && config.shared_expert_width == 0 {
        return Err(InvalidValue::new("shared_expert_width", 0, "must be >= 1"));
    }
    if let Some(target) = config.target_mean_k {
        budget::validate(&config.routing, target, config.budget_gain)?;
    }
    if !config.routing.decides_per_token() {
        let conflict = match (config.balance, config.capacity_factor) {
            (BalanceMethod::Bias, _) => Some(("balance", "\"bias\"".to_string())),
            (_, Some(factor)) => Some(("capacity_factor", factor.to_string())),
            _ => None,
        };
        if let Some((field, value)) = conflict {
            return Err(InvalidValue::new(
                field,
                value,
                "does not apply to expert choice, which gives every expert exactly its capacity",
            ));
        }
    }
    Ok(())
}

/// The routing features of `config` beyond the policy, in words (empty when all are off).
pub fn describe(config: &MoeLayerConfig) -> String {
    let mut parts = Vec::new();
    if let Some(target) = config.target_mean_k {
        parts.push(format!("mean-k budget {target}"));
    }
    if config.balance != BalanceMethod::AuxLoss {
        parts.push(format!("balance {}", config.balance));
    }
    if let Some(factor) = config.capacity_factor {
        parts.push(format!("capacity {factor}"));
    }
    if config.shared_experts > 0 {
        parts.push(format!(
            "{} shared F={}",
            config.shared_experts, config.shared_expert_width
        ));
    }
    if config.router_jitter > 0.0 {
        parts.push(format!("jitter {}", config.router_jitter));
    }
    parts.iter().map(|p| format!(", {p}")).collect()
}

/// Why expert choice runs with tensor ops on a backend with routing kernels.
pub const EXPERT_CHOICE_FALLBACK: &str =
    "expert choice ranks tokens across the batch; the route kernel decides per token";
/// Why capacity dropping runs with tensor ops on a backend with routing kernels.
pub const CAPACITY_FALLBACK: &str = "no kernel drops the pairs over an expert's capacity";

/// On a backend with routing kernels, notes that a routing step runs with tensor ops instead.
fn note_routing_fallback<B: MoeBackend>(reason: &str) {
    if B::ROUTING_KERNELS {
        note_fallback("route", reason.to_string());
    }
}

#[cfg(test)]
mod tests {
    use burn::backend::Autodiff;
    use burn::module::Param;
    use burn::tensor::{Tensor, TensorData};

    use super::*;
    use crate::moe::MoeLayer;
    use crate::test_support::{TestBackend, host_i64, random_values, rng};

    type Train = Autodiff<TestBackend>;

    /// Coefficient of variation of the loads of a routing on inference.
    fn load_cv(counts: &[i64]) -> f64 {
        let n = counts.len() as f64;
        let mean = counts.iter().sum::<i64>() as f64 / n;
        let var = counts
            .iter()
            .map(|&c| (c as f64 - mean).powi(2))
            .sum::<f64>()
            / n;
        var.sqrt() / mean
    }

    /// A router whose gate favours expert 0 for most inputs starts with a skewed load; stepping
    /// the bias (training forwards, no optimiser) makes it markedly more even, while the same
    /// steps without the bias method change nothing.
    #[test]
    fn the_bias_method_reduces_load_cv_on_a_skewed_router() {
        let (d, experts, tokens) = (8, 4, 256);
        let device = Default::default();
        let mut gate = random_values(&mut rng(21), d * experts, 0.3);
        // Column 0 of the gate gets a large weight on feature 0, which inputs keep positive.
        gate[0] = 3.0;
        let mut inputs = random_values(&mut rng(22), tokens * d, 1.0);
        inputs
            .iter_mut()
            .step_by(d)
            .for_each(|v| *v = v.abs() + 0.5);

        let cv_after = |balance: BalanceMethod| {
            let config = MoeLayerConfig::new()
                .with_num_experts(experts)
                .with_expert_width(4)
                .with_routing(RoutingPolicy::Threshold { tau: 0.5 })
                .with_balance(balance)
                .with_bias_update_rate(0.05);
            let mut layer = config.init::<Train>(d, &device);
            layer.router.gate.weight = Param::from_tensor(Tensor::from_data(
                TensorData::new(gate.clone(), [d, experts]),
                &device,
            ));
            let x = || {
                Tensor::<Train, 2>::from_data(TensorData::new(inputs.clone(), [tokens, d]), &device)
            };
            let inference = |layer: &MoeLayer<Train>| {
                use burn::module::AutodiffModule;
                let valid = layer.valid();
                let out = valid.forward(Tensor::from_data(
                    TensorData::new(inputs.clone(), [tokens, d]),
                    &device,
                ));
                load_cv(&host_i64(out.stats.expert_counts))
            };
            let before = inference(&layer);
            for _ in 0..60 {
                drop(layer.forward(x()));
            }
            (before, inference(&layer))
        };
        let (skewed, balanced) = cv_after(BalanceMethod::Bias);
        assert!(skewed > 0.8, "the task must start skewed: CV {skewed}");
        assert!(balanced < 0.3 * skewed, "bias: CV {skewed} -> {balanced}");
        let (before, after) = cv_after(BalanceMethod::None);
        assert_eq!(before, after, "without bias the load must not move");
    }
}
