//! The whole MoE layer in 16-bit floats (bf16, f16) against the same layer in f32, on the
//! kernel path, on every runtime that has the type: wgpu (f16 where the driver supports it) and
//! CUDA (both; reported as ignored without a GPU).
//!
//! The tensors are created in the 16-bit type explicitly: Burn keeps one default float type per
//! device, and tests in this process also use the device in f32.

use burn::module::Param;
use burn::tensor::{DType, Tensor, TensorData, bf16, f16};
use burn_cubecl::{CubeBackend, CubeRuntime, FloatElement};

use super::{MoeBackend, take_fallbacks};
use crate::test_support::{float_tensor_on, host_f64, host_i64, random_values, rng};
use crate::{Activation, MoeLayer, MoeLayerConfig, RoutingPolicy};

type Cube<R, F> = CubeBackend<R, F, i32, u8>;

/// A layer on `B` whose weights are the host values `(gate, w_in, w_out)`, and the input, all in
/// `dtype`.
fn layer_and_input<B: MoeBackend>(
    config: &MoeLayerConfig,
    d: usize,
    values: &[Vec<f32>; 4],
    dtype: DType,
    device: &B::Device,
) -> (MoeLayer<B>, Tensor<B, 2>) {
    let e = config.num_experts;
    let width = config.expert_width;
    let columns = config.activation.input_columns(width);
    let mut layer = config.init::<B>(d, device);
    layer.router.gate.weight =
        Param::from_tensor(float_tensor_on(&values[0], [d, e], dtype, device));
    layer.experts.w_in =
        Param::from_tensor(float_tensor_on(&values[1], [e, d, columns], dtype, device));
    layer.experts.w_out =
        Param::from_tensor(float_tensor_on(&values[2], [e, width, d], dtype, device));
    let x = float_tensor_on(&values[3], [values[3].len() / d, d], dtype, device);
    (layer, x)
}

/// Runs a decode-sized, a medium and a prefill-sized batch through the layer in `F` and in f32
/// (weights and inputs rounded to `F` for both), and compares: routing decisions equal for at
/// least 95% of the tokens, and on those tokens the outputs within 2e-2 relative error; every
/// output finite. Asserts that the kernels ran (no fallback).
fn half_layer_matches_f32<R: CubeRuntime, F: FloatElement>(device: &R::Device) {
    let round = |values: Vec<f32>| -> Vec<f32> {
        let data = TensorData::new(values.clone(), [values.len()]).convert::<F>();
        data.convert::<f32>().to_vec().expect("f32 values")
    };
    let (d, width, experts) = (64, 96, 8);
    for (seed, tokens, routing) in [
        (1, 3, RoutingPolicy::TopK { k: 2 }),
        (2, 120, RoutingPolicy::Threshold { tau: 0.5 }),
        (3, 700, RoutingPolicy::TopK { k: 2 }),
    ] {
        let config = MoeLayerConfig::new()
            .with_num_experts(experts)
            .with_expert_width(width)
            .with_activation(Activation::SwiGlu)
            .with_routing(routing);
        let mut draw = rng(seed);
        let values = [
            round(random_values(&mut draw, d * experts, 1.0)),
            round(random_values(&mut draw, experts * d * 2 * width, 0.2)),
            round(random_values(&mut draw, experts * width * d, 0.15)),
            round(random_values(&mut draw, tokens * d, 1.0)),
        ];
        let context = format!("{} {routing} T={tokens}", std::any::type_name::<F>());

        let (layer, x) = layer_and_input::<Cube<R, F>>(&config, d, &values, F::dtype(), device);
        take_fallbacks();
        let routing = layer.router.forward(x.clone());
        assert_eq!(
            routing.logits.dtype(),
            DType::F32,
            "{context}: the router decides in f32"
        );
        assert_eq!(
            routing.weights.dtype(),
            F::dtype(),
            "{context}: weights in the layer's type"
        );
        let half_ids = host_i64(routing.expert_ids);
        let half = layer.forward(x).output;
        assert_eq!(half.dtype(), F::dtype(), "{context}: output type");
        let half = host_f64(half);
        assert_eq!(take_fallbacks(), vec![], "{context}: every kernel ran");

        let (layer, x) = layer_and_input::<Cube<R, f32>>(&config, d, &values, DType::F32, device);
        let full_ids = host_i64(layer.router.forward(x.clone()).expert_ids);
        let full = host_f64(layer.forward(x).output);

        let slots = half_ids.len() / tokens;
        let same: Vec<usize> = (0..tokens)
            .filter(|&t| {
                half_ids[t * slots..(t + 1) * slots] == full_ids[t * slots..(t + 1) * slots]
            })
            .collect();
        assert!(
            same.len() * 20 >= tokens * 19,
            "{context}: only {} of {tokens} tokens routed alike",
            same.len()
        );
        assert!(
            half.iter().all(|v| v.is_finite()),
            "{context}: non-finite output"
        );
        let (mut diff, mut norm) = (0.0, 0.0);
        for &t in &same {
            for c in t * d..(t + 1) * d {
                diff += (half[c] - full[c]).powi(2);
                norm += full[c].powi(2);
            }
        }
        let error = (diff / norm).sqrt();
        assert!(error < 2e-2, "{context}: relative error {error:.2e}");
    }
}

mod wgpu {
    use cubecl::prelude::*;
    use cubecl::wgpu::{WgpuDevice, WgpuRuntime};

    use super::*;

    #[test]
    fn f16_layer_matches_f32_where_the_driver_has_f16() {
        let device = WgpuDevice::default();
        let client = WgpuRuntime::client(&device);
        if !client.properties().supports_type(f16::cube_type()) {
            moe_kernels::capability::skip_capability("this wgpu device has no f16");
            return;
        }
        half_layer_matches_f32::<WgpuRuntime, f16>(&device);
    }
}

mod cuda {
    use cubecl::cuda::{CudaDevice, CudaRuntime};

    use super::*;

    #[test]
    #[ignore = "needs an NVIDIA GPU: run with --include-ignored (just test-gpu)"]
    fn bf16_and_f16_layers_match_f32() {
        let device = CudaDevice::default();
        half_layer_matches_f32::<CudaRuntime, bf16>(&device);
        half_layer_matches_f32::<CudaRuntime, f16>(&device);
    }
}
