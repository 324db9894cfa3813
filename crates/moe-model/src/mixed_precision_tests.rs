//! Mixed precision (`compute_type`): an MoE layer and a dense MLP with f32 parameters whose
//! products run in bf16 or f16, against the same modules computing in f32, forward and backward,
//! on every runtime that has the type: CUDA (bf16 and f16; ignored without a GPU) and wgpu (f16
//! where the driver has it).
//!
//! The weights and inputs are rounded to the 16-bit type for both sides, so what differs is the
//! rounding of the products' activations and outputs. The router runs in f32 on both sides, so
//! the routing decisions are the same exactly.

use burn::backend::Autodiff;
use burn::module::Param;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorData};
use burn_cubecl::{CubeBackend, CubeRuntime};

use crate::backend_ext::take_fallbacks;
use crate::test_support::{float_tensor_on, host_f64, random_values, relative_error, rng};
use crate::{Activation, DenseMlp, DenseMlpConfig, FloatType, MoeLayerConfig, RoutingPolicy};

type Mixed<R> = Autodiff<CubeBackend<R, f32, i32, u8>>;

/// Relative error allowed on outputs and gradients: 16-bit products (8 or 11 bits of mantissa),
/// up to three of them deep on the backward.
const TOLERANCE: f64 = 3e-2;

/// Host values rounded to `compute`.
fn rounded(values: Vec<f32>, compute: FloatType) -> Vec<f32> {
    let data = TensorData::new(values.clone(), [values.len()]);
    let data = match compute {
        FloatType::Bf16 => data.convert::<burn::tensor::bf16>(),
        FloatType::F16 => data.convert::<burn::tensor::f16>(),
        FloatType::F32 => data,
    };
    data.convert::<f32>().to_vec().expect("f32 values")
}

/// An f32 tensor of `values` that requires a gradient.
fn leaf<B: Backend, const D: usize>(
    values: &[f32],
    shape: [usize; D],
    device: &B::Device,
) -> Tensor<Autodiff<B>, D>
where
    Autodiff<B>: Backend<Device = B::Device>,
{
    float_tensor_on::<Autodiff<B>, D>(values, shape, DType::F32, device).require_grad()
}

/// Compares one output or gradient of the mixed module with the f32 module's: f32 (the master
/// weights' type), finite, within [`TOLERANCE`]; returns the relative error.
fn assert_close<B: Backend, const D: usize>(
    got: Tensor<B, D>,
    want: Tensor<B, D>,
    what: &str,
    context: &str,
) -> f64 {
    assert_eq!(got.dtype(), DType::F32, "{context}: {what} type");
    let (got, want) = (host_f64(got), host_f64(want));
    assert!(
        got.iter().all(|v| v.is_finite()),
        "{context}: {what} not finite"
    );
    let error = relative_error(&got, &want);
    assert!(
        error < TOLERANCE,
        "{context}: {what}: relative error {error:.2e}"
    );
    error
}

/// The output of a module whose products ran in 16 bits is not the f32 output: its hidden
/// activations were rounded to 8 or 11 bits of mantissa (about 1e-3 relative), far above f32's
/// 1e-7. Catches a `compute_type` that is accepted but not applied.
fn assert_rounded(output_error: f64, context: &str) {
    assert!(
        output_error > 1e-5,
        "{context}: output within {output_error:.1e} of f32: the products did not run in 16 bits"
    );
}

/// The MoE layer with `compute` products against the f32 layer: output, and the gradients of the
/// input, the router and both expert weights; every kernel ran (no fallback).
fn moe_layer_matches_f32<R: CubeRuntime>(compute: FloatType, device: &R::Device) {
    // One batch: the casts do not depend on its size, and on CUDA every size class compiles its
    // own tensor-core kernels (minutes per class for the forward and backward).
    let (d, width, experts) = (64, 96, 8);
    let (seed, tokens, routing) = (2, 200, RoutingPolicy::Threshold { tau: 0.5 });
    let context = format!("moe {} {routing} T={tokens}", compute.name());
    let mut draw = rng(seed);
    let mut values = |len, scale| rounded(random_values(&mut draw, len, scale), compute);
    let gate = values(d * experts, 1.0);
    let w_in = values(experts * d * 2 * width, 0.2);
    let w_out = values(experts * width * d, 0.15);
    let x = values(tokens * d, 1.0);
    let probe = values(tokens * d, 1.0);

    let run = |compute_type: Option<FloatType>| {
        let mut layer = MoeLayerConfig::new()
            .with_num_experts(experts)
            .with_expert_width(width)
            .with_activation(Activation::SwiGlu)
            .with_routing(routing)
            .with_compute_type(compute_type)
            .init::<Mixed<R>>(d, device);
        layer.router.gate.weight = Param::from_tensor(leaf(&gate, [d, experts], device));
        layer.experts.w_in = Param::from_tensor(leaf(&w_in, [experts, d, 2 * width], device));
        layer.experts.w_out = Param::from_tensor(leaf(&w_out, [experts, width, d], device));
        let x = leaf::<CubeBackend<R, f32, i32, u8>, 2>(&x, [tokens, d], device);
        let output = layer.forward(x.clone()).output;
        let probe = float_tensor_on(&probe, [tokens, d], DType::F32, device);
        let grads = (output.clone() * probe).sum().backward();
        (
            output.inner(),
            x.grad(&grads).expect("x gradient"),
            layer
                .router
                .gate
                .weight
                .grad(&grads)
                .expect("router gradient"),
            layer.experts.w_in.grad(&grads).expect("w_in gradient"),
            layer.experts.w_out.grad(&grads).expect("w_out gradient"),
        )
    };
    take_fallbacks();
    let mixed = run(Some(compute));
    assert_eq!(take_fallbacks(), vec![], "{context}: every kernel ran");
    let full = run(None);
    assert_rounded(assert_close(mixed.0, full.0, "output", &context), &context);
    assert_close(mixed.1, full.1, "x gradient", &context);
    assert_close(mixed.2, full.2, "router gradient", &context);
    assert_close(mixed.3, full.3, "w_in gradient", &context);
    assert_close(mixed.4, full.4, "w_out gradient", &context);
}

/// The dense MLP with `compute` products against the f32 MLP: output and every gradient.
fn dense_mlp_matches_f32<R: CubeRuntime>(compute: FloatType, device: &R::Device) {
    let (tokens, d, width) = (50, 64, 96);
    let context = format!("dense {}", compute.name());
    let mut draw = rng(9);
    let mut values = |len, scale| rounded(random_values(&mut draw, len, scale), compute);
    let w_in = values(d * 2 * width, 0.2);
    let w_out = values(width * d, 0.15);
    let x = values(tokens * d, 1.0);
    let probe = values(tokens * d, 1.0);
    let run = |compute_type: Option<FloatType>| {
        let mut mlp: DenseMlp<Mixed<R>> = DenseMlpConfig::new()
            .with_width(width)
            .with_compute_type(compute_type)
            .init(d, device);
        mlp.w_in = Param::from_tensor(leaf(&w_in, [d, 2 * width], device));
        mlp.w_out = Param::from_tensor(leaf(&w_out, [width, d], device));
        let x = leaf::<CubeBackend<R, f32, i32, u8>, 2>(&x, [tokens, d], device);
        let output = mlp.forward(x.clone());
        let probe = float_tensor_on(&probe, [tokens, d], DType::F32, device);
        let grads = (output.clone() * probe).sum().backward();
        (
            output.inner(),
            x.grad(&grads).expect("x gradient"),
            mlp.w_in.grad(&grads).expect("w_in gradient"),
            mlp.w_out.grad(&grads).expect("w_out gradient"),
        )
    };
    let (mixed, full) = (run(Some(compute)), run(None));
    assert_rounded(assert_close(mixed.0, full.0, "output", &context), &context);
    assert_close(mixed.1, full.1, "x gradient", &context);
    assert_close(mixed.2, full.2, "w_in gradient", &context);
    assert_close(mixed.3, full.3, "w_out gradient", &context);
}

/// Both modules in `compute` where the device has the type.
fn mixed_precision_matches_f32<R: CubeRuntime>(compute: FloatType, device: &R::Device) {
    if !Mixed::<R>::supports_dtype(device, compute.dtype().into()) {
        moe_kernels::capability::skip_capability(&format!("this device has no {}", compute.name()));
        return;
    }
    moe_layer_matches_f32::<R>(compute, device);
    dense_mlp_matches_f32::<R>(compute, device);
}

mod wgpu {
    use cubecl::wgpu::{WgpuDevice, WgpuRuntime};

    use super::*;

    #[test]
    fn f16_products_match_f32_where_the_driver_has_f16() {
        mixed_precision_matches_f32::<WgpuRuntime>(FloatType::F16, &WgpuDevice::default());
    }
}

mod cuda {
    use cubecl::cuda::{CudaDevice, CudaRuntime};

    use super::*;

    #[test]
    #[ignore = "needs an NVIDIA GPU: run with --include-ignored (just test-gpu)"]
    fn bf16_products_match_f32() {
        mixed_precision_matches_f32::<CudaRuntime>(FloatType::Bf16, &CudaDevice::default());
    }

    #[test]
    #[ignore = "needs an NVIDIA GPU: run with --include-ignored (just test-gpu)"]
    fn f16_products_match_f32() {
        mixed_precision_matches_f32::<CudaRuntime>(FloatType::F16, &CudaDevice::default());
    }
}
