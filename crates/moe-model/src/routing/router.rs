//! The router: scores every expert for every token and applies the routing policy.

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::{Tensor, backend::Backend};
use moe_kernels::RoutingPolicy;

use crate::backend_ext::{MoeBackend, Routing};

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

    /// The same gate with another policy (e.g. a threshold calibrated on the gate's own scores).
    pub fn with_policy(self, policy: RoutingPolicy) -> Self {
        Self { policy, ..self }
    }
}

impl<B: MoeBackend> Router<B> {
    /// Scores the experts and applies the policy with the backend's routing (kernels on CubeCL).
    ///
    /// # Shapes
    /// - `x`: `[T, d]`
    pub fn forward(&self, x: Tensor<B, 2>) -> Routing<B> {
        B::moe_route(self.logits(x), &self.policy)
    }

    /// The gate's scores, through the backend's router-logits operation (a decode kernel on
    /// CubeCL for few tokens).
    ///
    /// # Shapes
    /// - `x`: `[T, d]` -> `[T, E]`
    pub fn logits(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let logits = B::moe_router_logits(x, self.gate.weight.val());
        match &self.gate.bias {
            Some(bias) => logits + bias.val().unsqueeze(),
            None => logits,
        }
    }
}
