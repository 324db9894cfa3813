//! The expert benchmark's cases and what every expert row shares: the shapes and routings
//! measured ([`cases`]), the row a measurement produces ([`ExpertRow`]), the synthetic routing of
//! GEMM rows, random operands and the units rows are printed in.

use std::time::Duration;

use burn::tensor::{Distribution, Tensor};
use burn_cubecl::{CubeBackend, CubeRuntime, FloatElement};
use moe_kernels::grouped_gemm::ExpertGemmConfig;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde::Serialize;

use super::timing::Timing;

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
