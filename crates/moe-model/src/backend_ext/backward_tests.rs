//! The hand-written backward of the experts (`expert_backward.rs`) and of the combine
//! (`combine_backward.rs`) against Burn's autodiff of the tensor-op experts and combine, on
//! NdArray (tensor-op primitives) and on wgpu (the kernels), and against finite differences.

use burn::backend::Autodiff;
use burn::tensor::{DType, Int, Tensor, TensorData};
use moe_kernels::grouped_gemm::ExpertShape;
use moe_kernels::route::reference::route;

use super::{
    Dispatch, ExpertRows, MoeBackend, combine_backward, expert_backward, take_fallbacks, tensor_ops,
};
use crate::test_support::{
    TestBackend, float_tensor, host_f64, random_values, relative_error, rng,
};
use crate::{Activation, RoutingPolicy};

/// One batch: routing decisions and random operands on the host.
#[derive(Clone)]
struct Case {
    tokens: usize,
    experts: usize,
    d: usize,
    width: usize,
    activation: Activation,
    slots: usize,
    expert_ids: Vec<i32>,
    weights: Vec<f32>,
    x: Vec<f32>,
    w_in: Vec<f32>,
    w_out: Vec<f32>,
    /// Direction of the loss: `sum(output * probe)`.
    probe: Vec<f32>,
}

impl Case {
    /// Routes random logits (expert 0 favoured by `skew`) with `policy`, draws the operands.
    #[allow(clippy::too_many_arguments, reason = "test case description")]
    fn new(
        seed: u64,
        tokens: usize,
        experts: usize,
        d: usize,
        width: usize,
        policy: RoutingPolicy,
        activation: Activation,
        skew: f32,
    ) -> Self {
        let mut draw = rng(seed);
        let mut logits = random_values(&mut draw, tokens * experts, 2.0);
        logits.iter_mut().step_by(experts).for_each(|l| *l += skew);
        let routed = route(&logits, experts, &policy);
        let columns = activation.input_columns(width);
        Self {
            tokens,
            experts,
            d,
            width,
            activation,
            slots: routed.slots,
            expert_ids: routed.expert_ids,
            weights: routed.weights.iter().map(|&w| w as f32).collect(),
            x: random_values(&mut draw, tokens * d, 1.0),
            w_in: random_values(&mut draw, experts * d * columns, 0.5),
            w_out: random_values(&mut draw, experts * width * d, 0.5),
            probe: random_values(&mut draw, tokens * d, 1.0),
        }
    }

    /// Edge cases: T=1, GELU, experts without rows, one expert taking every token, variable k,
    /// sizes off every tile.
    fn all() -> Vec<Self> {
        let threshold = RoutingPolicy::Threshold { tau: 0.5 };
        let top2 = RoutingPolicy::TopK { k: 2 };
        vec![
            Case::new(1, 1, 4, 16, 24, top2, Activation::SwiGlu, 0.0),
            Case::new(2, 37, 6, 24, 40, threshold, Activation::SwiGlu, 0.0),
            Case::new(
                3,
                50,
                5,
                16,
                32,
                RoutingPolicy::TopK { k: 1 },
                Activation::Gelu,
                0.0,
            ),
            Case::new(4, 64, 4, 8, 16, top2, Activation::SwiGlu, 40.0),
            Case::new(5, 6, 16, 16, 24, top2, Activation::Gelu, 0.0),
            Case::new(6, 90, 8, 40, 56, threshold, Activation::SwiGlu, 1.0),
        ]
    }

    fn columns(&self) -> usize {
        self.activation.input_columns(self.width)
    }
}

/// Which experts and combine implementations to differentiate.
#[derive(Clone, Copy, Debug)]
enum Path {
    HandWritten,
    TensorOps,
}

/// `sum(combine(experts(x), weights) * probe)` and its gradients for x, w_in, w_out and the
/// routing weights, with every float in `dtype`.
fn loss_and_gradients<B: MoeBackend>(
    case: &Case,
    path: Path,
    dtype: DType,
) -> (f64, [Vec<f64>; 4]) {
    type A<B> = Autodiff<B>;
    let device = Default::default();
    let x: Tensor<A<B>, 2> = float_tensor(&case.x, [case.tokens, case.d], dtype).require_grad();
    let w_in: Tensor<A<B>, 3> =
        float_tensor(&case.w_in, [case.experts, case.d, case.columns()], dtype).require_grad();
    let w_out: Tensor<A<B>, 3> =
        float_tensor(&case.w_out, [case.experts, case.width, case.d], dtype).require_grad();
    let ids = Tensor::<A<B>, 1, Int>::from_data(
        TensorData::new(case.expert_ids.clone(), [case.expert_ids.len()]),
        &device,
    )
    .reshape([case.tokens, case.slots]);
    let shape = ExpertShape {
        num_tokens: case.tokens,
        slots: case.slots,
        num_experts: case.experts,
        d_model: case.d,
        width: case.width,
    };
    let tile_rows = B::moe_tile_rows(&shape, case.activation, x.dtype(), &device);
    let dispatch: Dispatch<A<B>> = A::<B>::moe_dispatch(ids, case.experts, tile_rows);
    let rows: ExpertRows<A<B>> = match path {
        Path::HandWritten => expert_backward::experts(
            x.clone(),
            &dispatch,
            w_in.clone(),
            w_out.clone(),
            case.activation,
        ),
        Path::TensorOps => tensor_ops::experts(
            x.clone(),
            &dispatch,
            w_in.clone(),
            w_out.clone(),
            case.activation,
        ),
    };
    let weights: Tensor<A<B>, 2> =
        float_tensor(&case.weights, [case.tokens, case.slots], dtype).require_grad();
    let output = match path {
        Path::HandWritten => combine_backward::combine(rows, weights.clone(), &dispatch),
        Path::TensorOps => tensor_ops::combine(rows, weights.clone(), &dispatch),
    };
    let loss = (output * float_tensor(&case.probe, [case.tokens, case.d], dtype)).sum();
    let value = host_f64(loss.clone())[0];
    let grads = loss.backward();
    let host = |grad: Option<Tensor<B, 2>>| host_f64(grad.expect("a gradient"));
    let host3 = |grad: Option<Tensor<B, 3>>| host_f64(grad.expect("a gradient"));
    (
        value,
        [
            host(x.grad(&grads)),
            host3(w_in.grad(&grads)),
            host3(w_out.grad(&grads)),
            host(weights.grad(&grads)),
        ],
    )
}

/// Hand-written gradients on backend `B` in `dtype` equal autodiff's of the tensor ops on
/// NdArray in f32 (relative error below `tolerance` for the input, both weights and the routing
/// weights; unused slots get exactly zero); experts
/// without rows get exactly zero gradients. GELU allows at least 1e-3: Burn differentiates its
/// exact (erf) GELU with the tanh approximation's derivative (3e-4 off here), the hand-written
/// backward uses the exact derivative (`feed_forward::tests` checks it against f64 differences).
fn hand_written_backward_matches_autodiff<B: MoeBackend>(dtype: DType, tolerance: f64) {
    for case in Case::all() {
        let (want_loss, want) =
            loss_and_gradients::<TestBackend>(&case, Path::TensorOps, DType::F32);
        take_fallbacks();
        let (loss, got) = loss_and_gradients::<B>(&case, Path::HandWritten, dtype);
        assert_eq!(take_fallbacks(), vec![], "every kernel ran");
        let context = format!(
            "{dtype:?} T={} E={} d={} F={} {:?}",
            case.tokens, case.experts, case.d, case.width, case.activation
        );
        let tolerance = match case.activation {
            Activation::SwiGlu => tolerance,
            Activation::Gelu => tolerance.max(1e-3),
        };
        assert!(
            (loss - want_loss).abs() <= tolerance * (1.0 + want_loss.abs()),
            "{context}: loss {loss} vs {want_loss}"
        );
        for (name, got, want) in [
            ("x", &got[0], &want[0]),
            ("w_in", &got[1], &want[1]),
            ("w_out", &got[2], &want[2]),
            ("weights", &got[3], &want[3]),
        ] {
            let error = relative_error(got, want);
            assert!(
                error < tolerance,
                "{context}: d{name} relative error {error:.2e}"
            );
            assert!(
                want.iter().any(|&v| v != 0.0),
                "{context}: d{name} must not be all zeros"
            );
        }
        for (slot, id) in case.expert_ids.iter().enumerate() {
            if *id < 0 {
                assert_eq!(got[3][slot], 0.0, "{context}: unused slot {slot}");
            }
        }
        // An expert that received no row has an exactly zero weight gradient.
        let per_expert = case.d * case.columns();
        for e in 0..case.experts {
            let is_used = case.expert_ids.contains(&(e as i32));
            let block = &got[1][e * per_expert..(e + 1) * per_expert];
            assert_eq!(
                block.iter().any(|&v| v != 0.0),
                is_used,
                "{context}: expert {e}"
            );
        }
    }
}

#[test]
fn hand_written_backward_matches_autodiff_on_ndarray() {
    hand_written_backward_matches_autodiff::<TestBackend>(DType::F32, 1e-4);
}

#[cfg(feature = "cubecl")]
#[test]
fn hand_written_backward_on_the_kernels_matches_autodiff_on_wgpu() {
    type Wgpu = burn_cubecl::CubeBackend<cubecl::wgpu::WgpuRuntime, f32, i32, u32>;
    hand_written_backward_matches_autodiff::<Wgpu>(DType::F32, 1e-4);
}

/// The kernels on CUDA: f32 (portable path) and bf16 (tensor cores).
#[cfg(feature = "cubecl")]
mod cuda {
    use super::*;
    type Cuda = burn_cubecl::CubeBackend<cubecl::cuda::CudaRuntime, f32, i32, u8>;

    #[test]
    #[ignore = "needs an NVIDIA GPU: run with --include-ignored (just test-gpu)"]
    fn hand_written_backward_on_the_kernels_matches_autodiff_on_cuda() {
        hand_written_backward_matches_autodiff::<Cuda>(DType::F32, 1e-4);
        hand_written_backward_matches_autodiff::<Cuda>(DType::BF16, 3e-2);
    }
}

/// Central differences of the loss in a few random coordinates of x, w_in, w_out and the
/// routing weights agree with the hand-written gradients (f32, step 1e-2: within 2% of the
/// largest gradient).
#[test]
fn hand_written_backward_matches_finite_differences() {
    let case = Case::new(
        9,
        12,
        4,
        6,
        8,
        RoutingPolicy::Threshold { tau: 0.5 },
        Activation::SwiGlu,
        0.0,
    );
    let (_, grads) = loss_and_gradients::<TestBackend>(&case, Path::HandWritten, DType::F32);
    let step = 1e-2;
    let mut pick = rng(10);
    for (which, grad) in grads.iter().enumerate() {
        let scale = grad.iter().fold(0.0f64, |m, g| m.max(g.abs()));
        let coordinates = random_values(&mut pick, 6, 1.0);
        for u in coordinates {
            let i = ((u + 1.0) / 2.0 * grad.len() as f32) as usize % grad.len();
            let at = |delta: f32| {
                let mut moved = case.clone();
                let values = match which {
                    0 => &mut moved.x,
                    1 => &mut moved.w_in,
                    2 => &mut moved.w_out,
                    _ => &mut moved.weights,
                };
                values[i] += delta;
                loss_and_gradients::<TestBackend>(&moved, Path::HandWritten, DType::F32).0
            };
            let numeric = (at(step) - at(-step)) / (2.0 * step as f64);
            assert!(
                (numeric - grad[i]).abs() <= 0.02 * scale,
                "operand {which} [{i}]: finite difference {numeric} vs gradient {}",
                grad[i]
            );
        }
    }
}
