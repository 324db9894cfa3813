//! The router: scores every expert for every token and applies the routing policy.

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::{DType, Tensor, backend::Backend};
use moe_kernels::RoutingPolicy;

use crate::backend_ext::{MoeBackend, Routing};
use crate::precision::in_dtype;

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
    /// The routing weights come back in `x`'s float type; the logits stay in f32.
    ///
    /// # Shapes
    /// - `x`: `[T, d]`
    pub fn forward(&self, x: Tensor<B, 2>) -> Routing<B> {
        let dtype = x.dtype();
        B::moe_route(self.logits(x), &self.policy).with_weights_in(dtype)
    }

    /// The gate's scores in f32 whatever the parameters' type, through the backend's
    /// router-logits operation (on CubeCL a kernel that sums each token's logits the same way at
    /// every batch size): a token near a threshold routes alike in a bf16 model and an f32 one,
    /// alone or in a batch.
    ///
    /// # Shapes
    /// - `x`: `[T, d]` -> `[T, E]`
    pub fn logits(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let logits = B::moe_router_logits(
            in_dtype(x, DType::F32),
            in_dtype(self.gate.weight.val(), DType::F32),
        );
        match &self.gate.bias {
            Some(bias) => logits + in_dtype(bias.val(), DType::F32).unsqueeze(),
            None => logits,
        }
    }
}
