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
use crate::routing::balance::BalanceMethod;
use crate::routing::bias_balance::{ExpertBias, expert_load};
use crate::routing::budget::{self, MeanKBudget};
use crate::routing::capacity::drop_overflow;
use crate::routing::expert_choice::route_expert_choice;
use crate::routing::router::Router;

/// What the routing step is built from: the fields of the same names in
/// [`MoeLayerConfig`](crate::MoeLayerConfig), which gives them with
/// [`control_settings`](crate::MoeLayerConfig::control_settings).
#[derive(Clone, Copy, Debug)]
pub struct ControlSettings {
    /// Number of experts E.
    pub num_experts: usize,
    /// The router's policy (the budget adapts its limit).
    pub routing: RoutingPolicy,
    /// Load balancing method.
    pub balance: BalanceMethod,
    /// Step of the selection bias (`balance = "bias"`).
    pub bias_update_rate: f64,
    /// Router input jitter in training; 0 is off.
    pub router_jitter: f64,
    /// Capacity with token dropping; `None`: no limit.
    pub capacity_factor: Option<f64>,
    /// Mean-k budget; `None`: the configured limit.
    pub target_mean_k: Option<f64>,
    /// Step of the budget controller.
    pub budget_gain: f64,
}

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
    /// The routing step `settings` describe, with a zero bias and the policy's initial limit.
    pub fn new(settings: &ControlSettings, device: &B::Device) -> Self {
        Self {
            bias: (settings.balance == BalanceMethod::Bias)
                .then(|| ExpertBias::new(settings.num_experts, settings.bias_update_rate, device)),
            budget: settings.target_mean_k.map(|target| {
                MeanKBudget::new(&settings.routing, target, settings.budget_gain, device)
            }),
            balance: settings.balance,
            router_jitter: settings.router_jitter,
            capacity_factor: settings.capacity_factor,
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
        let dtype = x.dtype();
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
        }
        .with_weights_in(dtype);
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

impl ControlSettings {
    /// Checks the settings (names as in the config file).
    pub fn validate(&self) -> Result<(), InvalidValue> {
        let finite_at_least_zero = |field: &str, value: f64| {
            (!(value >= 0.0 && value.is_finite()))
                .then(|| InvalidValue::new(field, value, "must be a finite number >= 0"))
        };
        if let Some(error) = finite_at_least_zero("bias_update_rate", self.bias_update_rate) {
            return Err(error);
        }
        if !(0.0..1.0).contains(&self.router_jitter) {
            return Err(InvalidValue::new(
                "router_jitter",
                self.router_jitter,
                "must be in [0, 1)",
            ));
        }
        if let Some(factor) = self.capacity_factor
            && !(factor > 0.0 && factor.is_finite())
        {
            return Err(InvalidValue::new(
                "capacity_factor",
                factor,
                "must be a finite number > 0 (leave it out for no capacity limit)",
            ));
        }
        if let Some(target) = self.target_mean_k {
            budget::validate(&self.routing, target, self.budget_gain)?;
        }
        if !self.routing.decides_per_token() {
            let conflict = match (self.balance, self.capacity_factor) {
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

    /// The routing features beyond the policy, in words, each after ", " (empty when all are off).
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(target) = self.target_mean_k {
            parts.push(format!("mean-k budget {target}"));
        }
        if self.balance != BalanceMethod::AuxLoss {
            parts.push(format!("balance {}", self.balance));
        }
        if let Some(factor) = self.capacity_factor {
            parts.push(format!("capacity {factor}"));
        }
        if self.router_jitter > 0.0 {
            parts.push(format!("jitter {}", self.router_jitter));
        }
        parts.iter().map(|p| format!(", {p}")).collect()
    }
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
