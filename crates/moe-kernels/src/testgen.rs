//! One test body, every runtime: `runtime_tests!` stamps generic kernel tests for wgpu and CUDA.
//!
//! wgpu tests run wherever a Vulkan/Metal driver exists (Mesa's lavapipe on CPU-only machines).
//! CUDA tests are `#[ignore]`d so that a machine without a GPU reports them as skipped; run them
//! on a GPU with `cargo test --release -p moe-kernels -- --include-ignored` (`just test-gpu`).

use cubecl::prelude::*;
use half::{bf16, f16};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::capability::skip_capability;
use crate::dispatch::DispatchOnDevice;
use crate::dispatch::reference::DispatchPlan;

/// A seeded generator: kernel tests draw random inputs, reproducibly.
pub fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

/// `len` values drawn uniformly from `[-scale, scale)`.
pub fn random_f32(rng: &mut StdRng, len: usize, scale: f32) -> Vec<f32> {
    (0..len).map(|_| rng.random_range(-scale..scale)).collect()
}

/// `len` random values of type `F` from `[-scale, scale)` (seeded), and the same values as the
/// kernel sees them (rounded to `F`) in f32, for the reference.
pub fn random_rounded<F: HostFloat>(seed: u64, len: usize, scale: f32) -> (Vec<F>, Vec<f32>) {
    let values: Vec<F> = random_f32(&mut rng(seed), len, scale)
        .into_iter()
        .map(F::from_f32)
        .collect();
    let host = values.iter().map(|v| v.to_host()).collect();
    (values, host)
}

/// Copies `values` to a new device buffer.
pub fn upload<R: Runtime, E: CubeElement>(
    client: &ComputeClient<R>,
    values: &[E],
) -> cubecl::server::Handle {
    client.create_from_slice(E::as_bytes(values))
}

/// Reads a device buffer back as `E` values.
pub fn download<R: Runtime, E: CubeElement>(
    client: &ComputeClient<R>,
    handle: cubecl::server::Handle,
) -> Vec<E> {
    E::from_bytes(&client.read_one_unchecked(handle)).to_vec()
}

/// Uploads a host dispatch `plan` of `num_pairs` pairs over `num_experts` experts.
pub fn upload_plan<R: Runtime>(
    client: &ComputeClient<R>,
    plan: &DispatchPlan,
    num_pairs: usize,
    num_experts: usize,
) -> DispatchOnDevice {
    DispatchOnDevice {
        expert_offsets: upload(client, &plan.expert_offsets),
        routed_pairs: upload(client, &plan.routed_pairs),
        row_of_pair: upload(client, &plan.row_of_pair),
        tiles: upload(client, &plan.tiles.concat()),
        num_tiles: upload(client, &[plan.num_tiles]),
        num_pairs,
        num_experts,
        tile_rows: plan.tile_rows,
    }
}

/// A float type the tests upload: converts from and to f32 on the host.
pub trait HostFloat: Float + CubeElement {
    /// Largest relative error ||out - ref|| / ||ref|| accepted for outputs of this type.
    const TOLERANCE: f64;
    /// The nearest value of this type.
    fn from_f32(value: f32) -> Self;
    /// The value as f32.
    fn to_host(self) -> f32;
}

impl HostFloat for f32 {
    const TOLERANCE: f64 = 1e-5;
    fn from_f32(value: f32) -> Self {
        value
    }
    fn to_host(self) -> f32 {
        self
    }
}

impl HostFloat for bf16 {
    const TOLERANCE: f64 = 2e-2;
    fn from_f32(value: f32) -> Self {
        bf16::from_f32(value)
    }
    fn to_host(self) -> f32 {
        bf16::to_f32(self)
    }
}

impl HostFloat for f16 {
    const TOLERANCE: f64 = 2e-2;
    fn from_f32(value: f32) -> Self {
        f16::from_f32(value)
    }
    fn to_host(self) -> f32 {
        f16::to_f32(self)
    }
}

/// Runs `check_bf16` and `check_f16` where the device has the type; says so where it does not.
pub fn for_half_types<R: Runtime>(
    client: &ComputeClient<R>,
    check_bf16: impl Fn(&ComputeClient<R>),
    check_f16: impl Fn(&ComputeClient<R>),
) {
    for (name, ty, check) in [
        (
            "bf16",
            bf16::cube_type(),
            &check_bf16 as &dyn Fn(&ComputeClient<R>),
        ),
        ("f16", f16::cube_type(), &check_f16),
    ] {
        match client.properties().supports_type(ty) {
            true => check(client),
            false => skip_capability(&format!("this device has no {name}")),
        }
    }
}

/// ||got - want|| / ||want||; `got` and `want` must be as long (an empty or cut result is a
/// failure, not a perfect score).
pub fn relative_error(got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len(), "result and reference lengths differ");
    let (mut diff, mut norm) = (0.0, 0.0);
    for (&g, &w) in got.iter().zip(want) {
        diff += (g as f64 - w).powi(2);
        norm += w * w;
    }
    (diff / norm.max(1e-300)).sqrt()
}

/// Stamps each listed generic test `fn name<R: Runtime>(client: ComputeClient<R>)` as
/// `wgpu::name` and `cuda::name` (the latter ignored unless asked for: it needs an NVIDIA GPU).
#[macro_export]
macro_rules! runtime_tests {
    ($($test:ident),* $(,)?) => {
        #[cfg(feature = "wgpu")]
        mod wgpu {
            $(
                #[test]
                fn $test() {
                    let client = <cubecl::wgpu::WgpuRuntime as cubecl::Runtime>::client(&Default::default());
                    super::$test::<cubecl::wgpu::WgpuRuntime>(client);
                }
            )*
        }

        #[cfg(feature = "cuda")]
        mod cuda {
            $(
                #[test]
                #[ignore = "needs an NVIDIA GPU: run with --include-ignored (just test-gpu)"]
                fn $test() {
                    let client = <cubecl::cuda::CudaRuntime as cubecl::Runtime>::client(&Default::default());
                    super::$test::<cubecl::cuda::CudaRuntime>(client);
                }
            )*
        }
    };
}
