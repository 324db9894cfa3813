//! The router's hand-written backwards (`router_backward.rs`) against Burn's autodiff of the
//! tensor ops, on NdArray (the tensor-op gradient formulas) and on wgpu (the kernels), and
//! against finite differences.

use burn::backend::Autodiff;
use burn::tensor::{DType, Int, Tensor, TensorData};
use moe_kernels::route::reference::route;

use super::{LossWeights, MoeBackend, router_backward, take_fallbacks, tensor_ops};
use crate::RoutingPolicy;
use crate::test_support::{
    TestBackend, float_tensor, host_f64, random_values, relative_error, rng,
};

/// Heavier than the configs' defaults, so the losses' gradients are not drowned out.
const LOSS_WEIGHTS: LossWeights = LossWeights {
    balance: 0.5,
    z: 0.2,
};

/// One batch of router logits, the policy's decisions on them and a probe for the weights.
#[derive(Clone)]
struct Case {
    tokens: usize,
    experts: usize,
    slots: usize,
    logits: Vec<f32>,
    expert_ids: Vec<i32>,
    /// Routed pairs per expert.
    counts: Vec<i32>,
    /// Direction of the weights' loss: `sum(weights * probe)`.
    probe: Vec<f32>,
}

impl Case {
    fn new(seed: u64, tokens: usize, experts: usize, policy: RoutingPolicy, skew: f32) -> Self {
        let mut draw = rng(seed);
        let mut logits = random_values(&mut draw, tokens * experts, 2.0);
        logits.iter_mut().step_by(experts).for_each(|l| *l += skew);
        let routed = route(&logits, experts, &policy);
        let mut counts = vec![0; experts];
        routed
            .expert_ids
            .iter()
            .filter(|&&id| id >= 0)
            .for_each(|&id| counts[id as usize] += 1);
        Self {
            tokens,
            experts,
            slots: routed.slots,
            probe: random_values(&mut draw, tokens * routed.slots, 1.0),
            logits,
            expert_ids: routed.expert_ids,
            counts,
        }
    }

    /// T = 1, variable k, experts without pairs (one expert favoured), E = 64.
    fn all() -> Vec<Self> {
        let threshold = RoutingPolicy::Threshold { tau: 0.5 };
        vec![
            Case::new(1, 1, 4, RoutingPolicy::TopK { k: 2 }, 0.0),
            Case::new(2, 37, 6, threshold, 0.0),
            Case::new(3, 300, 8, RoutingPolicy::TopK { k: 2 }, 5.0),
            Case::new(4, 50, 64, RoutingPolicy::TopP { p: 0.6, max_k: 4 }, 0.0),
        ]
    }
}

/// Which router outputs to differentiate.
#[derive(Clone, Copy, Debug)]
enum Part {
    /// `sum(weights * probe)`
    Weights,
    /// The weighted router loss.
    Loss,
}

/// Which implementation to differentiate.
#[derive(Clone, Copy, Debug)]
enum Path {
    HandWritten,
    TensorOps,
}

/// The value of `part` and its gradient with respect to the logits, floats in `dtype`.
fn loss_and_gradient<B: MoeBackend>(
    case: &Case,
    part: Part,
    path: Path,
    dtype: DType,
) -> (f64, Vec<f64>) {
    let device = Default::default();
    let logits: Tensor<Autodiff<B>, 2> =
        float_tensor(&case.logits, [case.tokens, case.experts], dtype).require_grad();
    let ids = Tensor::<B, 1, Int>::from_data(
        TensorData::new(case.expert_ids.clone(), [case.expert_ids.len()]),
        &device,
    )
    .reshape([case.tokens, case.slots]);
    let counts = Tensor::<B, 1, Int>::from_data(
        TensorData::new(case.counts.clone(), [case.experts]),
        &device,
    );
    let loss = match (part, path) {
        (Part::Weights, path) => {
            let weights = match path {
                Path::HandWritten => {
                    let forward = B::moe_routing_weights(logits.clone().inner(), ids.clone());
                    router_backward::routing_weights(logits.clone(), ids, forward)
                }
                Path::TensorOps => {
                    tensor_ops::routing_weights(logits.clone(), Tensor::from_inner(ids))
                }
            };
            (weights * float_tensor(&case.probe, [case.tokens, case.slots], dtype)).sum()
        }
        (Part::Loss, Path::HandWritten) => {
            router_backward::router_loss(logits.clone(), counts, LOSS_WEIGHTS)
        }
        (Part::Loss, Path::TensorOps) => {
            tensor_ops::router_loss(logits.clone(), Tensor::from_inner(counts), LOSS_WEIGHTS)
        }
    };
    let value = host_f64(loss.clone())[0];
    let grads = loss.backward();
    (
        value,
        host_f64(logits.grad(&grads).expect("a logits gradient")),
    )
}

/// Hand-written values and gradients on backend `B` in `dtype` equal autodiff's of the tensor
/// ops on NdArray in f32 (relative error below `tolerance`); experts a token did not choose get
/// exactly zero from the weights.
fn hand_written_router_backward_matches_autodiff<B: MoeBackend>(dtype: DType, tolerance: f64) {
    for case in Case::all() {
        for part in [Part::Weights, Part::Loss] {
            let (want_value, want) =
                loss_and_gradient::<TestBackend>(&case, part, Path::TensorOps, DType::F32);
            take_fallbacks();
            let (value, got) = loss_and_gradient::<B>(&case, part, Path::HandWritten, dtype);
            assert_eq!(take_fallbacks(), vec![], "every kernel ran");
            let context = format!("{dtype:?} T={} E={} {part:?}", case.tokens, case.experts);
            assert!(
                (value - want_value).abs() <= tolerance * (1.0 + want_value.abs()),
                "{context}: value {value} vs {want_value}"
            );
            let error = relative_error(&got, &want);
            assert!(error < tolerance, "{context}: relative error {error:.2e}");
            assert!(want.iter().any(|&v| v != 0.0), "{context}: all zeros");
            if let Part::Weights = part {
                for (t, row) in got.chunks(case.experts).enumerate() {
                    let chosen = &case.expert_ids[t * case.slots..(t + 1) * case.slots];
                    for (e, &g) in row.iter().enumerate() {
                        if !chosen.contains(&(e as i32)) {
                            assert_eq!(g, 0.0, "{context}: token {t} expert {e} not chosen");
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn hand_written_router_backward_matches_autodiff_on_ndarray() {
    hand_written_router_backward_matches_autodiff::<TestBackend>(DType::F32, 1e-5);
}

#[cfg(feature = "cubecl")]
#[test]
fn hand_written_router_backward_on_the_kernels_matches_autodiff_on_wgpu() {
    type Wgpu = burn_cubecl::CubeBackend<cubecl::wgpu::WgpuRuntime, f32, i32, u32>;
    hand_written_router_backward_matches_autodiff::<Wgpu>(DType::F32, 1e-5);
}

/// The kernels on CUDA, f32 and bf16.
#[cfg(feature = "cubecl")]
mod cuda {
    use super::*;
    type Cuda = burn_cubecl::CubeBackend<cubecl::cuda::CudaRuntime, f32, i32, u8>;

    #[test]
    #[ignore = "needs an NVIDIA GPU: run with --include-ignored (just test-gpu)"]
    fn hand_written_router_backward_on_the_kernels_matches_autodiff_on_cuda() {
        hand_written_router_backward_matches_autodiff::<Cuda>(DType::F32, 1e-5);
        hand_written_router_backward_matches_autodiff::<Cuda>(DType::BF16, 3e-2);
    }
}

/// Central differences of both parts in random logits agree with the hand-written gradients
/// (f32, step 1e-2: within 1% of the largest gradient).
#[test]
fn hand_written_router_backward_matches_finite_differences() {
    let case = Case::new(9, 12, 5, RoutingPolicy::Threshold { tau: 0.5 }, 0.0);
    let mut pick = rng(10);
    for part in [Part::Weights, Part::Loss] {
        let (_, grad) =
            loss_and_gradient::<TestBackend>(&case, part, Path::HandWritten, DType::F32);
        let scale = grad.iter().fold(0.0f64, |m, g| m.max(g.abs()));
        for u in random_values(&mut pick, 8, 1.0) {
            let i = ((u + 1.0) / 2.0 * grad.len() as f32) as usize % grad.len();
            let at = |delta: f32| {
                let mut moved = case.clone();
                moved.logits[i] += delta;
                loss_and_gradient::<TestBackend>(&moved, part, Path::HandWritten, DType::F32).0
            };
            let step = 1e-2;
            let numeric = (at(step) - at(-step)) / (2.0 * step as f64);
            assert!(
                (numeric - grad[i]).abs() <= 0.01 * scale,
                "{part:?} logit {i}: finite difference {numeric} vs gradient {}",
                grad[i]
            );
        }
    }
}
