//! The benchmark's tables: printed, and written as CSV and JSON (with the device, dtype, both
//! bandwidths, versions and git commit) into the run directory.
//!
//! A ratio to the memory floor under 1 ends in `*` in the printed tables, whose footnotes say why
//! one can; the CSV columns hold the plain numbers (the footnotes' reasons apply to them too).

use std::path::Path;

use serde_json::json;

use super::bandwidth::{Bandwidths, FLOOR_BANDWIDTH_FIELD};
use super::expert_cases::ExpertRow;
use super::{BenchRow, FloatType};
use crate::backend::BackendKind;
use crate::error::ExperimentError;
use crate::run_dir::git_commit;

/// What the tables and the JSON record about the run besides its rows.
pub struct Context {
    /// The runtime the rows were measured on.
    pub backend: BackendKind,
    /// Float type of the expert rows.
    pub dtype: FloatType,
    /// Measured copy and read-stream bandwidths; the floors use [`Bandwidths::floor`].
    pub bandwidths: Bandwidths,
    /// Bytes written to flush L2 before each repetition of a device timing.
    pub l2_flush_bytes: usize,
    /// Whether cuBLAS was available (`available`, or why not).
    pub cublas: String,
}

/// Where cells go: the printed table marks ratios under the floor, the CSV keeps plain numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cells {
    /// The printed table.
    Printed,
    /// `routing.csv` and `experts.csv`.
    Csv,
}

/// A ratio to the memory floor with `decimals` digits; a printed one under 1 ends in `*` (the
/// table's footnote says why that can happen).
pub fn floor_ratio(ratio: f64, decimals: usize, cells: Cells) -> String {
    let marker = match cells {
        Cells::Printed if ratio < 1.0 => "*",
        _ => "",
    };
    format!("{ratio:.decimals$}{marker}")
}

fn micros(duration: std::time::Duration) -> f64 {
    duration.as_secs_f64() * 1e6
}

/// Cells of one routing row, shared by the printed table and the CSV.
fn routing_cells(row: &BenchRow, floor_bandwidth: f64, cells: Cells) -> [String; 8] {
    let floor = row.floor_bytes as f64 / floor_bandwidth;
    let device = row.kernel_device.as_secs_f64();
    [
        row.op.to_string(),
        row.case.clone(),
        format!("{:.1}", micros(row.kernel_wall)),
        format!("{:.1}", micros(row.kernel_device)),
        format!("{:.0}", row.floor_bytes as f64 / device.max(1e-12) / 1e9),
        floor_ratio(device / floor, 1, cells),
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
pub fn routing_table(rows: &[BenchRow], context: &Context) -> String {
    let floor_bandwidth = context.bandwidths.floor();
    let line = |cells: [String; 8]| aligned(&cells, &ROUTING_WIDTHS);
    let mut lines = vec![line(ROUTING_HEADERS.map(String::from))];
    lines.extend(
        rows.iter()
            .map(|row| line(routing_cells(row, floor_bandwidth, Cells::Printed))),
    );
    lines.extend(
        [
            "timed: every column back to back, L2 warm (no flush between calls); wall: launch \
             overhead included; device: queued behind a busy device; tensor-ops: wall",
            "GB/s and x floor from device time; x floor = device / (bytes read and written once \
             at the read-stream bandwidth); speed-up = tensor-ops wall / wall",
            "* x floor under 1: the calls run back to back, so their inputs (well under the L2 \
             size) are read from L2, not memory, and the floor counts bytes a path may skip",
        ]
        .map(String::from),
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
fn expert_cells(row: &ExpertRow, floor_bandwidth: f64, cells: Cells) -> [String; 15] {
    let [median, min, max] = row.time_us;
    let floor_us = row.floor_bytes as f64 / floor_bandwidth * 1e6;
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
        floor_ratio(median / floor_us, 2, cells),
        row.wall_us.map_or("-".into(), |w| format!("{w:.1}")),
        row.queued_us.map_or("-".into(), |q| format!("{q:.1}")),
        row.queued_us
            .map_or("-".into(), |q| floor_ratio(q / floor_us, 2, cells)),
        cublas.map_or("-".into(), |c| format!("{c:.1}")),
        speedup(cublas, median),
        speedup(row.burn_us, median),
        speedup(dense_total, median),
    ]
}

/// Column widths of the expert table (negative: left-aligned).
const EXPERT_WIDTHS: [isize; 15] = [-6, -36, -40, 6, 10, 6, 7, 7, 9, 9, 14, 10, 9, 7, 14];

/// The expert rows as a printed table.
pub fn experts_table(rows: &[ExpertRow], context: &Context) -> String {
    let floor_bandwidth = context.bandwidths.floor();
    let line = |cells: [String; 15]| aligned(&cells, &EXPERT_WIDTHS);
    let mut lines = vec![line(EXPERT_HEADERS.map(String::from))];
    lines.extend(
        rows.iter()
            .map(|row| line(expert_cells(row, floor_bandwidth, Cells::Printed))),
    );
    lines.push(format!(
        "timed: median, spread, TFLOP/s, x floor and the cuBLAS and Burn matmul baselines: \
         device time of each call, L2 flushed (a {} MiB write) before each repetition; wall, \
         queued, queued x floor and train rows' vs Burn: back to back, L2 warm",
        context.l2_flush_bytes >> 20
    ));
    lines.extend(
        [
            "median: device time, spread = (max - min) / median; TFLOP/s on routed pairs; x \
             floor: time over touched weights + activations read once at the read-stream \
             bandwidth (16-byte loads)",
            "* x floor under 1: queued calls run back to back, so weights that fit in L2 are \
             still there from the call before; a train row reads its weights twice and the \
             second read can hit L2; written outputs can stay in L2 past the timed call; the \
             floor counts bytes a path may skip",
            "vs X = X's time / ours; queued (layer rows): device time per forward with its \
             launches queued behind a busy device, as a captured launch sequence runs (gemm \
             rows: cuBLAS and Burn on the same FLOPs as one dense GEMM; layer rows: cuBLAS \
             dense MLP with the same active, and the same total, parameters; train rows: \
             forward + backward of the experts and combine, the dense MLPs' forward + backward \
             as six cuBLAS GEMMs, vs Burn = the per-expert tensor-op path's wall time)",
        ]
        .map(String::from),
    );
    lines.join("\n")
}

/// Writes `routing.csv`, `experts.csv` and `bench.json` into `directory`.
pub fn write(
    directory: &Path,
    context: &Context,
    routing_rows: &[BenchRow],
    expert_rows: &[ExpertRow],
) -> Result<(), ExperimentError> {
    let floor_bandwidth = context.bandwidths.floor();
    let write = |name: &str, text: String| {
        let path = directory.join(name);
        std::fs::write(&path, text).map_err(ExperimentError::io(&path))
    };
    let mut routing_csv = String::from(
        "op,case,wall_us,device_us,achieved_gb_s,ratio_to_floor,tensor_ops_us,speedup,floor_bytes\n",
    );
    for row in routing_rows {
        let cells = routing_cells(row, floor_bandwidth, Cells::Csv);
        routing_csv.push_str(&format!("{},{}\n", cells.join(","), row.floor_bytes));
    }
    write("routing.csv", routing_csv)?;

    let mut experts_csv = String::from(
        "op,case,tiles,routed_rows,median_us,spread,tflops,ratio_to_floor,wall_us,queued_us,\
         queued_ratio_to_floor,cublas_us,\
         speedup_vs_cublas,speedup_vs_burn,speedup_vs_dense_total,flops,floor_bytes,mean_k\n",
    );
    for row in expert_rows {
        let cells = expert_cells(row, floor_bandwidth, Cells::Csv).map(|c| c.replace(',', ";"));
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
        "copy_bandwidth_gb_s": context.bandwidths.copy / 1e9,
        "read_bandwidth_gb_s": context.bandwidths.read / 1e9,
        "floor_bandwidth": FLOOR_BANDWIDTH_FIELD,
        "l2_flush_bytes": context.l2_flush_bytes,
        "timing": {
            "l2_flushed_between_repetitions": [
                "experts.time_us",
                "experts.cublas_us",
                "experts.dense_total_us",
                "experts.burn_us (gemm rows)",
            ],
            "back_to_back_l2_warm": [
                "experts.wall_us",
                "experts.queued_us",
                "experts.burn_us (train rows)",
                "routing.wall_us",
                "routing.device_us",
                "routing.tensor_ops_us",
            ],
        },
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
