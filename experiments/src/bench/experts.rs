//! Expert cases: the grouped GEMMs and the whole MoE layer in the run's float type, each set in
//! the same run against cuBLAS doing the same FLOPs as one dense GEMM, Burn's own matmul on the
//! same FLOPs (with `--burn-matmul`), the memory floor, and dense SwiGLU MLPs (two cuBLAS GEMMs)
//! with the same active and the same total parameters.
//!
//! GEMM rows route synthetic expert ids (uniform top-k, a mean k, or half the pairs on one
//! expert) so that load and skew are exact; layer rows run `MoeLayer::forward` with its own
//! router, whose threshold is calibrated on the batch to give the case's mean k.

use std::time::Duration;

use burn::module::Param;
use burn::tensor::{Distribution, Tensor};
use burn_cubecl::{CubeBackend, CubeRuntime, FloatElement};
use cubecl::prelude::*;
use moe_kernels::dispatch::{DispatchOnDevice, dispatch};
use moe_kernels::grouped_gemm::{
    ExpertGemmConfig, ExpertShape, device_config, input_projection, output_projection,
};
use moe_kernels::{Activation, RoutingPolicy};
use moe_model::{MoeLayer, MoeLayerConfig, cast_float_params};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde::Serialize;

use super::device_time::{Spinner, wall_and_device_time};
use super::timing::{Timing, device_timing};
use super::train::train_row;
use super::{Baselines, FloatType};
use crate::error::catch_panic;

pub(super) type Cube<R, F> = CubeBackend<R, F, i32, u8>;

/// Largest dense-MLP operands (bytes) the total-parameter baseline allocates.
pub(super) const DENSE_TOTAL_BYTES: usize = 24 << 30;

/// How a case's tokens pick experts.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum CaseRouting {
    /// `k` distinct experts per token, uniformly.
    TopK(usize),
    /// One or two experts per token, two with probability `mean_k - 1` (GEMM rows), or threshold
    /// routing calibrated to this mean k (layer rows).
    MeanK(f64),
    /// Top-2 with every token's first expert the same one: half of the pairs on one expert.
    Skewed,
}

impl CaseRouting {
    fn label(&self) -> String {
        match self {
            CaseRouting::TopK(k) => format!("top-{k}"),
            CaseRouting::MeanK(mean) => format!("mean-k {mean}"),
            CaseRouting::Skewed => "top-2 skewed".into(),
        }
    }

    pub(super) fn slots(&self) -> usize {
        match self {
            CaseRouting::TopK(k) => *k,
            CaseRouting::MeanK(_) | CaseRouting::Skewed => 2,
        }
    }
}

/// What a case measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CaseKind {
    /// Both grouped GEMMs on a synthetic routing.
    Gemm,
    /// The whole layer, route to combine.
    Layer,
    /// Forward + backward of the experts and combine (`train.rs`).
    Train,
}

/// One expert benchmark shape.
#[derive(Clone, Debug)]
pub struct ExpertCase {
    /// Model family the sizes come from.
    pub model: &'static str,
    /// Tokens T.
    pub tokens: usize,
    /// Model width d.
    pub d_model: usize,
    /// Expert width F.
    pub width: usize,
    /// Experts E.
    pub experts: usize,
    /// How tokens pick experts.
    pub routing: CaseRouting,
    /// GEMM rows, a layer row or a training row.
    pub kind: CaseKind,
}

impl ExpertCase {
    /// How the table names the case, e.g. `layer mixtral T=4096 mean-k 1.3`.
    pub fn label(&self) -> String {
        let kind = match self.kind {
            CaseKind::Gemm => "gemm",
            CaseKind::Layer => "layer",
            CaseKind::Train => "train",
        };
        format!(
            "{kind} {} T={} {}",
            self.model,
            self.tokens,
            self.routing.label()
        )
    }
}

/// The expert cases: the shapes, or small ones of every kind when `quick`.
pub fn cases(quick: bool) -> Vec<ExpertCase> {
    let case = |model, (d_model, width, experts), tokens, routing, kind| ExpertCase {
        model,
        tokens,
        d_model,
        width,
        experts,
        routing,
        kind,
    };
    let mean = CaseRouting::MeanK(1.3);
    let top = CaseRouting::TopK;
    if quick {
        let small = (128, 96, 8);
        return vec![
            case("small", small, 4, top(2), CaseKind::Gemm),
            case("small", small, 512, mean, CaseKind::Gemm),
            case("small", small, 512, CaseRouting::Skewed, CaseKind::Gemm),
            case("small", small, 4, mean, CaseKind::Layer),
            case("small", small, 512, top(2), CaseKind::Layer),
            case("small", small, 512, mean, CaseKind::Train),
        ];
    }
    let mixtral = (4096, 14336, 8);
    let fine = (2048, 1408, 64);
    let deepseek = (7168, 2048, 256);
    let mut all = vec![
        case("mixtral", mixtral, 4096, mean, CaseKind::Gemm),
        case("mixtral", mixtral, 16384, mean, CaseKind::Gemm),
        case("fine-grained", fine, 16384, top(2), CaseKind::Gemm),
        case("deepseek", deepseek, 4096, top(8), CaseKind::Gemm),
        case("mixtral", mixtral, 4096, top(2), CaseKind::Gemm),
        case(
            "mixtral",
            mixtral,
            4096,
            CaseRouting::Skewed,
            CaseKind::Gemm,
        ),
    ];
    for tokens in [1, 16, 128] {
        all.push(case("mixtral", mixtral, tokens, mean, CaseKind::Layer));
        all.push(case("mixtral", mixtral, tokens, top(2), CaseKind::Layer));
    }
    all.extend([
        case("mixtral", mixtral, 4096, mean, CaseKind::Layer),
        case("mixtral", mixtral, 4096, top(2), CaseKind::Layer),
        case("mixtral", mixtral, 16384, mean, CaseKind::Layer),
        case("fine-grained", fine, 16384, top(2), CaseKind::Layer),
        case("deepseek", deepseek, 4096, top(8), CaseKind::Layer),
        case("mixtral", mixtral, 4096, mean, CaseKind::Train),
        case("mixtral", mixtral, 4096, top(2), CaseKind::Train),
        case("fine-grained", fine, 16384, top(2), CaseKind::Train),
    ]);
    all
}

/// One measured expert row.
#[derive(Clone, Debug, Serialize)]
pub struct ExpertRow {
    /// `gemm1` (gather + gate/up + SwiGLU), `gemm2` (output projection) or `layer`.
    pub op: &'static str,
    /// The case's label.
    pub case: String,
    /// Tile class the size rule picked, with the tiles of the two projections.
    pub tiles: String,
    /// Routed rows S (token, expert pairs).
    pub routed_rows: usize,
    /// Device time of the kernel path (median, min, max in microseconds).
    pub time_us: [f64; 3],
    /// Layer rows: wall time per forward, back to back, launch overhead included (us).
    pub wall_us: Option<f64>,
    /// Layer rows: device time per forward queued behind a busy device (us).
    pub queued_us: Option<f64>,
    /// FLOPs counted on routed pairs only.
    pub flops: f64,
    /// Bytes that must move once: touched experts' weights and the activations.
    pub floor_bytes: usize,
    /// cuBLAS median (us): one dense GEMM with the same FLOPs (layer: the dense MLP with the same
    /// active parameters; train: its forward + backward), or why it is missing.
    pub cublas_us: Result<f64, String>,
    /// Burn's matmul median (us) on the same FLOPs, when asked for; train rows: the per-expert
    /// tensor-op path (Burn matmuls) on the same step, wall time.
    pub burn_us: Option<f64>,
    /// Layer rows: the dense MLP with the same total parameters (two cuBLAS GEMMs), when it fits.
    pub dense_total_us: Option<Result<f64, String>>,
    /// Layer rows: mean k of the batch.
    pub mean_k: Option<f64>,
}

/// Measures `cases` with floats `F` (`dtype`). A case that fails (e.g. out of device memory)
/// ends the measurements, since the device may be unusable after it; the rows measured so far
/// are kept, and the failure is returned beside them.
pub fn run<R: CubeRuntime, F: FloatElement>(
    client: &ComputeClient<R>,
    device: &R::Device,
    spinner: &Spinner<R>,
    cases: &[ExpertCase],
    dtype: FloatType,
    baselines: &Baselines,
) -> (Vec<ExpertRow>, Option<String>) {
    let mut rows = Vec::new();
    for case in cases {
        println!("  measuring {}", case.label());
        let measured = catch_panic(|| match case.kind {
            CaseKind::Gemm => gemm_rows::<R, F>(client, device, case, dtype, baselines),
            CaseKind::Layer => vec![layer_row::<R, F>(
                client, device, spinner, case, dtype, baselines,
            )],
            CaseKind::Train => vec![train_row::<R, F>(client, device, case, dtype, baselines)],
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

/// Repetitions of a measurement: fewer for long kernels.
pub(super) fn repeats(flops: f64) -> usize {
    if flops > 1e12 { 10 } else { 30 }
}

pub(super) fn micros(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e6
}

pub(super) fn timing_us(timing: &Timing) -> [f64; 3] {
    [
        micros(timing.median),
        micros(timing.min),
        micros(timing.max),
    ]
}

pub(super) fn tiles_label(config: &ExpertGemmConfig) -> String {
    let tiles = |p: &moe_kernels::grouped_gemm::GemmParams| {
        let split = if p.split_k > 1 {
            format!(" split {}", p.split_k)
        } else {
            String::new()
        };
        format!("{}x{}x{}{split}", p.tile_rows, p.tile_cols, p.stage_depth)
    };
    format!(
        "{} {} / {}",
        config.class,
        tiles(&config.input),
        tiles(&config.output)
    )
}

/// Synthetic expert ids `[T, 2 or k]` (-1 unused) for the case's routing.
pub(super) fn synthetic_ids(case: &ExpertCase) -> Vec<i32> {
    let mut rng = StdRng::seed_from_u64(case.tokens as u64 * 31 + case.experts as u64);
    let slots = case.routing.slots();
    let mut ids = Vec::with_capacity(case.tokens * slots);
    for _ in 0..case.tokens {
        let used = match case.routing {
            CaseRouting::TopK(k) => k,
            CaseRouting::MeanK(mean) => 1 + usize::from(rng.random_range(0.0..1.0) < mean - 1.0),
            CaseRouting::Skewed => 2,
        };
        let mut chosen: Vec<i32> = Vec::with_capacity(slots);
        if case.routing == CaseRouting::Skewed {
            chosen.push(0);
        }
        while chosen.len() < used {
            let expert = rng.random_range(0..case.experts) as i32;
            if !chosen.contains(&expert) {
                chosen.push(expert);
            }
        }
        chosen.resize(slots, -1);
        ids.extend(chosen);
    }
    ids
}

/// Random `[dims]` values of `F` on the device (`F` explicitly: the device's default float type
/// is whichever backend set it up first, f32 for the backend probe).
pub(super) fn random<R: CubeRuntime, F: FloatElement, const D: usize>(
    dims: [usize; D],
    device: &R::Device,
) -> Tensor<Cube<R, F>, D> {
    Tensor::random(dims, Distribution::Uniform(-1.0, 1.0), (device, F::dtype()))
}

/// A random weight `[dims]` of `F` drawn from N(0, 1/fan_in), like the model's initialiser.
pub(super) fn random_weight<R: CubeRuntime, F: FloatElement, const D: usize>(
    dims: [usize; D],
    fan_in: usize,
    device: &R::Device,
) -> Tensor<Cube<R, F>, D> {
    let std = 1.0 / (fan_in as f64).sqrt();
    Tensor::random(dims, Distribution::Normal(0.0, std), (device, F::dtype()))
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
    let time1 = device_timing(client, 2, repeats(flops1), || drop(first(&plan)));
    let flops2 = 2.0 * (s * width * d) as f64;
    let time2 = device_timing(client, 2, repeats(flops2), || {
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
            .then(|| micros(burn_matmul::<R, F>(client, device, m, n, k).median)),
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

/// Device time of Burn's `[m, k] @ [k, n]` in `F` (tuned when Burn's autotune is on).
fn burn_matmul<R: CubeRuntime, F: FloatElement>(
    client: &ComputeClient<R>,
    device: &R::Device,
    m: usize,
    n: usize,
    k: usize,
) -> Timing {
    let a = random::<R, F, 2>([m, k], device);
    let b = random::<R, F, 2>([k, n], device);
    device_timing(client, 3, 10, || drop(a.clone().matmul(b.clone())))
}

/// The whole layer on one case: route -> dispatch -> grouped GEMMs -> combine.
fn layer_row<R: CubeRuntime, F: FloatElement>(
    client: &ComputeClient<R>,
    device: &R::Device,
    spinner: &Spinner<R>,
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
    let time = device_timing(client, 2, repeats(flops), || drop(layer.infer(x.clone())));
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
