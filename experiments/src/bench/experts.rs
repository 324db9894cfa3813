//! The expert rows measured: the grouped GEMMs and the whole MoE layer in the run's float type, each set in
//! the same run against cuBLAS doing the same FLOPs as one dense GEMM, Burn's own matmul on the
//! same FLOPs (with `--burn-matmul`), the memory floor, and dense SwiGLU MLPs (two cuBLAS GEMMs)
//! with the same active and the same total parameters.
//!
//! GEMM rows route synthetic expert ids (uniform top-k, a mean k, or half the pairs on one
//! expert) so that load and skew are exact; layer rows run `MoeLayer::forward` with its own
//! router, whose threshold is calibrated on the batch to give the case's mean k.

use burn::module::Param;
use burn::tensor::Tensor;
use burn_cubecl::{CubeRuntime, FloatElement};
use cubecl::prelude::*;
use moe_kernels::dispatch::{DispatchOnDevice, dispatch};
use moe_kernels::grouped_gemm::{ExpertShape, device_config, input_projection, output_projection};
use moe_kernels::{Activation, RoutingPolicy};
use moe_model::{MoeLayer, MoeLayerConfig, cast_float_params};

use super::device_time::{Spinner, wall_and_device_time};
use super::expert_cases::{
    CaseKind, CaseRouting, Cube, DENSE_TOTAL_BYTES, ExpertCase, ExpertRow, micros, random,
    random_weight, repeats, synthetic_ids, tiles_label, timing_us,
};
use super::l2_flush::L2Flush;
use super::timing::{Timing, device_timing};
use super::train::train_row;
use super::{Baselines, FloatType};
use crate::error::catch_panic;

/// Measures `cases` with floats `F` (`dtype`), every device timing after an L2 `flush`. A case
/// that fails (e.g. out of device memory)
/// ends the measurements, since the device may be unusable after it; the rows measured so far
/// are kept, and the failure is returned beside them.
pub fn run<R: CubeRuntime, F: FloatElement>(
    client: &ComputeClient<R>,
    device: &R::Device,
    spinner: &Spinner<R>,
    flush: &L2Flush<R>,
    cases: &[ExpertCase],
    dtype: FloatType,
    baselines: &Baselines,
) -> (Vec<ExpertRow>, Option<String>) {
    let mut rows = Vec::new();
    for case in cases {
        println!("  measuring {}", case.label());
        let measured = catch_panic(|| match case.kind {
            CaseKind::Gemm => gemm_rows::<R, F>(client, device, flush, case, dtype, baselines),
            CaseKind::Layer => vec![layer_row::<R, F>(
                client, device, spinner, flush, case, dtype, baselines,
            )],
            CaseKind::Train => vec![train_row::<R, F>(
                client, device, flush, case, dtype, baselines,
            )],
        });
        match measured {
            Ok(case_rows) => rows.extend(case_rows),
            Err(reason) => {
                println!(
                    "  {} failed: {reason}; stopping here, the {} rows measured so far are kept",
                    case.label(),
                    rows.len()
                );
                return (rows, Some(format!("{}: {reason}", case.label())));
            }
        }
        client.memory_cleanup();
    }
    (rows, None)
}

fn handle<R: CubeRuntime, F: FloatElement, const D: usize>(
    tensor: &Tensor<Cube<R, F>, D>,
) -> cubecl::server::Handle {
    tensor.clone().into_primitive().tensor().handle
}

/// gemm1 and gemm2 of one case, against cuBLAS and (when asked) Burn's matmul on the same FLOPs.
fn gemm_rows<R: CubeRuntime, F: FloatElement>(
    client: &ComputeClient<R>,
    device: &R::Device,
    flush: &L2Flush<R>,
    case: &ExpertCase,
    dtype: FloatType,
    baselines: &Baselines,
) -> Vec<ExpertRow> {
    let (d, width, experts) = (case.d_model, case.width, case.experts);
    let shape = ExpertShape {
        num_tokens: case.tokens,
        slots: case.routing.slots(),
        num_experts: experts,
        d_model: d,
        width,
    };
    let config = device_config::<R, F>(client, &shape, Activation::SwiGlu);
    let ids = synthetic_ids(case);
    let touched = (0..experts as i32).filter(|e| ids.contains(e)).count();
    let routed_rows = ids.iter().filter(|&&id| id >= 0).count();
    let ids = client.create_from_slice(i32::as_bytes(&ids));
    let plan = dispatch::<R, i32>(client, &ids, shape.num_pairs(), experts, config.tile_rows())
        .expect("valid dispatch");

    let x = random::<R, F, 2>([case.tokens, d], device);
    let w_in = random::<R, F, 3>([experts, d, 2 * width], device);
    let w_out = random::<R, F, 3>([experts, width, d], device);
    let (x, w_in, w_out) = (handle(&x), handle(&w_in), handle(&w_out));
    let elem = dtype.size();
    let s = routed_rows;

    let first = |plan: &DispatchOnDevice| {
        input_projection::<R, F, i32>(client, &x, &w_in, plan, shape, &config.input)
            .expect("supported case")
    };
    let hidden = first(&plan);
    let flops1 = 2.0 * (s * d * 2 * width) as f64;
    let time1 = device_timing(flush, 2, repeats(flops1), || drop(first(&plan)));
    let flops2 = 2.0 * (s * width * d) as f64;
    let time2 = device_timing(flush, 2, repeats(flops2), || {
        drop(
            output_projection::<R, F, i32>(client, &hidden, &w_out, &plan, shape, &config.output)
                .expect("supported case"),
        )
    });

    let row = |op, time: Timing, flops: f64, floor_bytes, (m, n, k)| ExpertRow {
        op,
        case: case.label(),
        tiles: tiles_label(&config),
        routed_rows,
        time_us: timing_us(&time),
        wall_us: None,
        queued_us: None,
        flops,
        floor_bytes,
        cublas_us: baselines.cublas_gemm(m, n, k, dtype),
        burn_us: baselines
            .burn_matmul
            .then(|| micros(burn_matmul::<R, F>(flush, device, m, n, k).median)),
        dense_total_us: None,
        mean_k: None,
    };
    vec![
        row(
            "gemm1",
            time1,
            flops1,
            (touched * d * 2 * width + case.tokens * d + s * width) * elem,
            (s, 2 * width, d),
        ),
        row(
            "gemm2",
            time2,
            flops2,
            (touched * width * d + s * width + s * d) * elem,
            (s, d, width),
        ),
    ]
}

/// Device time of Burn's `[m, k] @ [k, n]` in `F` (tuned when Burn's autotune is on), flushed
/// like the kernels' rows.
fn burn_matmul<R: CubeRuntime, F: FloatElement>(
    flush: &L2Flush<R>,
    device: &R::Device,
    m: usize,
    n: usize,
    k: usize,
) -> Timing {
    let a = random::<R, F, 2>([m, k], device);
    let b = random::<R, F, 2>([k, n], device);
    device_timing(flush, 3, 10, || drop(a.clone().matmul(b.clone())))
}

/// The whole layer on one case: route -> dispatch -> grouped GEMMs -> combine.
fn layer_row<R: CubeRuntime, F: FloatElement>(
    client: &ComputeClient<R>,
    device: &R::Device,
    spinner: &Spinner<R>,
    flush: &L2Flush<R>,
    case: &ExpertCase,
    dtype: FloatType,
    baselines: &Baselines,
) -> ExpertRow {
    let (d, width, experts, tokens) = (case.d_model, case.width, case.experts, case.tokens);
    let policy = match case.routing {
        CaseRouting::TopK(k) => RoutingPolicy::TopK { k },
        CaseRouting::MeanK(_) | CaseRouting::Skewed => RoutingPolicy::Threshold { tau: 0.5 },
    };
    let layer: MoeLayer<Cube<R, F>> = MoeLayerConfig::new()
        .with_num_experts(experts)
        .with_expert_width(width)
        .with_routing(policy)
        .init(d, device);
    let mut layer = cast_float_params(layer, F::dtype().into());
    // The expert weights are drawn in F directly: the initialiser draws in the device's default
    // type first (f32 after the backend probe), and DeepSeek's w_in in f32 (30 GB) is larger than
    // CubeCL's largest buffer on an 80 GB card (a quarter of the memory).
    let columns = layer.experts.activation().input_columns(width);
    layer.experts.w_in =
        Param::from_tensor(random_weight::<R, F, 3>([experts, d, columns], d, device));
    layer.experts.w_out =
        Param::from_tensor(random_weight::<R, F, 3>([experts, width, d], width, device));
    let x = random::<R, F, 2>([tokens, d], device);
    if let CaseRouting::MeanK(mean) = case.routing {
        let tau = calibrated_threshold(&layer, x.clone(), mean);
        layer.router = layer
            .router
            .clone()
            .with_policy(RoutingPolicy::Threshold { tau });
    }

    let output = layer.forward(x.clone());
    let counts: Vec<i64> = output.stats.expert_counts.to_data().iter::<i64>().collect();
    let routed_rows = counts.iter().sum::<i64>() as usize;
    let touched = counts.iter().filter(|&&c| c > 0).count();
    let mean_k = routed_rows as f64 / tokens as f64;

    let flops = 2.0 * (routed_rows * 3 * width * d) as f64 + 2.0 * (tokens * d * experts) as f64;
    let time = device_timing(flush, 2, repeats(flops), || drop(layer.infer(x.clone())));
    let (wall, queued) =
        wall_and_device_time(spinner, repeats(flops), || drop(layer.infer(x.clone())));
    let shape = ExpertShape {
        num_tokens: tokens,
        slots: layer.router.policy().max_slots(),
        num_experts: experts,
        d_model: d,
        width,
    };
    let config = device_config::<R, F>(client, &shape, Activation::SwiGlu);

    // Rounded to a multiple of 128: an odd width (1.3 x 14336 = 18637) puts cuBLAS on a slow path.
    let active_width = ((mean_k * width as f64 / 128.0).round() as usize).max(1) * 128;
    let total_width = experts * width;
    let dense_bytes = (d * 3 * total_width + tokens * 3 * total_width) * dtype.size();
    ExpertRow {
        op: "layer",
        case: case.label(),
        tiles: tiles_label(&config),
        routed_rows,
        time_us: timing_us(&time),
        wall_us: Some(micros(wall)),
        queued_us: Some(micros(queued)),
        flops,
        floor_bytes: (touched * 3 * width * d + 2 * tokens * d + d * experts) * dtype.size(),
        cublas_us: baselines.dense_mlp(tokens, d, active_width, dtype),
        burn_us: None,
        dense_total_us: (dense_bytes <= DENSE_TOTAL_BYTES && case.tokens >= 4096)
            .then(|| baselines.dense_mlp(tokens, d, total_width, dtype)),
        mean_k: Some(mean_k),
    }
}

/// The threshold at which threshold routing gives `mean_k` experts per token on `x`: halfway
/// between the top-1 router probabilities on either side of their `(mean_k - 1)` quantile, so
/// the rounding of a probability cannot move a token across it (at T = 1 the threshold sat on
/// the token's own probability, and runs flipped between one and two experts).
fn calibrated_threshold<R: CubeRuntime, F: FloatElement>(
    layer: &MoeLayer<Cube<R, F>>,
    x: Tensor<Cube<R, F>, 2>,
    mean_k: f64,
) -> f64 {
    let logits = layer.router.logits(x); // [T, E]
    let top: Tensor<Cube<R, F>, 2> = burn::tensor::activation::softmax(logits, 1).max_dim(1);
    let mut top: Vec<f64> = top.to_data().iter::<f64>().collect();
    top.sort_by(f64::total_cmp);
    let below = ((mean_k - 1.0) * top.len() as f64).round() as usize;
    // Tokens whose top-1 probability is below tau use two experts: the first `below` of them.
    let upper = top.get(below).copied().unwrap_or(1.0);
    let lower = below
        .checked_sub(1)
        .and_then(|i| top.get(i))
        .copied()
        .unwrap_or(0.0);
    (lower + upper) / 2.0
}
