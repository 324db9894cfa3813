//! Kernel benchmarks: each case is timed on the chosen CubeCL runtime and set against the same
//! work done with Burn tensor ops on the same device and against its memory floor.
//!
//! Timing: after warm-up (compilation, autotuning), `iterations` back-to-back launches of the
//! case, then one device sync; the wall time per iteration includes the host's launch overhead,
//! which dominates at decode sizes. Kernels are also timed on the device alone (queued behind a
//! busy device, see [`device_time`]): what a busy stream or a replayed launch graph would see.

mod bandwidth;
mod device_time;
mod routing;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use burn_cubecl::CubeRuntime;
use cubecl::prelude::*;

use crate::backend::{BackendKind, RuntimeJob, run_on_runtime};
use crate::error::ExperimentError;
use crate::run_dir::{RunDir, RunName};

/// What to benchmark and where to write the table.
pub struct BenchRequest {
    /// CubeCL backend to run on (wgpu or cuda).
    pub backend: BackendKind,
    /// Fewer and smaller cases (for CI and CPU-emulated devices).
    pub quick: bool,
    /// Only the cases whose label contains this text (e.g. `T=65536`).
    pub case_filter: Option<String>,
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
    /// Wall time per call of the kernel path, back to back (launch overhead included).
    pub kernel_wall: Duration,
    /// Device time per call of the kernel path (launch overhead hidden).
    pub kernel_device: Duration,
    /// Bytes that must be read and written once.
    pub floor_bytes: usize,
    /// Wall time per call of the same work with Burn tensor ops on the same backend, back to back.
    pub tensor_ops: Duration,
}

/// Runs the routing benchmarks, prints the table and writes `results/<run>/routing.csv`.
/// Checks the request and claims the output directory before touching a device.
pub fn bench(request: BenchRequest) -> Result<PathBuf, ExperimentError> {
    let cases = routing::select_cases(request.quick, request.case_filter.as_deref())?;
    let name = RunName::parse(&format!("bench-routing-{}", request.backend.name()))
        .expect("backend names make valid run names");
    let run_dir = RunDir::claim_next_free(&request.results_root, &name)?;
    run_on_runtime(
        request.backend,
        BenchJob {
            request,
            cases,
            run_dir,
        },
    )
}

/// A checked [`BenchRequest`], the cases it selects and where the table goes.
struct BenchJob {
    request: BenchRequest,
    cases: Vec<routing::Case>,
    run_dir: RunDir,
}

impl RuntimeJob for BenchJob {
    type Output = PathBuf;

    fn run<R: CubeRuntime>(self, device: R::Device) -> Result<PathBuf, ExperimentError> {
        let BenchJob {
            request,
            cases,
            run_dir,
        } = self;
        let client = R::client(&device);
        let copy_bandwidth = bandwidth::copy_bandwidth(&client, request.quick);
        println!(
            "{} backend, measured copy bandwidth {:.0} GB/s (read + write)",
            request.backend.name(),
            copy_bandwidth / 1e9
        );
        let spinner = device_time::Spinner::calibrate(&client);
        let rows = routing::run::<R>(&client, &spinner, &device, cases, request.quick);
        let table = render(&rows, copy_bandwidth);
        println!("{table}");

        let csv_name = "routing.csv";
        let csv_path = run_dir.staging().join(csv_name);
        std::fs::write(&csv_path, csv(&rows, copy_bandwidth))
            .map_err(ExperimentError::io(&csv_path))?;
        Ok(run_dir.commit()?.join(csv_name))
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

/// Column headers and cells of one table row, shared by the printed table and the CSV.
fn cells(row: &BenchRow, copy_bandwidth: f64) -> [String; 8] {
    let floor = row.floor_bytes as f64 / copy_bandwidth;
    let device = row.kernel_device.as_secs_f64();
    [
        row.op.to_string(),
        row.case.clone(),
        format!("{:.1}", micros(row.kernel_wall)),
        format!("{:.1}", micros(row.kernel_device)),
        format!("{:.0}", row.floor_bytes as f64 / device.max(1e-12) / 1e9),
        format!("{:.1}", device / floor),
        format!("{:.1}", micros(row.tensor_ops)),
        format!(
            "{:.1}",
            row.tensor_ops.as_secs_f64() / row.kernel_wall.as_secs_f64()
        ),
    ]
}

const HEADERS: [&str; 8] = [
    "op",
    "case",
    "wall us",
    "device us",
    "GB/s",
    "x floor",
    "tensor-ops us",
    "speed-up",
];

fn render(rows: &[BenchRow], copy_bandwidth: f64) -> String {
    let line = |c: [String; 8]| {
        format!(
            "{:<15} {:<34} {:>8} {:>10} {:>7} {:>8} {:>14} {:>9}",
            c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]
        )
    };
    let mut lines = vec![line(HEADERS.map(String::from))];
    lines.extend(rows.iter().map(|row| line(cells(row, copy_bandwidth))));
    lines.push(
        "wall: back-to-back calls, launch overhead included; device: queued behind a busy \
         device; GB/s and x floor from device time; speed-up = tensor-ops wall / wall"
            .to_string(),
    );
    lines.join("\n")
}

fn csv(rows: &[BenchRow], copy_bandwidth: f64) -> String {
    let header = "op,case,wall_us,device_us,achieved_gb_s,ratio_to_floor,tensor_ops_us,speedup";
    let mut out = format!("{header},floor_bytes\n");
    for row in rows {
        let c = cells(row, copy_bandwidth);
        out.push_str(&format!("{},{}\n", c.join(","), row.floor_bytes));
    }
    out
}
