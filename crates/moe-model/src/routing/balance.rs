//! Auxiliary router losses that keep experts used evenly and router logits small.

use burn::tensor::{Int, Tensor, backend::Backend};
use serde::{Deserialize, Serialize};

/// Switch Transformer load-balancing loss `E * sum_e f_e * P_e`, where `f_e` is the fraction of
/// routed pairs sent to expert e (not differentiated) and `P_e` its mean router probability.
/// Equals 1 when both are uniform.
///
/// # Shapes
/// - `probs`: `[T, E]`, `expert_counts`: `[E]` (rows routed to each expert, on the device: no
///   host read)
pub fn load_balancing_loss<B: Backend>(
    probs: Tensor<B, 2>,
    expert_counts: Tensor<B, 1, Int>,
) -> Tensor<B, 1> {
    let [num_experts] = expert_counts.dims();
    let counts = expert_counts.float(); // [E]
    let fractions = counts.clone() / counts.sum().clamp_min(1.0); // [E]; no pairs: 0
    let mean_probs = probs.mean_dim(0).squeeze_dim(0); // [E]
    (fractions * mean_probs)
        .sum()
        .mul_scalar(num_experts as f32)
}

/// Router z-loss (ST-MoE): mean over tokens of `logsumexp(logits)^2`; penalises large logits.
///
/// # Shapes
/// - `logits`: `[T, E]`
pub fn router_z_loss<B: Backend>(logits: Tensor<B, 2>) -> Tensor<B, 1> {
    log_sum_exp(logits).powi_scalar(2).mean()
}

/// `log sum_e exp(logits[t, e])` of every token, stable for large logits.
///
/// # Shapes
/// - `logits`: `[T, E]` -> `[T, 1]`
pub fn log_sum_exp<B: Backend>(logits: Tensor<B, 2>) -> Tensor<B, 2> {
    let max = logits.clone().max_dim(1).detach(); // [T, 1]
    (logits - max.clone()).exp().sum_dim(1).log() + max
}

/// How a layer keeps its experts evenly loaded; `balance = "..."` in config files.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BalanceMethod {
    /// Nothing: the router is free to overload experts.
    None,
    /// The Switch Transformer loss [`load_balancing_loss`], weighted by `balance_loss_coef`.
    #[default]
    AuxLoss,
    /// Auxiliary-loss-free (DeepSeek-V3): a per-expert bias on the selection scores, stepped
    /// toward equal load after every training step ([`crate::routing::bias_balance`]).
    Bias,
}

impl std::fmt::Display for BalanceMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BalanceMethod::None => "none",
            BalanceMethod::AuxLoss => "aux_loss",
            BalanceMethod::Bias => "bias",
        })
    }
}
