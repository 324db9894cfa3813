//! Kernel benchmarks on a CubeCL runtime: the routing stage (route, dispatch, combine against Burn
//! tensor ops and the memory floor) and the experts (grouped GEMMs and the whole layer against
//! cuBLAS, Burn's matmul, the memory floor and dense MLPs), every ratio measured in the same run.
//! The memory floor divides bytes by the read-stream bandwidth (16-byte loads, [`bandwidth`]);
//! the copy bandwidth is reported beside it.
//!
//! Timing: after warm-up (compilation, autotuning), GEMM, layer and train rows and their cuBLAS
//! and Burn baselines take the median of repeated device timings, the L2 cache flushed before
//! each repetition ([`l2_flush`]), and report the range; routing rows and layer rows also give
//! the wall time of back-to-back calls, which includes the host's launch overhead, and the time
//! on a busy device (see [`device_time`]); those run back to back, L2 warm, and the tables say
//! which columns are timed which way.

mod bandwidth;
#[cfg(feature = "cuda")]
mod cublas;
mod device_time;
mod expert_cases;
mod experts;
mod l2_flush;
mod report;
mod routing;
#[cfg(test)]
mod tests;
mod timing;
mod train;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use burn_cubecl::{CubeRuntime, FloatElement};
use cubecl::prelude::*;

pub use crate::backend::FloatType;
use crate::backend::{BackendKind, RuntimeJob, run_on_runtime};
use crate::error::ExperimentError;
use crate::run_dir::{DirKind, RunDir, RunName};

/// What to benchmark and where to write the tables (`bench`'s flags).
#[derive(clap::Args)]
pub struct BenchRequest {
    /// CubeCL backend to run on (default: CUDA when a device answers, else wgpu).
    #[arg(long, value_enum)]
    pub backend: Option<BackendKind>,
    /// Float type of the expert rows; routing rows are f32 (default: bf16 on CUDA, the tensor
    /// cores a GPU user means to time; f32 on wgpu).
    #[arg(long, value_enum)]
    pub dtype: Option<FloatType>,
    /// Fewer, smaller cases of every kind (CI, CPU-emulated devices).
    #[arg(long)]
    pub quick: bool,
    /// Only the cases whose label contains this text, e.g. `--case T=65536` or `--case layer`.
    #[arg(long = "case")]
    pub case_filter: Option<String>,
    /// Also time Burn's matmul on each grouped GEMM's FLOPs (autotunes each new shape first).
    #[arg(long)]
    pub burn_matmul: bool,
    /// Directory holding the run directories.
    #[arg(long = "results", default_value = "results")]
    pub results_root: PathBuf,
}

/// One measured routing case.
#[derive(Clone, Debug)]
pub struct BenchRow {
    /// Operation (`route`, `dispatch`, `route+dispatch`, `combine`).
    pub op: &'static str,
    /// Shape and policy of the case.
    pub case: String,
    /// Wall time per call of the kernel path, back to back (launch overhead included).
    pub kernel_wall: Duration,
    /// Device time per call of the kernel path (launch overhead hidden).
    pub kernel_device: Duration,
    /// Bytes that must be read and written once.
    pub floor_bytes: usize,
    /// Wall time per call of the same work with Burn tensor ops on the same backend, back to back.
    pub tensor_ops: Duration,
}

/// Runs the benchmarks, prints the tables and writes `results/bench-<backend>-<dtype>/`
/// (`routing.csv`, `experts.csv`, `bench.json`). Checks the request, and claims the output
/// directory, before touching a device; the directory appears only once every table is written.
pub fn bench(request: BenchRequest) -> Result<PathBuf, ExperimentError> {
    let routing_cases = routing::cases(request.quick);
    let expert_cases = expert_cases::cases(request.quick);
    let (routing_cases, expert_cases) =
        select(routing_cases, expert_cases, request.case_filter.as_deref())?;
    let backend = match request.backend {
        Some(backend) => backend,
        None => pick_backend(),
    };
    let dtype = request.dtype.unwrap_or_else(|| default_dtype(backend));
    let name = RunName::parse(&format!("bench-{}-{}", backend.name(), dtype.name()))
        .expect("backend and dtype names make valid run names");
    let run_dir = RunDir::claim_next_free(&request.results_root, &name, DirKind::Bench)?;
    run_on_runtime(
        backend,
        BenchJob {
            request,
            backend,
            dtype,
            routing_cases,
            expert_cases,
            run_dir,
        },
    )
}

/// The float type of a bench without `--dtype`: bf16 on CUDA (f32 would time the portable path,
/// not the tensor cores), f32 elsewhere; says which.
fn default_dtype(backend: BackendKind) -> FloatType {
    let dtype = match backend {
        BackendKind::Cuda => FloatType::Bf16,
        _ => FloatType::F32,
    };
    println!(
        "bench: no --dtype given, timing {} on {}",
        dtype.name(),
        backend.name()
    );
    dtype
}

/// CUDA when a device answers, else wgpu; says which.
fn pick_backend() -> BackendKind {
    let backend = [BackendKind::Cuda, BackendKind::Wgpu]
        .into_iter()
        .find(|&kind| crate::backend::runtime_available(kind))
        .unwrap_or(BackendKind::Wgpu);
    println!(
        "bench: no --backend given, using {} (the best backend with a device here)",
        backend.name()
    );
    backend
}

/// The routing and expert cases whose labels contain `filter` (all without one); an error naming
/// every case when none matches.
fn select(
    routing_cases: Vec<routing::Case>,
    expert_cases: Vec<expert_cases::ExpertCase>,
    filter: Option<&str>,
) -> Result<(Vec<routing::Case>, Vec<expert_cases::ExpertCase>), ExperimentError> {
    let Some(filter) = filter else {
        return Ok((routing_cases, expert_cases));
    };
    let labels: Vec<String> = routing_cases
        .iter()
        .map(routing::Case::label)
        .chain(expert_cases.iter().map(expert_cases::ExpertCase::label))
        .collect();
    let routing_cases: Vec<_> = routing_cases
        .into_iter()
        .filter(|case| case.label().contains(filter))
        .collect();
    let expert_cases: Vec<_> = expert_cases
        .into_iter()
        .filter(|case| case.label().contains(filter))
        .collect();
    if routing_cases.is_empty() && expert_cases.is_empty() {
        return Err(ExperimentError::NoBenchCase {
            filter: filter.to_owned(),
            cases: labels.join(", "),
        });
    }
    Ok((routing_cases, expert_cases))
}

/// A checked [`BenchRequest`], the cases it selects and where the tables go.
struct BenchJob {
    request: BenchRequest,
    backend: BackendKind,
    /// The expert rows' float type (`--dtype`, or the backend's default).
    dtype: FloatType,
    routing_cases: Vec<routing::Case>,
    expert_cases: Vec<expert_cases::ExpertCase>,
    run_dir: RunDir,
}

impl RuntimeJob for BenchJob {
    type Output = PathBuf;

    fn run<R: CubeRuntime>(self, device: R::Device) -> Result<PathBuf, ExperimentError> {
        type Probe<R> = burn_cubecl::CubeBackend<R, f32, i32, u32>;
        let dtype = self.dtype;
        if !<Probe<R> as burn::tensor::backend::Backend>::supports_dtype(&device, dtype.dtype()) {
            return Err(ExperimentError::FloatTypeUnavailable {
                dtype: dtype.name(),
                backend: self.backend.name(),
                reason: format!("the device has no {}", dtype.name()),
            });
        }
        match dtype {
            FloatType::F32 => self.run_typed::<R, f32>(device),
            FloatType::Bf16 => self.run_typed::<R, half::bf16>(device),
            FloatType::F16 => self.run_typed::<R, half::f16>(device),
        }
    }
}

impl BenchJob {
    fn run_typed<R: CubeRuntime, F: FloatElement>(
        self,
        device: R::Device,
    ) -> Result<PathBuf, ExperimentError> {
        let client = R::client(&device);
        let quick = self.request.quick;
        let bandwidths = bandwidth::Bandwidths::measure(&client, quick);
        let flush = l2_flush::L2Flush::new(&client, l2_flush::flush_bytes(quick));
        println!(
            "{} backend, {}, measured copy bandwidth {:.0} GB/s (read + write, 4-byte loads), \
             read stream {:.0} GB/s (16-byte loads; the floors divide by this one); device \
             timings flush L2 with a {} MiB write before each repetition",
            self.backend.name(),
            self.dtype.name(),
            bandwidths.copy / 1e9,
            bandwidths.read / 1e9,
            flush.bytes() >> 20
        );
        let baselines = Baselines::new(self.backend, self.request.burn_matmul, flush.bytes());
        let context = report::Context {
            backend: self.backend,
            dtype: self.dtype,
            bandwidths,
            l2_flush_bytes: flush.bytes(),
            cublas: baselines.cublas_status(),
        };
        let spinner = device_time::Spinner::calibrate(&client);
        let routing_rows = routing::run::<R>(&client, &spinner, &device, self.routing_cases, quick);
        if !routing_rows.is_empty() {
            println!("{}", report::routing_table(&routing_rows, &context));
        }
        println!("cuBLAS baseline: {}", context.cublas);
        let (expert_rows, failure) = experts::run::<R, F>(
            &client,
            &device,
            &spinner,
            &flush,
            &self.expert_cases,
            self.dtype,
            &baselines,
        );
        if !expert_rows.is_empty() {
            println!("{}", report::experts_table(&expert_rows, &context));
        }
        if let Some(reason) = failure
            && expert_rows.is_empty()
        {
            // Every expert case failed: nothing of what was asked for was measured.
            return Err(ExperimentError::BenchFailed(reason));
        }
        report::write(
            self.run_dir.staging(),
            &context,
            &routing_rows,
            &expert_rows,
        )?;
        self.run_dir.commit()
    }
}

/// The dense baselines a run can compare with: cuBLAS (CUDA, when it loads) and Burn's matmul
/// (when asked for).
pub struct Baselines {
    #[cfg(feature = "cuda")]
    cublas: Result<cublas::Cublas, String>,
    #[cfg(not(feature = "cuda"))]
    cublas: Result<(), String>,
    /// Time Burn's matmul on the grouped GEMMs' FLOPs.
    pub burn_matmul: bool,
}

impl Baselines {
    /// The baselines of a run on `backend`; cuBLAS flushes L2 with a write of `flush_bytes`
    /// before each timed GEMM, as the kernels' timings do.
    fn new(backend: BackendKind, burn_matmul: bool, flush_bytes: usize) -> Self {
        let unavailable = |why: &str| Err(format!("cuBLAS unavailable: {why}"));
        #[cfg(feature = "cuda")]
        let cublas = if backend == BackendKind::Cuda {
            cublas::Cublas::new(flush_bytes)
        } else {
            unavailable("not a CUDA run")
        };
        #[cfg(not(feature = "cuda"))]
        let cublas = {
            let _ = (backend, flush_bytes);
            unavailable("built without the cuda feature")
        };
        Self {
            cublas,
            burn_matmul,
        }
    }

    /// `available` or why cuBLAS is not.
    fn cublas_status(&self) -> String {
        match &self.cublas {
            Ok(_) => "available".into(),
            Err(why) => why.clone(),
        }
    }

    /// Median microseconds of cuBLAS's `[m, k] @ [k, n]` (L2 flushed between repetitions), or
    /// why there is none.
    pub fn cublas_gemm(
        &self,
        m: usize,
        n: usize,
        k: usize,
        dtype: FloatType,
    ) -> Result<f64, String> {
        #[cfg(feature = "cuda")]
        {
            let cublas = self.cublas.as_ref().map_err(Clone::clone)?;
            let repeats = if 2.0 * (m * n * k) as f64 > 1e12 {
                10
            } else {
                30
            };
            cublas
                .gemm(m, n, k, dtype, repeats)
                .map(|t| t.median.as_secs_f64() * 1e6)
        }
        #[cfg(not(feature = "cuda"))]
        {
            let _ = (m, n, k, dtype);
            Err(self.cublas.clone().unwrap_err())
        }
    }

    /// Median microseconds of a dense SwiGLU MLP of hidden `width` on `tokens` rows as two cuBLAS
    /// GEMMs (gate and up together, then down; the activation's pass is not counted).
    pub fn dense_mlp(
        &self,
        tokens: usize,
        d_model: usize,
        width: usize,
        dtype: FloatType,
    ) -> Result<f64, String> {
        Ok(self.cublas_gemm(tokens, 2 * width, d_model, dtype)?
            + self.cublas_gemm(tokens, d_model, width, dtype)?)
    }
}

impl Baselines {
    /// Median microseconds of a dense SwiGLU MLP's forward + backward as six cuBLAS GEMMs of the
    /// training step's shapes (forward two, input gradients two, weight gradients two).
    pub fn dense_mlp_train(
        &self,
        tokens: usize,
        d_model: usize,
        width: usize,
        dtype: FloatType,
    ) -> Result<f64, String> {
        Ok(self.dense_mlp(tokens, d_model, width, dtype)?
            + self.cublas_gemm(tokens, width, d_model, dtype)?
            + self.cublas_gemm(tokens, d_model, 2 * width, dtype)?
            + self.cublas_gemm(width, d_model, tokens, dtype)?
            + self.cublas_gemm(d_model, 2 * width, tokens, dtype)?)
    }
}

/// The device the rows were measured on, as far as the runtime tells.
fn device_name(backend: BackendKind) -> String {
    #[cfg(feature = "cuda")]
    if backend == BackendKind::Cuda
        && let Ok(description) = cublas::device_description()
    {
        return description;
    }
    backend.name().to_string()
}

/// Times `iterations` back-to-back calls of `work` followed by one device sync.
pub fn time_per_call<R: Runtime>(
    client: &ComputeClient<R>,
    iterations: usize,
    mut work: impl FnMut(),
) -> Duration {
    for _ in 0..iterations.min(10) {
        work();
    }
    sync(client);
    let start = Instant::now();
    for _ in 0..iterations {
        work();
    }
    sync(client);
    start.elapsed() / iterations as u32
}

/// Waits until the device has finished all submitted work.
pub fn sync<R: Runtime>(client: &ComputeClient<R>) {
    cubecl::future::block_on(client.sync()).expect("device sync");
}
