//! The Mixture-of-Experts layer: route -> dispatch -> experts -> combine.

use burn::config::Config;
use burn::module::Module;
use burn::tensor::{Int, Tensor, backend::Backend};
use moe_kernels::RoutingPolicy;
use moe_kernels::grouped_gemm::ExpertShape;

use crate::InvalidValue;
use crate::backend_ext::{Dispatch, ExpertRows, MoeBackend, Routing};
use crate::experts::Experts;
use crate::feed_forward::Activation;
use crate::precision::{FloatType, in_backend_float_type, in_compute_type, in_dtype};
use crate::routing::balance::BalanceMethod;
use crate::routing::control::{ControlSettings, RoutingControl, router_summary};
use crate::routing::router::Router;
use crate::shared_experts::SharedExperts;

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
    /// Load balancing: `none`, `aux_loss` (Switch, weighted by `balance_loss_coef`) or `bias`
    /// (DeepSeek-V3 auxiliary-loss-free selection bias, stepped by `bias_update_rate`).
    #[config(default = "BalanceMethod::AuxLoss")]
    pub balance: BalanceMethod,
    /// Step of the selection bias after each training step (`balance = "bias"`).
    #[config(default = 0.01)]
    pub bias_update_rate: f64,
    /// Training only: the router sees its input scaled by U(1 - eps, 1 + eps); 0 is off.
    #[config(default = 0.0)]
    pub router_jitter: f64,
    /// Capacity with token dropping: each expert takes at most ceil(factor * routed pairs / E)
    /// pairs, the lowest-scored rest are dropped; `None` is padding-free (no limit, no drops).
    #[config(default = "None")]
    pub capacity_factor: Option<f64>,
    /// Float type of the experts' (and shared experts') matrix products when it is not the
    /// parameters' (mixed precision, see [`FloatType`]); `None`: the parameters' own type. The
    /// router and the combine stay in the parameters' type.
    #[config(default = "None")]
    pub compute_type: Option<FloatType>,
    /// Always-on experts added to every token's output (DeepSeek-V3, Qwen-MoE style).
    #[config(default = 0)]
    pub shared_experts: usize,
    /// Hidden width of each shared expert.
    #[config(default = 128)]
    pub shared_expert_width: usize,
    /// Mean-k budget (threshold, top-p): the limit adapts during training so that tokens use this
    /// many experts on average, then is frozen with the model; `None` keeps the configured limit.
    #[config(default = "None")]
    pub target_mean_k: Option<f64>,
    /// Step of the budget controller: limit += gain * (target - mean k of the batch).
    #[config(default = 0.02)]
    pub budget_gain: f64,
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
        if self.shared_experts > 0 && self.shared_expert_width == 0 {
            return Err(InvalidValue::new("shared_expert_width", 0, "must be >= 1"));
        }
        self.control_settings().validate()
    }

    /// The settings of the routing step around the router ([`RoutingControl`]).
    pub fn control_settings(&self) -> ControlSettings {
        ControlSettings {
            num_experts: self.num_experts,
            routing: self.routing,
            balance: self.balance,
            bias_update_rate: self.bias_update_rate,
            router_jitter: self.router_jitter,
            capacity_factor: self.capacity_factor,
            target_mean_k: self.target_mean_k,
            budget_gain: self.budget_gain,
        }
    }

    /// The features beyond the sizes and the policy (budget, balance, capacity, jitter, shared
    /// experts), in words, each after ", " (empty when all are off).
    pub fn describe(&self) -> String {
        let mut text = self.control_settings().describe();
        if self.shared_experts > 0 {
            text += &format!(
                ", {} shared F={}",
                self.shared_experts, self.shared_expert_width
            );
        }
        text
    }

    /// A freshly initialised layer over rows of width `d_model`.
    pub fn init<B: MoeBackend>(&self, d_model: usize, device: &B::Device) -> MoeLayer<B> {
        let layer = MoeLayer {
            router: Router::new(d_model, self.num_experts, self.routing, device),
            experts: Experts::new(
                self.num_experts,
                d_model,
                self.expert_width,
                self.activation,
                self.compute_type,
                device,
            ),
            balance_loss_coef: self.balance_loss_coef,
            z_loss_coef: self.z_loss_coef,
            control: RoutingControl::new(&self.control_settings(), device),
            shared_experts: SharedExperts::new(
                self.shared_experts,
                self.shared_expert_width,
                self.activation,
                self.compute_type,
                d_model,
                device,
            ),
        };
        in_backend_float_type(layer, device)
    }
}

/// What the layer decided for a batch, kept for metrics.
#[derive(Clone, Debug)]
pub struct RoutingStats<B: Backend> {
    /// Experts used by each token. `[T]`
    pub token_k: Tensor<B, 1, Int>,
    /// Rows routed to each expert. `[E]`
    pub expert_counts: Tensor<B, 1, Int>,
    /// Routed pairs each token lost to the capacity limit. `[T]`
    pub dropped_pairs: Tensor<B, 1, Int>,
    /// Each token's most probable expert. `[T]`
    pub top_expert: Tensor<B, 1, Int>,
    /// Entropy of each token's router distribution, in nats. `[T]`
    pub router_entropy: Tensor<B, 1>,
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
pub struct MoeLayer<B: MoeBackend> {
    /// Scores experts and applies the routing policy.
    pub router: Router<B>,
    /// The experts' stacked weights.
    pub experts: Experts<B>,
    balance_loss_coef: f64,
    z_loss_coef: f64,
    /// Jitter, selection bias, mean-k budget and capacity around the router's policy.
    pub control: RoutingControl<B>,
    /// Always-on experts, if configured.
    pub shared_experts: Option<SharedExperts<B>>,
}

/// One pass through the layer: its output and the routing and dispatch behind it.
pub(crate) struct LayerPass<B: MoeBackend> {
    /// The layer output. `[T, d]`
    pub(crate) output: Tensor<B, 2>,
    routing: Routing<B>,
    dispatch: Dispatch<B>,
    dropped_pairs: Tensor<B, 1, Int>,
}

impl<B: MoeBackend> MoeLayer<B> {
    /// Routes (the routing step of [`RoutingControl`]), dispatches, runs each expert on its rows
    /// and combines, with the backend's operations: on CubeCL backends the kernels, with no host
    /// round trip; tensor ops otherwise. Shared experts, if any, are added to the output. A
    /// mean-k budget reads its limit and capacity dropping its routed-pair count from the device
    /// (one scalar each); the default routing reads nothing back.
    ///
    /// # Shapes
    /// - `x`: `[T, d]` -> output `[T, d]`
    pub fn forward(&self, x: Tensor<B, 2>) -> MoeOutput<B> {
        self.forward_keeping(x, false).0
    }

    /// [`MoeLayer::forward`], and the routing decision behind it (chosen experts, their weights,
    /// the router's probabilities): what routing predictors are trained on and scored against.
    ///
    /// # Shapes
    /// - `x`: `[T, d]` -> output `[T, d]`, routing `[T, K]`
    pub fn forward_with_routing(&self, x: Tensor<B, 2>) -> (MoeOutput<B>, Routing<B>) {
        let (output, routing) = self.forward_keeping(x, true);
        (output, routing.expect("the routing was kept"))
    }

    /// The forward pass; keeps a copy of the routing only when asked (a copy holds the tensors
    /// alive, which stops in-place reuse on the plain forward).
    fn forward_keeping(&self, x: Tensor<B, 2>, keep: bool) -> (MoeOutput<B>, Option<Routing<B>>) {
        let LayerPass {
            output,
            routing,
            dispatch,
            dropped_pairs,
        } = self.pass(x);
        let decision = keep.then(|| routing.clone());
        let expert_counts = dispatch.expert_counts(); // [E]
        let (top_expert, router_entropy) = router_summary(&routing.logits);
        let loss_weights = self
            .control
            .loss_weights(self.balance_loss_coef, self.z_loss_coef);
        let aux_loss = B::moe_router_loss(routing.logits, expert_counts.clone(), loss_weights);
        // The router works in f32; its loss joins the other losses in the layer's type.
        let aux_loss = in_dtype(aux_loss, output.dtype());
        let output = MoeOutput {
            output,
            aux_loss,
            stats: RoutingStats {
                token_k: routing.token_k,
                expert_counts,
                dropped_pairs,
                top_expert,
                router_entropy,
            },
        };
        (output, decision)
    }

    /// The routing step alone: the experts this layer would choose for `x` (capacity drops
    /// applied), without running them. On an inference backend it only decides; under autodiff
    /// it also steps the bias and the budget, like a training forward.
    ///
    /// # Shapes
    /// - `x`: `[T, d]` -> routing `[T, K]`
    pub fn route(&self, x: Tensor<B, 2>) -> Routing<B> {
        self.control.route(&self.router, x).0
    }

    /// The policy the layer applies now: the router's, with a mean-k budget's limit if any.
    pub fn decision_policy(&self) -> RoutingPolicy {
        self.control.policy(self.router.policy())
    }

    /// The output of [`MoeLayer::forward`] alone, for serving: no balance losses and no routing
    /// statistics, so only route, dispatch, the experts and combine run (what decode pays for).
    ///
    /// # Shapes
    /// - `x`: `[T, d]` -> `[T, d]`
    pub fn infer(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        self.pass(x).output
    }

    /// Route, dispatch, experts, combine and shared experts: the output and what the statistics
    /// are made of.
    fn pass(&self, x: Tensor<B, 2>) -> LayerPass<B> {
        let activation = self.experts.activation();
        self.pass_with(x, |x, dispatch| match &self.experts.quantized {
            Some(quantized) => B::moe_quantized_experts(x, dispatch, quantized, activation),
            None => {
                let (w_in, w_out) = self.experts.compute_weights();
                B::moe_experts(x, dispatch, w_in, w_out, activation)
            }
        })
    }

    /// [`MoeLayer::pass`] with the experts' step given by `run_experts`, which receives the
    /// input in the compute type and the dispatch over the router's E experts and returns the
    /// routed rows in dispatch order. The seam where expert parallelism runs the experts on
    /// other ranks (`crate::expert_parallel`); `self.experts` is only read for its activation,
    /// compute type and width, so it may hold a shard of the experts.
    ///
    /// # Shapes
    /// - `x`: `[T, d]` -> output `[T, d]`
    pub(crate) fn pass_with(
        &self,
        x: Tensor<B, 2>,
        run_experts: impl FnOnce(Tensor<B, 2>, &Dispatch<B>) -> ExpertRows<B>,
    ) -> LayerPass<B> {
        let [num_tokens, d_model] = x.dims();
        let activation = self.experts.activation();
        let (routing, dropped_pairs) = self.control.route(&self.router, x.clone());
        let [_, num_experts] = routing.logits.dims();
        let shape = ExpertShape {
            num_tokens,
            slots: routing.expert_ids.dims()[1],
            num_experts,
            d_model,
            width: self.experts.w_out.dims()[1],
        };
        let shared_output = self.shared_experts.as_ref().map(|s| s.forward(x.clone())); // [T, d]
        let x = in_compute_type(x, self.experts.compute_type());
        let tile_rows = B::moe_tile_rows(&shape, activation, x.dtype(), &x.device());
        let dispatch = B::moe_dispatch(routing.expert_ids.clone(), num_experts, tile_rows);
        let rows = run_experts(x, &dispatch);
        // In the routing weights' type, the parameters', whatever the rows' type.
        let output = B::moe_combine(rows, routing.weights.clone(), &dispatch); // [T, d]
        let output = match shared_output {
            Some(shared) => output + shared,
            None => output,
        };
        LayerPass {
            output,
            routing,
            dispatch,
            dropped_pairs,
        }
    }

    /// Number of experts E.
    pub fn num_experts(&self) -> usize {
        self.experts.num_experts()
    }
}

#[cfg(test)]
mod tests {
    use burn::backend::Autodiff;
    use burn::module::Param;
    use burn::tensor::{Tensor, TensorData};
    use moe_kernels::route::reference;

    use super::*;
    use crate::UNUSED_SLOT;
    use crate::mlp::DenseMlpConfig;
    use crate::test_support::{
        TestBackend, feed_forward_f64, host_f64, host_i64, random_tensor, random_values, rng,
    };

    /// The layer computed row by row in f64 from its own weights and the reference routing.
    fn reference_forward(
        layer: &MoeLayer<TestBackend>,
        x: &[f64],
        d: usize,
        width: usize,
        activation: Activation,
    ) -> Vec<f64> {
        let gate = host_f64(layer.router.gate.weight.val()); // [d, E]
        let num_experts = layer.num_experts();
        let w_in = host_f64(layer.experts.w_in.val());
        let w_out = host_f64(layer.experts.w_out.val());
        let (in_size, out_size) = (w_in.len() / num_experts, w_out.len() / num_experts);
        let mut out = Vec::new();
        for row in x.chunks(d) {
            let logits: Vec<f32> = (0..num_experts)
                .map(|e| {
                    (0..d)
                        .map(|i| row[i] * gate[i * num_experts + e])
                        .sum::<f64>() as f32
                })
                .collect();
            let routed = reference::route(&logits, num_experts, &layer.router.policy());
            let mut y = vec![0.0; d];
            for (&id, &weight) in routed.expert_ids.iter().zip(&routed.weights) {
                if id == UNUSED_SLOT {
                    continue;
                }
                let e = id as usize;
                let expert_out = feed_forward_f64(
                    row,
                    &w_in[e * in_size..(e + 1) * in_size],
                    &w_out[e * out_size..(e + 1) * out_size],
                    width,
                    activation,
                );
                y.iter_mut()
                    .zip(expert_out)
                    .for_each(|(acc, v)| *acc += weight * v);
            }
            out.extend(y);
        }
        out
    }

    #[test]
    fn forward_and_infer_match_a_row_by_row_f64_reference() {
        let device = Default::default();
        for (seed, activation, routing) in [
            (1, Activation::SwiGlu, RoutingPolicy::Threshold { tau: 0.5 }),
            (2, Activation::Gelu, RoutingPolicy::TopK { k: 2 }),
            (
                3,
                Activation::SwiGlu,
                RoutingPolicy::TopP { p: 0.8, max_k: 3 },
            ),
        ] {
            let (d, width) = (12, 7);
            let layer = MoeLayerConfig::new()
                .with_num_experts(5)
                .with_expert_width(width)
                .with_activation(activation)
                .with_routing(routing)
                .init::<TestBackend>(d, &device);
            let x = random_tensor::<TestBackend, 2>(&mut rng(seed), [40, d], 1.5, &device);
            let expected = reference_forward(&layer, &host_f64(x.clone()), d, width, activation);
            for (path, output) in [
                ("forward", layer.forward(x.clone()).output),
                ("infer", layer.infer(x)),
            ] {
                for (g, e) in host_f64(output).iter().zip(&expected) {
                    assert!(
                        (g - e).abs() < 1e-4 * (1.0 + e.abs()),
                        "{path} {routing}: {g} vs {e}"
                    );
                }
            }
        }
    }

    #[test]
    fn one_expert_equals_the_dense_mlp_with_the_same_weights() {
        let device = Default::default();
        for activation in [Activation::SwiGlu, Activation::Gelu] {
            let moe = MoeLayerConfig::new()
                .with_num_experts(1)
                .with_expert_width(16)
                .with_activation(activation)
                .with_routing(RoutingPolicy::TopK { k: 1 })
                .init::<TestBackend>(10, &device);
            let mut dense = DenseMlpConfig::new()
                .with_width(16)
                .with_activation(activation)
                .init::<TestBackend>(10, &device);
            dense.w_in = Param::from_tensor(moe.experts.w_in.val().squeeze_dim(0));
            dense.w_out = Param::from_tensor(moe.experts.w_out.val().squeeze_dim(0));

            let x = random_tensor::<TestBackend, 2>(&mut rng(4), [33, 10], 2.0, &device);
            let moe_out = host_f64(moe.forward(x.clone()).output);
            let dense_out = host_f64(dense.forward(x));
            for (m, d) in moe_out.iter().zip(&dense_out) {
                assert!((m - d).abs() < 1e-5, "{activation:?}: {m} vs {d}");
            }
        }
    }

    #[test]
    fn gradients_reach_the_router_and_every_used_expert() {
        type B = Autodiff<TestBackend>;
        let device = Default::default();
        let layer = MoeLayerConfig::new()
            .with_num_experts(4)
            .with_expert_width(8)
            .with_routing(RoutingPolicy::Threshold { tau: 0.6 })
            .init::<B>(6, &device);
        let x = random_tensor::<B, 2>(&mut rng(6), [64, 6], 2.0, &device);
        let target = random_tensor::<B, 2>(&mut rng(7), [64, 6], 1.0, &device);
        let out = layer.forward(x);
        let counts = host_i64(out.stats.expert_counts.clone());
        let token_k = host_i64(out.stats.token_k.clone());
        assert!(
            token_k.contains(&2),
            "some tokens must use two experts: {token_k:?}"
        );

        let loss = (out.output * target).sum() + out.aux_loss;
        let grads = loss.backward();
        let norm = |t: Tensor<TestBackend, 2>| host_f64(t).iter().map(|v| v * v).sum::<f64>();
        let gate_grad = layer
            .router
            .gate
            .weight
            .grad(&grads)
            .expect("router gradient");
        assert!(norm(gate_grad) > 0.0);
        let w_in_grad = layer.experts.w_in.grad(&grads).expect("expert gradient");
        let w_out_grad = layer.experts.w_out.grad(&grads).expect("expert gradient");
        for (e, &count) in counts.iter().enumerate() {
            let expert_in = w_in_grad.clone().slice([e..e + 1]).squeeze_dim(0);
            let expert_out = w_out_grad.clone().slice([e..e + 1]).squeeze_dim(0);
            let used = count > 0;
            assert_eq!(norm(expert_in) > 0.0, used, "expert {e} with {count} rows");
            assert_eq!(norm(expert_out) > 0.0, used, "expert {e} with {count} rows");
        }
    }

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
