//! Routing policies: how many experts each token uses, decided from its router probabilities.

use serde::{Deserialize, Serialize};

use crate::InvalidValue;

/// Expert id written into a routing slot that the policy left unused (its weight is 0).
pub const UNUSED_SLOT: i32 = -1;

/// How many of its highest-probability experts a token is sent to.
///
/// Every policy walks the experts in descending probability (ties: lower expert index first) and
/// keeps a prefix of them; the kept weights are renormalised to sum to 1.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "policy", rename_all = "snake_case", deny_unknown_fields)]
pub enum RoutingPolicy {
    /// Always the `k` most probable experts (k=1 Switch, k=2 Mixtral, k=8 DeepSeek-V3).
    TopK {
        /// Experts per token, in `1..=num_experts`.
        k: usize,
    },
    /// Variable k: one expert when the top-1 probability is at least `tau`, else two.
    Threshold {
        /// Confidence needed to use a single expert, in `[0, 1]`.
        tau: f64,
    },
    /// The smallest prefix whose probability mass reaches `p`, at most `max_k` experts.
    TopP {
        /// Probability mass to cover, in `(0, 1]`.
        p: f64,
        /// Most experts a token may use, in `1..=num_experts`.
        max_k: usize,
    },
    /// Expert choice (Zhou et al. 2022): each expert takes the `C = ceil(capacity_factor * T / E)`
    /// tokens of the batch that rank it highest, so every expert gets exactly C tokens and a token
    /// gets 0 to E experts (mean k = capacity_factor); a token picked by more than `max_k` experts
    /// keeps its `max_k` most probable ones. Decided over the batch, not per token.
    ExpertChoice {
        /// Mean experts per token, in `(0, num_experts]`.
        capacity_factor: f64,
        /// Most experts a token may use, in `1..=num_experts` (`num_experts`: no cap).
        max_k: usize,
    },
}

impl RoutingPolicy {
    /// Slots per token in routing outputs: the most experts this policy can pick for one token.
    pub fn max_slots(&self) -> usize {
        match *self {
            RoutingPolicy::TopK { k } => k,
            RoutingPolicy::Threshold { .. } => 2,
            RoutingPolicy::TopP { max_k, .. } => max_k,
            RoutingPolicy::ExpertChoice { max_k, .. } => max_k,
        }
    }

    /// Whether each token's experts follow from its own probabilities alone (every policy but
    /// expert choice, which ranks tokens across the batch).
    pub fn decides_per_token(&self) -> bool {
        !matches!(self, RoutingPolicy::ExpertChoice { .. })
    }

    /// Probability mass below which a token takes one more expert, up to `max_slots`: `tau` for
    /// `Threshold`, `p` for `TopP`, none for `TopK` (every slot is used).
    pub fn mass_limit(&self) -> Option<f64> {
        match *self {
            RoutingPolicy::TopK { .. } | RoutingPolicy::ExpertChoice { .. } => None,
            RoutingPolicy::Threshold { tau } => Some(tau),
            RoutingPolicy::TopP { p, .. } => Some(p),
        }
    }

    /// Whether the token uses its `slot`-th most probable expert, given the probability mass of the
    /// slots before it. Slot 0 is always used.
    pub fn uses_slot(&self, slot: usize, mass_before: f64) -> bool {
        slot == 0
            || (slot < self.max_slots()
                && self.mass_limit().is_none_or(|limit| mass_before < limit))
    }

    /// Checks the policy's parameters against the number of experts it routes over.
    pub fn validate(&self, num_experts: usize) -> Result<(), InvalidValue> {
        let slots_allowed = format!("must be in 1..={num_experts} (num_experts)");
        match *self {
            RoutingPolicy::TopK { k } if k < 1 || k > num_experts => {
                Err(InvalidValue::new("k", k, slots_allowed))
            }
            RoutingPolicy::Threshold { tau } if !(0.0..=1.0).contains(&tau) => {
                Err(InvalidValue::new("tau", tau, "must be in [0, 1]"))
            }
            RoutingPolicy::Threshold { .. } if num_experts < 2 => Err(InvalidValue::new(
                "policy",
                "\"threshold\"",
                format!("needs num_experts >= 2 (it picks up to two experts), got {num_experts}"),
            )),
            RoutingPolicy::TopP { p, .. } if !(p > 0.0 && p <= 1.0) => {
                Err(InvalidValue::new("p", p, "must be in (0, 1]"))
            }
            RoutingPolicy::TopP { max_k, .. } | RoutingPolicy::ExpertChoice { max_k, .. }
                if max_k < 1 || max_k > num_experts =>
            {
                Err(InvalidValue::new("max_k", max_k, slots_allowed))
            }
            RoutingPolicy::ExpertChoice {
                capacity_factor, ..
            } if !(capacity_factor > 0.0 && capacity_factor <= num_experts as f64) => {
                Err(InvalidValue::new(
                    "capacity_factor",
                    capacity_factor,
                    format!("must be in (0, {num_experts}] (num_experts)"),
                ))
            }
            _ => Ok(()),
        }
    }
}

/// Tokens each expert takes under expert choice: `ceil(capacity_factor * T / E)`, within `1..=T`.
pub fn expert_capacity(num_tokens: usize, num_experts: usize, capacity_factor: f64) -> usize {
    let capacity = (capacity_factor * num_tokens as f64 / num_experts as f64).ceil() as usize;
    capacity.clamp(1, num_tokens.max(1))
}

impl std::fmt::Display for RoutingPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RoutingPolicy::TopK { k } => write!(f, "top-{k}"),
            RoutingPolicy::Threshold { tau } => write!(f, "threshold(tau={tau})"),
            RoutingPolicy::TopP { p, max_k } => write!(f, "top-p(p={p}, max_k={max_k})"),
            RoutingPolicy::ExpertChoice {
                capacity_factor,
                max_k,
            } => write!(f, "expert-choice(c={capacity_factor}, max_k={max_k})"),
        }
    }
}
