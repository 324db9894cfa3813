//! Where the commands that run through [`run_on`] get their concrete backend: `--backend
//! ndarray|wgpu|cuda` picks one here (`offload` names its own, for its copy engines).

use burn::backend::Autodiff;
use burn::backend::ndarray::{NdArray, NdArrayDevice};
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor};
pub use moe_model::FloatType;
use moe_model::{FfnConfig, MoeAutodiffBackend};
use serde::{Deserialize, Serialize};

use crate::error::{ExperimentError, catch_panic};

/// Backend that metrics and saved results are computed on (host memory).
pub type MetricsBackend = NdArray;

/// The backends a run can use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// CPU, pure Rust (the default: runs everywhere).
    #[default]
    Ndarray,
    /// CubeCL kernels on Vulkan/Metal/WebGPU (lavapipe on a CPU-only machine).
    Wgpu,
    /// CubeCL kernels on an NVIDIA GPU (needs the driver and NVRTC at run time).
    Cuda,
}

impl BackendKind {
    /// The name used on the command line.
    pub fn name(&self) -> &'static str {
        match self {
            BackendKind::Ndarray => "ndarray",
            BackendKind::Wgpu => "wgpu",
            BackendKind::Cuda => "cuda",
        }
    }
}

/// Makes `dtype` the float type of every tensor created on `device` from now on. Burn keeps one
/// default per device, fixed by the first tensor created there, so this must come before any
/// (the backend probe creates its tensor with an explicit type for that reason).
pub fn use_float_type<B: Backend>(
    device: &B::Device,
    dtype: FloatType,
    backend: BackendKind,
) -> Result<(), ExperimentError> {
    let int = <B::IntElem as burn::tensor::Element>::dtype();
    burn::tensor::set_default_dtypes::<B>(device, dtype.dtype(), int).map_err(|error| {
        ExperimentError::FloatTypeUnavailable {
            dtype: dtype.name(),
            backend: backend.name(),
            reason: error.to_string(),
        }
    })
}

/// Checks that `device` has the float type a feed-forward's products run in (mixed precision),
/// so a run stops with a message instead of a panic at the first cast.
pub fn check_compute_type<B: Backend>(
    ffn: &FfnConfig,
    device: &B::Device,
) -> Result<(), ExperimentError> {
    match ffn.compute_type() {
        Some(compute) if !B::supports_dtype(device, compute.dtype().into()) => {
            Err(ExperimentError::ComputeTypeUnavailable {
                compute: compute.name(),
                device: format!("{device:?}"),
            })
        }
        _ => Ok(()),
    }
}

/// Work that can run on any training backend; [`run_on`] picks the backend at run time.
pub trait BackendJob {
    /// What the job returns.
    type Output;

    /// Runs the job on backend `B` (the autodiff wrapper of the chosen backend) and `device`.
    fn run<B: MoeAutodiffBackend>(self, device: B::Device)
    -> Result<Self::Output, ExperimentError>;
}

/// Runs `job` on the backend `kind`, after checking that it was compiled in and has a device.
pub fn run_on<J: BackendJob>(kind: BackendKind, job: J) -> Result<J::Output, ExperimentError> {
    match kind {
        BackendKind::Ndarray => job.run::<Autodiff<NdArray>>(NdArrayDevice::Cpu),
        BackendKind::Wgpu => run_on_wgpu(job),
        BackendKind::Cuda => run_on_cuda(job),
    }
}

/// The largest buffer one allocation may take on the device of `kind` (CubeCL refuses larger
/// ones); `None` for ndarray, whose memory is the host's. Call once the backend was found usable.
pub fn max_buffer_bytes(kind: BackendKind) -> Option<u64> {
    match kind {
        #[cfg(feature = "wgpu")]
        BackendKind::Wgpu => Some(max_page_size::<cubecl::wgpu::WgpuRuntime>()),
        #[cfg(feature = "cuda")]
        BackendKind::Cuda => Some(max_page_size::<cubecl::cuda::CudaRuntime>()),
        _ => None,
    }
}

#[cfg(any(feature = "wgpu", feature = "cuda"))]
fn max_page_size<R: cubecl::Runtime>() -> u64 {
    R::client(&Default::default())
        .properties()
        .memory
        .max_page_size
}

/// Work that drives CubeCL kernels directly (the benchmarks): needs the wgpu or CUDA runtime.
#[cfg(any(feature = "wgpu", feature = "cuda"))]
pub trait RuntimeJob {
    /// What the job returns.
    type Output;

    /// Runs the job on CubeCL runtime `R` and `device`.
    fn run<R: burn_cubecl::CubeRuntime>(
        self,
        device: R::Device,
    ) -> Result<Self::Output, ExperimentError>;
}

/// Runs `job` on the CubeCL runtime of `kind` (wgpu or cuda), after checking it has a device.
#[cfg(any(feature = "wgpu", feature = "cuda"))]
pub fn run_on_runtime<J: RuntimeJob>(
    kind: BackendKind,
    job: J,
) -> Result<J::Output, ExperimentError> {
    match kind {
        BackendKind::Ndarray => Err(ExperimentError::NeedsCubecl),
        #[cfg(feature = "wgpu")]
        BackendKind::Wgpu => {
            let device = cubecl::wgpu::WgpuDevice::default();
            probe::<CubeWgpu>(&device, "wgpu")?;
            job.run::<cubecl::wgpu::WgpuRuntime>(device)
        }
        #[cfg(feature = "cuda")]
        BackendKind::Cuda => {
            let device = cubecl::cuda::CudaDevice::default();
            probe::<CubeCuda>(&device, "cuda")?;
            note_autotune();
            job.run::<cubecl::cuda::CudaRuntime>(device)
        }
        #[allow(unreachable_patterns)]
        other => Err(ExperimentError::BackendNotCompiled(other.name())),
    }
}

/// Whether the CubeCL runtime of `kind` was compiled in and has a device that answers.
#[cfg(any(feature = "wgpu", feature = "cuda"))]
pub fn runtime_available(kind: BackendKind) -> bool {
    match kind {
        #[cfg(feature = "wgpu")]
        BackendKind::Wgpu => probe::<CubeWgpu>(&Default::default(), "wgpu").is_ok(),
        #[cfg(feature = "cuda")]
        BackendKind::Cuda => probe::<CubeCuda>(&Default::default(), "cuda").is_ok(),
        _ => false,
    }
}

/// The wgpu backend: CubeCL kernels, no fusion (the MoE kernels are reachable from it).
#[cfg(feature = "wgpu")]
type CubeWgpu = burn_cubecl::CubeBackend<cubecl::wgpu::WgpuRuntime, f32, i32, u32>;
/// The CUDA backend: CubeCL kernels, no fusion (the MoE kernels are reachable from it).
#[cfg(feature = "cuda")]
type CubeCuda = burn_cubecl::CubeBackend<cubecl::cuda::CudaRuntime, f32, i32, u8>;

#[cfg(feature = "wgpu")]
fn run_on_wgpu<J: BackendJob>(job: J) -> Result<J::Output, ExperimentError> {
    let device = cubecl::wgpu::WgpuDevice::default();
    probe::<CubeWgpu>(&device, "wgpu")?;
    job.run::<Autodiff<CubeWgpu>>(device)
}

#[cfg(not(feature = "wgpu"))]
fn run_on_wgpu<J: BackendJob>(_: J) -> Result<J::Output, ExperimentError> {
    Err(ExperimentError::BackendNotCompiled("wgpu"))
}

#[cfg(feature = "cuda")]
fn run_on_cuda<J: BackendJob>(job: J) -> Result<J::Output, ExperimentError> {
    let device = cubecl::cuda::CudaDevice::default();
    probe::<CubeCuda>(&device, "cuda")?;
    note_autotune();
    job.run::<Autodiff<CubeCuda>>(device)
}

/// Says up front why the first steps of a CUDA run can be slow: Burn tunes its matmuls there.
#[cfg(feature = "cuda")]
fn note_autotune() {
    println!(
        "cuda: Burn's matmuls autotune each new shape on first use (up to minutes per shape on \
         a large GPU; kept under target/autotune for later runs; CUBECL_AUTOTUNE_LEVEL=minimal \
         tunes less)"
    );
}

#[cfg(not(feature = "cuda"))]
fn run_on_cuda<J: BackendJob>(_: J) -> Result<J::Output, ExperimentError> {
    Err(ExperimentError::BackendNotCompiled("cuda"))
}

/// Runs a tiny computation on `device`; a backend without a usable device panics inside Burn or
/// CubeCL, which becomes an error naming the backend.
#[cfg_attr(not(any(feature = "wgpu", feature = "cuda")), allow(dead_code))]
fn probe<B: Backend>(device: &B::Device, backend: &'static str) -> Result<(), ExperimentError> {
    catch_panic(|| Tensor::<B, 1>::ones([1], (device, DType::F32)).into_data())
        .map(|_| ())
        .map_err(|reason| ExperimentError::BackendUnavailable { backend, reason })
}
