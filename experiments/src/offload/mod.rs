//! `offload`: expert offloading measured. The experts of a model of several MoE blocks live in
//! host memory, a device cache holds a few per block, and the same routing (a trace from
//! `predict`, or the synthetic distribution of `synthetic.rs`) is replayed under every policy:
//! resident (the floor), on-demand, prefetch from each predictor, and the oracle; then prefetch
//! with injected prediction errors for the speed-up-against-accuracy curve.
//!
//! Copies: on CUDA from pinned host memory on a copy stream of its own, overlapping the kernels
//! (`cuda.rs`, through cudarc: see docs/DESIGN.md, "Expert offloading", for what CubeCL 0.10
//! offers); elsewhere with tensor ops on the compute path (no overlap: NdArray and wgpu run the
//! logic in CI, their copies are memory copies).
//!
//! Outputs in `results/offload-<backend>-<dtype>/` (see `report.rs`), written through a
//! [`RunDir`] so an interrupted run leaves nothing half-written.

#[cfg(feature = "cuda")]
mod cuda;
pub mod error;
mod plot;
mod replay;
mod report;
pub mod settings;
pub mod synthetic;

use std::path::PathBuf;

use burn::backend::ndarray::{NdArray, NdArrayDevice};
use burn::tensor::{DType, TensorData};
use moe_model::offload::{ExpertWeights, OffloadBackend, TensorStore};

use crate::backend::{BackendKind, FloatType, use_float_type};
use crate::error::ExperimentError;
use crate::run_dir::{DirKind, RunDir, RunName};
pub use error::OffloadError;
pub use replay::{PolicyResult, StoreFactory};
pub use settings::{OffloadFlags, OffloadPlan};

/// What an `offload` run measures and where it writes (`offload`'s flags).
#[derive(clap::Args)]
pub struct OffloadRequest {
    /// Settings file.
    #[arg(long, default_value = "configs/offload.toml")]
    pub config: PathBuf,
    /// Backend (cuda for the measurement; ndarray and wgpu run the logic on small shapes,
    /// copying without overlap).
    #[arg(long, value_enum, default_value_t)]
    pub backend: BackendKind,
    /// Float type of weights and activations (bf16 and f16 on cuda).
    #[arg(long, value_enum, default_value_t)]
    pub dtype: FloatType,
    /// The [quick] settings: small shapes, few steps (CI).
    #[arg(long)]
    pub quick: bool,
    #[command(flatten)]
    pub flags: OffloadFlags,
    /// Directory holding the run directories.
    #[arg(long = "results", default_value = "results")]
    pub results_root: PathBuf,
    /// Run name (default offload-<backend>-<dtype>, with -2, ... if taken).
    #[arg(long)]
    pub name: Option<String>,
    /// On cuda: copy with tensor ops on the compute path (no overlap) instead of the copy
    /// stream; the fallback the other backends use.
    #[arg(long)]
    pub tensor_copies: bool,
}

/// Runs the measurement, prints a table per shape and writes the run directory; returns it.
pub fn offload(request: OffloadRequest) -> Result<PathBuf, ExperimentError> {
    if request.backend != BackendKind::Cuda && request.dtype != FloatType::F32 {
        return Err(ExperimentError::FloatTypeUnavailable {
            dtype: request.dtype.name(),
            backend: request.backend.name(),
            reason: "offload runs bf16/f16 on CUDA only".into(),
        });
    }
    // Checks every value and the host memory before the routing is drawn.
    let plan = OffloadPlan::load(
        &request.config,
        request.quick,
        &request.flags,
        request.dtype,
    )?;
    let default_name = format!(
        "offload-{}-{}",
        request.backend.name(),
        request.dtype.name()
    );
    let name =
        RunName::parse(request.name.as_deref().unwrap_or(&default_name)).map_err(|reason| {
            ExperimentError::BadRunName {
                name: format!("--name {:?}", request.name.clone().unwrap_or_default()),
                reason,
            }
        })?;
    let run_dir = RunDir::claim_next_free(&request.results_root, &name, DirKind::Offload)?;
    let (results, copy_engine) = match request.backend {
        BackendKind::Ndarray => {
            let device = NdArrayDevice::Cpu;
            (
                run_generic::<NdArray>(&plan, request.dtype, &device)?,
                TENSOR_COPIES.to_string(),
            )
        }
        BackendKind::Wgpu => run_wgpu(&plan, request.dtype)?,
        BackendKind::Cuda => run_cuda(&plan, request.dtype, request.tensor_copies)?,
    };
    let mut markdown = String::new();
    let mut all_rows = Vec::new();
    for (index, rows) in &results {
        let table = report::table(&plan.shapes[*index], rows, request.dtype);
        println!("{table}");
        markdown.push_str(&table);
        markdown.push('\n');
        all_rows.extend(rows.iter().cloned());
    }
    let context = report::Context {
        backend: request.backend,
        dtype: request.dtype,
        copy_engine,
    };
    report::write(run_dir.staging(), &context, &plan, &results, &markdown)?;
    plot::plot(
        &all_rows,
        &format!("{} {}", request.backend.name(), request.dtype.name()),
        run_dir.staging(),
    )?;
    run_dir.commit()
}

/// Each measured shape's index in the plan and its rows.
pub type ShapeResults = Vec<(usize, Vec<PolicyResult>)>;

/// How the portable store copies.
const TENSOR_COPIES: &str = "tensor ops on the compute path (no overlap)";

/// Every shape of `plan` on backend `B` with the portable store.
fn run_generic<B: OffloadBackend>(
    plan: &OffloadPlan,
    dtype: FloatType,
    device: &B::Device,
) -> Result<ShapeResults, ExperimentError> {
    use_float_type::<B>(device, dtype, BackendKind::Ndarray).ok();
    let mut results = Vec::new();
    for (index, shape) in plan.shapes.iter().enumerate() {
        println!(
            "offload: shape {} ({} blocks x {} experts, {} slots)",
            shape.shape.name, shape.trace.num_blocks, shape.shape.num_experts, shape.shape.slots
        );
        let factory = TensorStores::<B> {
            host: host_experts(shape, plan.settings.run.seed, dtype.dtype()),
            device: device.clone(),
        };
        let rows = replay::run_shape(shape, &plan.settings.run, &factory, dtype.dtype(), device)?;
        results.push((index, rows));
    }
    Ok(results)
}

#[cfg(feature = "wgpu")]
fn run_wgpu(
    plan: &OffloadPlan,
    dtype: FloatType,
) -> Result<(ShapeResults, String), ExperimentError> {
    type Wgpu = burn_cubecl::CubeBackend<cubecl::wgpu::WgpuRuntime, f32, i32, u32>;
    crate::backend::run_on_runtime(BackendKind::Wgpu, Probe)?;
    let device = cubecl::wgpu::WgpuDevice::default();
    Ok((
        run_generic::<Wgpu>(plan, dtype, &device)?,
        TENSOR_COPIES.to_string(),
    ))
}

#[cfg(not(feature = "wgpu"))]
fn run_wgpu(_: &OffloadPlan, _: FloatType) -> Result<(ShapeResults, String), ExperimentError> {
    Err(ExperimentError::BackendNotCompiled("wgpu"))
}

#[cfg(feature = "cuda")]
fn run_cuda(
    plan: &OffloadPlan,
    dtype: FloatType,
    tensor_copies: bool,
) -> Result<(ShapeResults, String), ExperimentError> {
    crate::backend::run_on_runtime(BackendKind::Cuda, Probe)?;
    if tensor_copies {
        type Cuda = burn_cubecl::CubeBackend<cubecl::cuda::CudaRuntime, f32, i32, u8>;
        let device = cubecl::cuda::CudaDevice::default();
        use_float_type::<Cuda>(&device, dtype, BackendKind::Cuda)?;
        return Ok((
            run_generic::<Cuda>(plan, dtype, &device)?,
            TENSOR_COPIES.to_string(),
        ));
    }
    cuda::run(plan, dtype)
}

#[cfg(not(feature = "cuda"))]
fn run_cuda(
    _: &OffloadPlan,
    _: FloatType,
    _: bool,
) -> Result<(ShapeResults, String), ExperimentError> {
    Err(ExperimentError::BackendNotCompiled("cuda"))
}

/// Checks that a CubeCL runtime has a device (the probe of `run_on_runtime`), nothing more.
#[cfg(any(feature = "wgpu", feature = "cuda"))]
struct Probe;

#[cfg(any(feature = "wgpu", feature = "cuda"))]
impl crate::backend::RuntimeJob for Probe {
    type Output = ();

    fn run<R: burn_cubecl::CubeRuntime>(self, _: R::Device) -> Result<(), ExperimentError> {
        Ok(())
    }
}

/// Portable stores over host experts held as tensor data.
struct TensorStores<B: OffloadBackend> {
    host: Vec<Vec<ExpertWeights>>,
    device: B::Device,
}

impl<B: OffloadBackend> StoreFactory<B> for TensorStores<B> {
    type Store = TensorStore<B>;

    fn store(&self, slots: usize) -> Result<TensorStore<B>, OffloadError> {
        Ok(TensorStore::new(self.host.clone(), slots, &self.device))
    }
}

/// Every expert of every block of `shape`, drawn by [`ExpertValues`], as host tensor data.
pub(crate) fn host_experts(
    shape: &settings::ShapePlan,
    seed: u64,
    dtype: DType,
) -> Vec<Vec<ExpertWeights>> {
    let (d, f) = (shape.shape.d_model, shape.shape.expert_width);
    (0..shape.trace.num_blocks)
        .map(|block| {
            (0..shape.shape.num_experts)
                .map(|expert| {
                    let part = |which: u64, rows: usize, cols: usize| {
                        let values: Vec<f32> = ExpertValues::new(seed, block, expert, which, rows)
                            .take(rows * cols)
                            .collect();
                        TensorData::new(values, [rows, cols]).convert_dtype(dtype)
                    };
                    ExpertWeights {
                        w_in: part(0, d, 2 * f),
                        w_out: part(1, f, d),
                    }
                })
                .collect()
        })
        .collect()
}

/// The deterministic weights of one projection (`which`: 0 `w_in`, 1 `w_out`) of one expert,
/// in order: uniform in `[-1, 1) / sqrt(fan_in)`, from a SplitMix64 stream.
pub struct ExpertValues {
    state: u64,
    scale: f32,
}

impl ExpertValues {
    /// The stream of expert `expert` of block `block`.
    pub fn new(seed: u64, block: usize, expert: usize, which: u64, fan_in: usize) -> Self {
        Self {
            state: seed
                ^ (block as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
                ^ (expert as u64).wrapping_mul(0xBF58_476D_1CE4_E5B9)
                ^ which.wrapping_mul(0x94D0_49BB_1331_11EB),
            scale: 1.0 / (fan_in as f32).sqrt(),
        }
    }
}

impl Iterator for ExpertValues {
    type Item = f32;

    fn next(&mut self) -> Option<f32> {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        let unit = (z >> 40) as f32 / (1u64 << 24) as f32; // [0, 1)
        Some((2.0 * unit - 1.0) * self.scale)
    }
}
