//! Offloading never changes results: a model of several MoE blocks run through the offloading
//! engine (any slot count, any policy, experts evicted and reloaded between batches) gives the
//! same bits as the same blocks with every expert resident (`MoeLayer::infer`). NdArray (tensor
//! ops), wgpu (the portable kernels) and CUDA in bf16 (tensor cores; ignored without a GPU).

use burn::tensor::{DType, FloatDType, Tensor, TensorData};
use rand::RngExt;

use super::*;
use crate::test_support::{random_values, rng};
use crate::{MoeLayer, MoeLayerConfig, RoutingPolicy, cast_float_params};

const BLOCKS: usize = 3;

/// Blocks of `config` on `device` in `dtype`, and their experts as host weights.
fn model<B: OffloadBackend>(
    config: &MoeLayerConfig,
    d: usize,
    dtype: DType,
    device: &B::Device,
) -> (Vec<MoeLayer<B>>, Vec<Vec<ExpertWeights>>) {
    let float = match dtype {
        DType::BF16 => FloatDType::BF16,
        DType::F16 => FloatDType::F16,
        _ => FloatDType::F32,
    };
    let layers: Vec<MoeLayer<B>> = (0..BLOCKS)
        .map(|_| cast_float_params(config.init::<B>(d, device), float))
        .collect();
    let host = layers
        .iter()
        .map(|layer| {
            let (w_in, w_out) = (layer.experts.w_in.val(), layer.experts.w_out.val());
            (0..config.num_experts)
                .map(|e| ExpertWeights::from_stacked(&w_in, &w_out, e))
                .collect()
        })
        .collect();
    (layers, host)
}

fn input<B: OffloadBackend>(
    seed: u64,
    tokens: usize,
    d: usize,
    dtype: DType,
    device: &B::Device,
) -> Tensor<B, 2> {
    let values = random_values(&mut rng(seed), tokens * d, 1.0);
    Tensor::from_data(TensorData::new(values, [tokens, d]), (device, dtype))
}

/// The bits of a float tensor.
fn bits<B: OffloadBackend>(tensor: Tensor<B, 2>) -> Vec<u8> {
    tensor.into_data().bytes.to_vec()
}

/// Runs the resident blocks on `x`, recording each block's routing as the host sees it.
fn resident<B: OffloadBackend>(
    layers: &[MoeLayer<B>],
    x: Tensor<B, 2>,
) -> (Tensor<B, 2>, Vec<BlockRouting<B>>) {
    let mut x = x;
    let mut routings = Vec::new();
    for layer in layers {
        let (routing, _) = layer.control.route(&layer.router, x.clone());
        let slots = routing.expert_ids.dims()[1];
        let expert_ids = routing
            .expert_ids
            .clone()
            .into_data()
            .convert::<i32>()
            .to_vec::<i32>()
            .expect("i32 ids");
        routings.push(BlockRouting {
            expert_ids,
            slots,
            weights: routing.weights,
            predicted: Vec::new(),
        });
        x = layer.infer(x);
    }
    (x, routings)
}

/// Every policy and slot count, over batches of several sizes on the same engine (so experts
/// are evicted and reloaded), gives the resident output bit for bit.
fn offloaded_equals_resident<B: OffloadBackend>(
    d: usize,
    width: usize,
    token_counts: &[usize],
    dtype: DType,
    device: &B::Device,
) {
    let experts = 6;
    for (seed, routing) in [
        (1, RoutingPolicy::TopK { k: 2 }),
        (2, RoutingPolicy::Threshold { tau: 0.5 }),
        (3, RoutingPolicy::TopP { p: 0.8, max_k: 3 }),
    ] {
        let config = MoeLayerConfig::new()
            .with_num_experts(experts)
            .with_expert_width(width)
            .with_routing(routing);
        let (layers, host) = model::<B>(&config, d, dtype, device);
        let shape = BlockShape {
            num_experts: experts,
            d_model: d,
            width,
            activation: config.activation,
        };
        let policies = [
            (OffloadPolicy::Resident, experts),
            (OffloadPolicy::OnDemand, 1),
            (OffloadPolicy::OnDemand, 2),
            (OffloadPolicy::OnDemand, 4),
            (
                OffloadPolicy::Prefetch {
                    predictor: "random".into(),
                },
                2,
            ),
            (OffloadPolicy::Oracle, 3),
        ];
        for (policy, slots) in policies {
            let store = TensorStore::<B>::new(host.clone(), slots, device);
            let mut engine = OffloadEngine::new(store, shape, policy.clone(), 1).unwrap();
            if policy == OffloadPolicy::Resident {
                engine.preload();
            }
            let mut draw = rng(seed + 100);
            for (batch, &tokens) in token_counts.iter().enumerate() {
                let x = input::<B>(seed * 10 + batch as u64, tokens, d, dtype, device);
                let (expected, mut routings) = resident(&layers, x.clone());
                for routing in &mut routings {
                    // A predictor that is right about some experts and wrong about others.
                    routing.predicted = (0..experts).filter(|_| draw.random_bool(0.5)).collect();
                }
                let context = format!("{routing} {policy} slots={slots} T={tokens}");
                let got = match batch % 2 {
                    0 => engine.run_batch(x, &routings),
                    _ => (0..BLOCKS).fold(x, |x, l| engine.forward_block(l, x, &routings[l])),
                };
                assert_eq!(bits(got), bits(expected), "{context}");
            }
            let stats = engine.stats();
            assert_eq!(stats.hits + stats.misses, stats.expert_uses, "{policy}");
            match policy {
                OffloadPolicy::Resident => assert_eq!(stats.misses, 0, "resident never copies"),
                _ => assert!(
                    stats.misses > 0,
                    "{policy} slots={slots}: a cold cache misses"
                ),
            }
        }
    }
}

#[cfg(feature = "ndarray")]
#[test]
fn offloaded_forward_equals_resident_forward_on_ndarray() {
    offloaded_equals_resident::<burn::backend::NdArray>(
        12,
        10,
        &[40, 1, 7, 40, 3],
        DType::F32,
        &Default::default(),
    );
}

#[cfg(feature = "cubecl")]
mod wgpu {
    use ::cubecl::wgpu::{WgpuDevice, WgpuRuntime};
    use burn_cubecl::CubeBackend;

    use super::*;

    #[test]
    fn offloaded_forward_equals_resident_forward_on_wgpu() {
        offloaded_equals_resident::<CubeBackend<WgpuRuntime, f32, i32, u32>>(
            24,
            20,
            &[70, 1, 9, 70, 2],
            DType::F32,
            &WgpuDevice::default(),
        );
    }
}

#[cfg(feature = "cubecl")]
mod cuda {
    use ::cubecl::cuda::{CudaDevice, CudaRuntime};
    use burn_cubecl::CubeBackend;

    use super::*;

    /// bf16 on tensor cores: decode batches (split-K, whose split count depends on the number of
    /// experts), medium and prefill classes.
    #[test]
    #[ignore = "needs an NVIDIA GPU: run with --include-ignored (just test-gpu)"]
    fn offloaded_forward_equals_resident_forward_on_cuda_bf16() {
        offloaded_equals_resident::<CubeBackend<CudaRuntime, f32, i32, u8>>(
            128,
            192,
            &[300, 1, 16, 300, 40],
            DType::BF16,
            &CudaDevice::default(),
        );
    }
}
