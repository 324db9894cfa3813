//! The kernel path (CubeCL on wgpu) against the tensor-op path (NdArray): same weights, same
//! inputs, same outputs and gradients.

use burn::backend::Autodiff;
use burn::module::Param;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};
use burn_cubecl::CubeBackend;
use cubecl::wgpu::WgpuRuntime;

use super::{Fallback, MoeBackend, take_fallbacks};
use crate::routing::control::{CAPACITY_FALLBACK, EXPERT_CHOICE_FALLBACK};
use crate::test_support::{TestBackend, host_f64, host_i64, random_values, rng};
use crate::{Activation, BalanceMethod, MoeLayer, MoeLayerConfig, RoutingPolicy};

type Wgpu = CubeBackend<WgpuRuntime, f32, i32, u32>;

fn tensor<B: Backend, const D: usize>(values: &[f32], shape: [usize; D]) -> Tensor<B, D> {
    Tensor::from_data(TensorData::new(values.to_vec(), shape), &Default::default())
}

/// A layer on backend `B` whose weights are the host values `(gate, w_in, w_out)`.
fn layer_with<B: MoeBackend>(
    config: &MoeLayerConfig,
    d: usize,
    weights: &[Vec<f32>; 3],
) -> MoeLayer<B> {
    let (e, columns, width) = (
        config.num_experts,
        config.activation.input_columns(config.expert_width),
        config.expert_width,
    );
    let mut layer = config.init::<B>(d, &Default::default());
    layer.router.gate.weight = Param::from_tensor(tensor(&weights[0], [d, e]));
    layer.experts.w_in = Param::from_tensor(tensor(&weights[1], [e, d, columns]));
    layer.experts.w_out = Param::from_tensor(tensor(&weights[2], [e, width, d]));
    layer
}

fn assert_close(got: &[f64], want: &[f64], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= 1e-4 * (1.0 + w.abs()),
            "{what}[{i}]: {g} vs {w}"
        );
    }
}

#[test]
fn kernel_path_matches_tensor_op_path_in_outputs_and_gradients() {
    let d = 16;
    for (seed, routing) in [
        (1, RoutingPolicy::Threshold { tau: 0.5 }),
        (2, RoutingPolicy::TopK { k: 2 }),
        (3, RoutingPolicy::TopP { p: 0.7, max_k: 4 }),
    ] {
        let config = MoeLayerConfig::new()
            .with_num_experts(6)
            .with_expert_width(24)
            .with_activation(Activation::SwiGlu)
            .with_routing(routing);
        let mut draw = rng(seed);
        let columns = config.activation.input_columns(24);
        let weights = [
            random_values(&mut draw, d * 6, 0.5),
            random_values(&mut draw, 6 * d * columns, 0.3),
            random_values(&mut draw, 6 * 24 * d, 0.3),
        ];
        let x = random_values(&mut draw, 150 * d, 1.5);

        // Inference: kernels on wgpu vs tensor ops on NdArray.
        let cpu = layer_with::<TestBackend>(&config, d, &weights).forward(tensor(&x, [150, d]));
        take_fallbacks();
        let gpu = layer_with::<Wgpu>(&config, d, &weights).forward(tensor(&x, [150, d]));
        assert_eq!(take_fallbacks(), vec![], "{routing}: every kernel ran");
        assert_close(
            &host_f64(gpu.output),
            &host_f64(cpu.output),
            &format!("{routing} output"),
        );
        assert_eq!(
            host_i64(gpu.stats.token_k),
            host_i64(cpu.stats.token_k),
            "{routing} k"
        );

        // Training: gradients through both paths.
        let cpu_grads = gradients(
            &layer_with::<Autodiff<TestBackend>>(&config, d, &weights),
            &x,
        );
        take_fallbacks();
        let gpu_grads = gradients(&layer_with::<Autodiff<Wgpu>>(&config, d, &weights), &x);
        assert_eq!(
            take_fallbacks(),
            vec![],
            "{routing}: every backward kernel ran"
        );
        assert_gradients_close(&gpu_grads, &cpu_grads, &routing.to_string());
    }
}

/// The router logits on their kernel at decode and prefill sizes against NdArray; and whole
/// decode-sized layers, whose routing reads those logits.
#[test]
fn router_logits_and_decode_layers_match_the_tensor_op_path() {
    let (d, e) = (40, 6);
    let mut draw = rng(11);
    let gate = random_values(&mut draw, d * e, 0.5);
    for tokens in [1, 16, 17, 300] {
        let x = random_values(&mut draw, tokens * d, 1.5);
        let want = TestBackend::moe_router_logits(tensor(&x, [tokens, d]), tensor(&gate, [d, e]));
        take_fallbacks();
        let got = Wgpu::moe_router_logits(tensor(&x, [tokens, d]), tensor(&gate, [d, e]));
        assert_eq!(take_fallbacks(), vec![], "T={tokens}: the kernel ran");
        assert_close(
            &host_f64(got),
            &host_f64(want),
            &format!("logits T={tokens}"),
        );
    }
    let config = MoeLayerConfig::new()
        .with_num_experts(e)
        .with_expert_width(24)
        .with_activation(Activation::SwiGlu)
        .with_routing(RoutingPolicy::Threshold { tau: 0.4 });
    let columns = config.activation.input_columns(24);
    let weights = [
        gate,
        random_values(&mut draw, e * d * columns, 0.3),
        random_values(&mut draw, e * 24 * d, 0.3),
    ];
    for tokens in [1, 16] {
        let x = random_values(&mut draw, tokens * d, 1.5);
        let cpu = layer_with::<TestBackend>(&config, d, &weights).infer(tensor(&x, [tokens, d]));
        take_fallbacks();
        let gpu = layer_with::<Wgpu>(&config, d, &weights).infer(tensor(&x, [tokens, d]));
        assert_eq!(take_fallbacks(), vec![], "T={tokens}: every kernel ran");
        assert_close(&host_f64(gpu), &host_f64(cpu), &format!("layer T={tokens}"));
    }
}

/// Gradients of `sum(output^2) + aux_loss` for the router gate, the experts' input and output
/// weights and the layer's input.
fn gradients<B: MoeBackend + AutodiffBackend>(layer: &MoeLayer<B>, x: &[f32]) -> [Vec<f64>; 4] {
    let d = layer.router.gate.weight.dims()[0];
    let input = tensor::<B, 2>(x, [x.len() / d, d]).require_grad();
    let out = layer.forward(input.clone());
    let grads = (out.output.powi_scalar(2).sum() + out.aux_loss).backward();
    [
        host_f64(
            layer
                .router
                .gate
                .weight
                .grad(&grads)
                .expect("router gradient"),
        ),
        host_f64(layer.experts.w_in.grad(&grads).expect("expert gradient")),
        host_f64(layer.experts.w_out.grad(&grads).expect("expert gradient")),
        host_f64(input.grad(&grads).expect("input gradient")),
    ]
}

/// Every gradient of [`gradients`] agrees between the paths.
fn assert_gradients_close(got: &[Vec<f64>; 4], want: &[Vec<f64>; 4], what: &str) {
    for (i, name) in ["router", "w_in", "w_out", "input"].iter().enumerate() {
        assert_close(&got[i], &want[i], &format!("{what} {name} gradient"));
    }
}

/// The routing steps around the policy on both paths. Covered by the route kernel: a selection
/// bias, a mean-k budget's limit, shared experts: no fallback. Not covered (tensor ops on wgpu
/// too, each noted as a fallback): expert choice and capacity dropping. Outputs, k, dropped pairs
/// and gradients agree.
#[test]
fn routing_features_agree_between_the_kernel_and_tensor_op_paths() {
    let d = 16;
    let base = MoeLayerConfig::new()
        .with_num_experts(6)
        .with_expert_width(24)
        .with_activation(Activation::SwiGlu);
    let route_fallback = |reason: &str| Fallback {
        op: "route",
        reason: reason.to_string(),
    };
    let cases = [
        (
            "bias + shared experts",
            base.clone()
                .with_routing(RoutingPolicy::Threshold { tau: 0.5 })
                .with_balance(BalanceMethod::Bias)
                .with_shared_experts(2)
                .with_shared_expert_width(8),
        ),
        (
            "budget",
            base.clone()
                .with_routing(RoutingPolicy::TopP { p: 0.7, max_k: 4 })
                .with_target_mean_k(Some(1.6)),
        ),
        (
            "capacity",
            base.clone()
                .with_routing(RoutingPolicy::TopK { k: 2 })
                .with_capacity_factor(Some(0.9)),
        ),
        (
            "expert choice",
            base.clone()
                .with_routing(RoutingPolicy::ExpertChoice {
                    capacity_factor: 1.5,
                    max_k: 6,
                })
                .with_balance(BalanceMethod::None),
        ),
    ];
    for (seed, (what, config)) in cases.into_iter().enumerate() {
        let mut draw = rng(10 + seed as u64);
        let columns = config.activation.input_columns(24);
        let weights = [
            random_values(&mut draw, d * 6, 0.5),
            random_values(&mut draw, 6 * d * columns, 0.3),
            random_values(&mut draw, 6 * 24 * d, 0.3),
        ];
        let shared = [
            random_values(&mut draw, d * 2 * 16, 0.3),
            random_values(&mut draw, 16 * d, 0.3),
        ];
        let bias = random_values(&mut draw, 6, 0.6);
        let x = random_values(&mut draw, 150 * d, 1.5);
        let cpu = with_state(
            layer_with::<TestBackend>(&config, d, &weights),
            &shared,
            &bias,
            d,
        )
        .forward(tensor(&x, [150, d]));
        take_fallbacks();
        let gpu = with_state(layer_with::<Wgpu>(&config, d, &weights), &shared, &bias, d)
            .forward(tensor(&x, [150, d]));
        let expected_fallbacks = match what {
            "capacity" => vec![route_fallback(CAPACITY_FALLBACK)],
            "expert choice" => vec![route_fallback(EXPERT_CHOICE_FALLBACK)],
            _ => vec![],
        };
        assert_eq!(take_fallbacks(), expected_fallbacks, "{what}: fallbacks");
        assert_close(&host_f64(gpu.output), &host_f64(cpu.output), what);
        assert_eq!(
            host_i64(gpu.stats.token_k),
            host_i64(cpu.stats.token_k),
            "{what} k"
        );
        let dropped = host_i64(cpu.stats.dropped_pairs);
        assert_eq!(host_i64(gpu.stats.dropped_pairs), dropped, "{what} dropped");
        if what == "capacity" {
            assert!(
                dropped.iter().sum::<i64>() > 0,
                "capacity 0.9 must drop pairs"
            );
        }

        let cpu_layer = with_state(
            layer_with::<Autodiff<TestBackend>>(&config, d, &weights),
            &shared,
            &bias,
            d,
        );
        let gpu_layer = with_state(
            layer_with::<Autodiff<Wgpu>>(&config, d, &weights),
            &shared,
            &bias,
            d,
        );
        let (cpu_grads, gpu_grads) = (gradients(&cpu_layer, &x), gradients(&gpu_layer, &x));
        assert_gradients_close(&gpu_grads, &cpu_grads, what);
    }
}

/// `layer` with shared-expert weights `(w_in, w_out)` where it has shared experts, the selection
/// bias `bias` where it balances by bias, and a budget limit of 0.55 where it has a budget.
fn with_state<B: MoeBackend>(
    mut layer: MoeLayer<B>,
    shared: &[Vec<f32>; 2],
    bias: &[f32],
    d: usize,
) -> MoeLayer<B> {
    if let Some(experts) = layer.shared_experts.as_mut() {
        let width = experts.mlp.w_out.dims()[0];
        let columns = experts.mlp.w_in.dims()[1];
        experts.mlp.w_in = Param::from_tensor(tensor(&shared[0][..d * columns], [d, columns]));
        experts.mlp.w_out = Param::from_tensor(tensor(&shared[1][..width * d], [width, d]));
    }
    if let Some(expert_bias) = &layer.control.bias {
        expert_bias.bias.update(tensor(bias, [bias.len()]));
    }
    if let Some(budget) = &layer.control.budget {
        budget.limit.update(tensor(&[0.55], [1]));
    }
    layer
}

/// A token's router logits, and so its routing, do not depend on the batch it comes in: each
/// token of a batch of 37 gets bit for bit the logits and weights it gets alone.
#[test]
fn a_token_routes_alike_alone_and_in_a_batch() {
    let (d, e, tokens) = (72, 8, 37);
    let mut draw = rng(12);
    let gate = tensor::<Wgpu, 2>(&random_values(&mut draw, d * e, 0.4), [d, e]);
    let x = random_values(&mut draw, tokens * d, 1.0);
    let policy = RoutingPolicy::Threshold { tau: 0.5 };
    let batch_logits = Wgpu::moe_router_logits(tensor(&x, [tokens, d]), gate.clone());
    let batch = Wgpu::moe_route(batch_logits.clone(), &policy);
    let (batch_logits, batch_weights) = (host_f64(batch_logits), host_f64(batch.weights));
    let slots = batch_weights.len() / tokens;
    for t in 0..tokens {
        let alone = tensor(&x[t * d..(t + 1) * d], [1, d]);
        let logits = Wgpu::moe_router_logits(alone, gate.clone());
        let routing = Wgpu::moe_route(logits.clone(), &policy);
        assert_eq!(
            host_f64(logits),
            batch_logits[t * e..(t + 1) * e],
            "token {t}: logits"
        );
        assert_eq!(
            host_f64(routing.weights),
            batch_weights[t * slots..(t + 1) * slots],
            "token {t}: weights"
        );
    }
}
