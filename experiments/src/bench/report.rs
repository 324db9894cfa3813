//! The benchmark's tables: printed, and written as CSV and JSON (with the device, dtype, versions
//! and git commit) into the run directory.

use std::path::Path;

use serde_json::json;

use super::expert_cases::ExpertRow;
use super::{BenchRow, FloatType};
use crate::backend::BackendKind;
use crate::error::ExperimentError;
use crate::run_dir::git_commit;

/// What the JSON records about the run besides its rows.
pub struct Context {
    /// The runtime the rows were measured on.
    pub backend: BackendKind,
    /// Float type of the expert rows.
    pub dtype: FloatType,
    /// Measured copy bandwidth, bytes read plus written per second.
    pub copy_bandwidth: f64,
    /// Whether cuBLAS was available (`available`, or why not).
    pub cublas: String,
}

fn micros(duration: std::time::Duration) -> f64 {
    duration.as_secs_f64() * 1e6
}

/// Cells of one routing row, shared by the printed table and the CSV.
fn routing_cells(row: &BenchRow, copy_bandwidth: f64) -> [String; 8] {
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

const ROUTING_HEADERS: [&str; 8] = [
    "op",
    "case",
    "wall us",
    "device us",
    "GB/s",
    "x floor",
    "tensor-ops us",
    "speed-up",
];

/// Column widths of the routing table (negative: left-aligned).
const ROUTING_WIDTHS: [isize; 8] = [-15, -34, 8, 10, 7, 8, 14, 9];

/// One printed line: each cell padded to its width, right-aligned unless the width is negative.
fn aligned(cells: &[String], widths: &[isize]) -> String {
    cells
        .iter()
        .zip(widths)
        .map(|(cell, &width)| match width < 0 {
            true => format!("{cell:<0$}", width.unsigned_abs()),
            false => format!("{cell:>0$}", width as usize),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The routing rows as a printed table.
pub fn routing_table(rows: &[BenchRow], copy_bandwidth: f64) -> String {
    let line = |cells: [String; 8]| aligned(&cells, &ROUTING_WIDTHS);
    let mut lines = vec![line(ROUTING_HEADERS.map(String::from))];
    lines.extend(
        rows.iter()
            .map(|row| line(routing_cells(row, copy_bandwidth))),
    );
    lines.push(
        "wall: back-to-back calls, launch overhead included; device: queued behind a busy \
         device; GB/s and x floor from device time; speed-up = tensor-ops wall / wall"
            .to_string(),
    );
    lines.join("\n")
}

/// Ratio `baseline / ours` (how many times faster the kernels are), or `-`.
fn speedup(baseline: Option<f64>, ours: f64) -> String {
    baseline.map_or("-".into(), |b| format!("{:.2}", b / ours))
}

const EXPERT_HEADERS: [&str; 15] = [
    "op",
    "case",
    "tiles",
    "S",
    "median us",
    "spread",
    "TFLOP/s",
    "x floor",
    "wall us",
    "queued us",
    "queued x floor",
    "cuBLAS us",
    "vs cuBLAS",
    "vs Burn",
    "vs dense total",
];

/// Cells of one expert row.
fn expert_cells(row: &ExpertRow, copy_bandwidth: f64) -> [String; 15] {
    let [median, min, max] = row.time_us;
    let floor_us = row.floor_bytes as f64 / copy_bandwidth * 1e6;
    let cublas = row.cublas_us.as_ref().ok().copied();
    let dense_total = row
        .dense_total_us
        .as_ref()
        .and_then(|total| total.as_ref().ok().copied());
    [
        row.op.to_string(),
        row.case.clone(),
        row.tiles.clone(),
        row.routed_rows.to_string(),
        format!("{median:.1}"),
        format!("{:.0}%", (max - min) / median * 100.0),
        format!("{:.0}", row.flops / median / 1e6),
        format!("{:.2}", median / floor_us),
        row.wall_us.map_or("-".into(), |w| format!("{w:.1}")),
        row.queued_us.map_or("-".into(), |q| format!("{q:.1}")),
        row.queued_us
            .map_or("-".into(), |q| format!("{:.2}", q / floor_us)),
        cublas.map_or("-".into(), |c| format!("{c:.1}")),
        speedup(cublas, median),
        speedup(row.burn_us, median),
        speedup(dense_total, median),
    ]
}

/// Column widths of the expert table (negative: left-aligned).
const EXPERT_WIDTHS: [isize; 15] = [-6, -36, -40, 6, 10, 6, 7, 7, 9, 9, 14, 10, 9, 7, 14];

/// The expert rows as a printed table.
pub fn experts_table(rows: &[ExpertRow], copy_bandwidth: f64) -> String {
    let line = |cells: [String; 15]| aligned(&cells, &EXPERT_WIDTHS);
    let mut lines = vec![line(EXPERT_HEADERS.map(String::from))];
    lines.extend(
        rows.iter()
            .map(|row| line(expert_cells(row, copy_bandwidth))),
    );
    lines.push(
        "median: device time (events), spread = (max - min) / median; TFLOP/s on routed pairs; \
         x floor: median over touched weights + activations at the copy bandwidth; vs X = X's \
         time / ours; queued (layer rows): device time per forward with its launches queued \
         behind a busy device, as a captured launch sequence runs (gemm rows: cuBLAS and Burn on \
         the same FLOPs as one dense GEMM; layer rows: cuBLAS dense MLP with the same active, \
         and the same total, parameters; train rows: forward + backward of the experts and \
         combine, the dense MLPs' forward + backward as six cuBLAS GEMMs, vs Burn = the \
         per-expert tensor-op path's wall time)"
            .to_string(),
    );
    lines.join("\n")
}

/// Writes `routing.csv`, `experts.csv` and `bench.json` into `directory`.
pub fn write(
    directory: &Path,
    context: &Context,
    routing_rows: &[BenchRow],
    expert_rows: &[ExpertRow],
    copy_bandwidth: f64,
) -> Result<(), ExperimentError> {
    let write = |name: &str, text: String| {
        let path = directory.join(name);
        std::fs::write(&path, text).map_err(ExperimentError::io(&path))
    };
    let mut routing_csv = String::from(
        "op,case,wall_us,device_us,achieved_gb_s,ratio_to_floor,tensor_ops_us,speedup,floor_bytes\n",
    );
    for row in routing_rows {
        let cells = routing_cells(row, copy_bandwidth);
        routing_csv.push_str(&format!("{},{}\n", cells.join(","), row.floor_bytes));
    }
    write("routing.csv", routing_csv)?;

    let mut experts_csv = String::from(
        "op,case,tiles,routed_rows,median_us,spread,tflops,ratio_to_floor,wall_us,queued_us,\
         queued_ratio_to_floor,cublas_us,\
         speedup_vs_cublas,speedup_vs_burn,speedup_vs_dense_total,flops,floor_bytes,mean_k\n",
    );
    for row in expert_rows {
        let cells = expert_cells(row, copy_bandwidth).map(|c| c.replace(',', ";"));
        experts_csv.push_str(&format!(
            "{},{},{},{}\n",
            cells.join(","),
            row.flops,
            row.floor_bytes,
            row.mean_k.map_or(String::new(), |k| format!("{k:.3}"))
        ));
    }
    write("experts.csv", experts_csv)?;

    let routing_json: Vec<_> = routing_rows
        .iter()
        .map(|row| {
            json!({
                "op": row.op,
                "case": row.case,
                "wall_us": micros(row.kernel_wall),
                "device_us": micros(row.kernel_device),
                "floor_bytes": row.floor_bytes,
                "tensor_ops_us": micros(row.tensor_ops),
            })
        })
        .collect();
    let json = json!({
        "backend": context.backend.name(),
        "dtype": context.dtype.name(),
        "device": super::device_name(context.backend),
        "copy_bandwidth_gb_s": context.copy_bandwidth / 1e9,
        "cublas": context.cublas,
        "versions": {
            "experiments": env!("CARGO_PKG_VERSION"),
            "burn": "0.21.0",
            "cubecl": "0.10.0",
        },
        "git_commit": git_commit(),
        "routing": routing_json,
        "experts": expert_rows,
    });
    write(
        "bench.json",
        serde_json::to_string_pretty(&json).expect("JSON of plain values"),
    )
}
