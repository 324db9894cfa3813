//! The Mixture-of-Experts layer: route -> dispatch -> experts -> combine.

use burn::config::Config;
use burn::module::Module;
use burn::tensor::IndexingUpdateOp;
use burn::tensor::{Int, Tensor, TensorData, backend::Backend};
use moe_kernels::RoutingPolicy;
use moe_kernels::dispatch::reference::{DispatchPlan, plan};

use crate::InvalidValue;
use crate::balance::{load_balancing_loss, router_z_loss};
use crate::experts::Experts;
use crate::feed_forward::Activation;
use crate::router::Router;

/// Configuration of [`MoeLayer`]; the model width `d` is given by the host model at `init`.
#[derive(Config, Debug)]
pub struct MoeLayerConfig {
    /// Number of experts E.
    #[config(default = 8)]
    pub num_experts: usize,
    /// Hidden width F of each expert.
    #[config(default = 128)]
    pub expert_width: usize,
    /// Nonlinearity of the experts.
    #[config(default = "Activation::SwiGlu")]
    pub activation: Activation,
    /// How many experts each token uses.
    #[config(default = "RoutingPolicy::Threshold { tau: 0.5 }")]
    pub routing: RoutingPolicy,
    /// Weight of the load-balancing loss in the training loss.
    #[config(default = 0.01)]
    pub balance_loss_coef: f64,
    /// Weight of the router z-loss in the training loss.
    #[config(default = 0.001)]
    pub z_loss_coef: f64,
}

impl MoeLayerConfig {
    /// Checks sizes, the routing policy against E, and the loss weights.
    pub fn validate(&self) -> Result<(), InvalidValue> {
        if self.num_experts == 0 {
            return Err(InvalidValue::new("num_experts", 0, "must be >= 1"));
        }
        if self.expert_width == 0 {
            return Err(InvalidValue::new("expert_width", 0, "must be >= 1"));
        }
        self.routing
            .validate(self.num_experts)
            .map_err(|e| e.within("routing"))?;
        for (field, coef) in [
            ("balance_loss_coef", self.balance_loss_coef),
            ("z_loss_coef", self.z_loss_coef),
        ] {
            if !(coef >= 0.0 && coef.is_finite()) {
                return Err(InvalidValue::new(
                    field,
                    coef,
                    "must be a finite number >= 0",
                ));
            }
        }
        Ok(())
    }

    /// A freshly initialised layer over rows of width `d_model`.
    pub fn init<B: Backend>(&self, d_model: usize, device: &B::Device) -> MoeLayer<B> {
        MoeLayer {
            router: Router::new(d_model, self.num_experts, self.routing, device),
            experts: Experts::new(
                self.num_experts,
                d_model,
                self.expert_width,
                self.activation,
                device,
            ),
            balance_loss_coef: self.balance_loss_coef,
            z_loss_coef: self.z_loss_coef,
        }
    }
}

/// What the layer decided for a batch, kept for metrics.
#[derive(Clone, Debug)]
pub struct RoutingStats<B: Backend> {
    /// Experts used by each token. `[T]`
    pub token_k: Tensor<B, 1, Int>,
    /// Rows routed to each expert. `[E]`
    pub expert_counts: Tensor<B, 1, Int>,
}

/// Output of [`MoeLayer::forward`].
#[derive(Clone, Debug)]
pub struct MoeOutput<B: Backend> {
    /// The layer output. `[T, d]`
    pub output: Tensor<B, 2>,
    /// Weighted sum of the auxiliary losses, to add to the training loss. `[1]`
    pub aux_loss: Tensor<B, 1>,
    /// The routing decision.
    pub stats: RoutingStats<B>,
}

/// A Mixture-of-Experts feed-forward layer whose cost scales with the routed (token, expert)
/// pairs: each token runs only through the experts its router chose.
#[derive(Module, Debug)]
pub struct MoeLayer<B: Backend> {
    /// Scores experts and applies the routing policy.
    pub router: Router<B>,
    /// The experts' stacked weights.
    pub experts: Experts<B>,
    balance_loss_coef: f64,
    z_loss_coef: f64,
}

impl<B: Backend> MoeLayer<B> {
    /// # Shapes
    /// - `x`: `[T, d]` -> output `[T, d]`
    pub fn forward(&self, x: Tensor<B, 2>) -> MoeOutput<B> {
        let [num_tokens, d_model] = x.dims();
        let device = x.device();
        let routing = self.router.forward(x.clone());
        let slots = routing.weights.dims()[1];

        let expert_ids = routing.expert_ids.to_data().convert::<i32>();
        let plan: DispatchPlan = plan(
            expert_ids.as_slice::<i32>().expect("i32 data"),
            self.experts.num_experts(),
        );
        let pairs = int_tensor::<B>(&plan.routed_pairs, &device); // [S]
        let tokens = pairs.clone().div_scalar(slots as i64); // [S]

        let rows = x.select(0, tokens.clone()); // [S, d]
        let expert_outputs = self.experts.forward_grouped(rows, &plan.expert_offsets); // [S, d]
        let row_weights = routing
            .weights
            .clone()
            .reshape([num_tokens * slots])
            .select(0, pairs); // [S]
        let weighted = expert_outputs * row_weights.unsqueeze_dim(1); // [S, d]
        let output = Tensor::zeros([num_tokens, d_model], &device).select_assign(
            0,
            tokens,
            weighted,
            IndexingUpdateOp::Add,
        ); // [T, d]

        let expert_counts = plan.expert_counts();
        let aux_loss = load_balancing_loss(routing.probs, &expert_counts)
            .mul_scalar(self.balance_loss_coef)
            + router_z_loss(routing.logits).mul_scalar(self.z_loss_coef);
        MoeOutput {
            output,
            aux_loss,
            stats: RoutingStats {
                token_k: routing.token_k,
                expert_counts: int_tensor(&expert_counts, &device),
            },
        }
    }

    /// Number of experts E.
    pub fn num_experts(&self) -> usize {
        self.experts.num_experts()
    }
}

/// A 1-D integer tensor holding `values`.
fn int_tensor<B: Backend>(values: &[usize], device: &B::Device) -> Tensor<B, 1, Int> {
    let values: Vec<i64> = values.iter().map(|&v| v as i64).collect();
    let len = values.len();
    Tensor::from_data(TensorData::new(values, [len]), device)
}
