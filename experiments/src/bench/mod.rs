//! Kernel benchmarks: each case is timed on the chosen CubeCL runtime and set against the same
//! work done with Burn tensor ops on the same device and against its memory floor.
//!
//! Timing: after warm-up (compilation, autotuning), `iterations` back-to-back launches of the
//! case, then one device sync; the time per iteration is the wall time over `iterations`. It
//! includes launch overhead, which dominates at decode sizes.

mod bandwidth;
mod routing;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use burn_cubecl::CubeRuntime;
use cubecl::prelude::*;

use crate::backend::{BackendKind, RuntimeJob, run_on_runtime};
use crate::error::ExperimentError;
use crate::run_dir::RunDir;

/// What to benchmark and where to write the table.
pub struct BenchRequest {
    /// CubeCL backend to run on (wgpu or cuda).
    pub backend: BackendKind,
    /// Fewer and smaller cases (for CI and CPU-emulated devices).
    pub quick: bool,
    /// Directory holding the run directories (`results`).
    pub results_root: PathBuf,
}

/// One measured case.
#[derive(Clone, Debug)]
pub struct BenchRow {
    /// Operation (`route`, `dispatch`, `route+dispatch`, `combine`).
    pub op: &'static str,
    /// Shape and policy of the case.
    pub case: String,
    /// Time per call of the kernel path.
    pub kernel: Duration,
    /// Bytes that must be read and written once.
    pub floor_bytes: usize,
    /// Time per call of the same work with Burn tensor ops on the same backend.
    pub tensor_ops: Duration,
}

/// Runs the routing benchmarks, prints the table and writes `results/<run>/routing.csv`.
pub fn bench(request: BenchRequest) -> Result<PathBuf, ExperimentError> {
    run_on_runtime(request.backend, request)
}

impl RuntimeJob for BenchRequest {
    type Output = PathBuf;

    fn run<R: CubeRuntime>(self, device: R::Device) -> Result<PathBuf, ExperimentError> {
        let client = R::client(&device);
        let copy_bandwidth = bandwidth::copy_bandwidth(&client, self.quick);
        println!(
            "{} backend, measured copy bandwidth {:.0} GB/s (read + write)",
            self.backend.name(),
            copy_bandwidth / 1e9
        );
        let rows = routing::run::<R>(&client, &device, self.quick);
        let table = render(&rows, copy_bandwidth);
        println!("{table}");

        let name = format!("bench-routing-{}", self.backend.name());
        let run_dir = RunDir::create(&self.results_root, None, &name, false)?;
        let csv_path = run_dir.path.join("routing.csv");
        std::fs::write(&csv_path, csv(&rows, copy_bandwidth))
            .map_err(ExperimentError::io(&csv_path))?;
        Ok(csv_path)
    }
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

fn micros(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e6
}

fn render(rows: &[BenchRow], copy_bandwidth: f64) -> String {
    let mut lines = vec![format!(
        "{:<15} {:<34} {:>10} {:>9} {:>10} {:>14} {:>9}",
        "op", "case", "kernel us", "GB/s", "x floor", "tensor-ops us", "speed-up"
    )];
    for row in rows {
        let floor = row.floor_bytes as f64 / copy_bandwidth;
        let kernel = row.kernel.as_secs_f64();
        lines.push(format!(
            "{:<15} {:<34} {:>10.1} {:>9.0} {:>10.1} {:>14.1} {:>8.1}x",
            row.op,
            row.case,
            micros(row.kernel),
            row.floor_bytes as f64 / kernel / 1e9,
            kernel / floor,
            micros(row.tensor_ops),
            row.tensor_ops.as_secs_f64() / kernel,
        ));
    }
    lines.join("\n")
}

fn csv(rows: &[BenchRow], copy_bandwidth: f64) -> String {
    let mut out = String::from(
        "op,case,kernel_us,floor_bytes,achieved_gb_s,floor_us,ratio_to_floor,tensor_ops_us,speedup\n",
    );
    for row in rows {
        let kernel = row.kernel.as_secs_f64();
        let floor = row.floor_bytes as f64 / copy_bandwidth;
        out.push_str(&format!(
            "{},{},{:.3},{},{:.1},{:.3},{:.2},{:.3},{:.2}\n",
            row.op,
            row.case,
            micros(row.kernel),
            row.floor_bytes,
            row.floor_bytes as f64 / kernel / 1e9,
            floor * 1e6,
            kernel / floor,
            micros(row.tensor_ops),
            row.tensor_ops.as_secs_f64() / kernel
        ));
    }
    out
}
