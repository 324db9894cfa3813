//! `sweep`: the routing study. From one sweep config (`configs/sweep.toml` for the synthetic
//! task, `configs/sweep-lm.toml` for the byte-level language model) it trains every listed method
//! (dense baselines, top-k, variable-k thresholds, the mean-k budget, top-p, expert choice,
//! balancing, capacity, shared experts) with every seed, then writes `results/sweep-<name>/`:
//! `sweep.json`, `sweep.csv`, `pareto.md` and the plots (`pareto.{png,svg}`,
//! `load_cv.{png,svg}`). Runs that finished earlier are kept, so an interrupted sweep resumes.

mod markdown;
mod plan;
mod plot;
mod preflight;
mod quantities;
mod runner;
mod settings;
mod table;

#[cfg(test)]
mod lm_table_tests;

use std::path::{Path, PathBuf};
use std::time::Instant;

pub use plan::{Family, PlannedRun, plan};
pub use quantities::{Better, Quality};
pub use settings::{SweepFile, SweepSettings};
pub use table::{MethodRow, RunRow, Spread, SweepTable};

use crate::backend::BackendKind;
use crate::error::ExperimentError;
use crate::run_dir::{DirKind, RunName, check_replaceable, open_resumable};
use crate::workload::Workload;
use runner::{SweepDirs, check_finished, run_all};

/// The sweep's copy of its config, in its directory.
pub const RECORD_FILE: &str = "sweep.toml";

/// One sweep: which file, which settings, where.
pub struct SweepRequest {
    /// The sweep config, e.g. `configs/sweep.toml`.
    pub config: PathBuf,
    /// Use the `[sweep.quick]` settings (CI); results go to `sweep-<name>-quick`.
    pub quick: bool,
    /// Backend every run trains on.
    pub backend: BackendKind,
    /// Directory holding the sweep directory (`results`).
    pub results_root: PathBuf,
    /// Replace earlier results of this sweep (only a sweep directory) instead of resuming.
    pub fresh: bool,
    /// `key=value` overrides of the run config, applied after `[sweep.quick] set` (e.g.
    /// `model.ffn.compute_type="bf16"`); a resume needs the same ones.
    pub overrides: Vec<String>,
}

/// What a finished sweep wrote.
pub struct SweepOutcome {
    /// `results/sweep-<name>/`.
    pub dir: PathBuf,
    /// The measured numbers.
    pub table: SweepTable,
    /// The plot files.
    pub plots: Vec<PathBuf>,
}

/// Plans every run (all validated, and checked against the backend and the memory, before
/// anything is written), trains those without results, and writes the tables and plots. A sweep
/// directory whose finished runs were trained with another config is refused before anything in
/// it changes.
pub fn sweep(request: SweepRequest) -> Result<SweepOutcome, ExperimentError> {
    let started = Instant::now();
    // Read once: the file may be this sweep's own record, which is rewritten below.
    let text =
        std::fs::read_to_string(&request.config).map_err(ExperimentError::io(&request.config))?;
    let mut file = SweepFile::parse(&text, &request.config, request.quick)?;
    file.run_overrides.extend(request.overrides.iter().cloned());
    let runs = plan(&file, &request.config)?;
    let settings = &file.settings;
    preflight::check(&runs, &file, &request.config, request.backend)?;
    let suffix = if request.quick { "-quick" } else { "" };
    let dir_name = format!("sweep-{}{suffix}", settings.name);
    let name = RunName::parse(&dir_name).map_err(|reason| ExperimentError::BadRunName {
        name: format!("the sweep directory's name {dir_name:?}"),
        reason,
    })?;
    let dir = request.results_root.join(name.as_str());
    let dirs = SweepDirs { root: dir.clone() };
    if check_replaceable(&dir, DirKind::Sweep)? && !request.fresh {
        check_finished(&runs, &dirs)?;
    }
    open_resumable(&request.results_root, &name, DirKind::Sweep, request.fresh)?;
    write_record(&dir.join(RECORD_FILE), &text)?;
    println!(
        "sweep {}: {} methods x {} seeds = {} runs on {}, {} at a time -> {}",
        settings.name,
        runs.len() / settings.seeds.len(),
        settings.seeds.len(),
        runs.len(),
        request.backend.name(),
        settings.jobs,
        dir.display()
    );

    let metrics = run_all(&runs, &dirs, settings.jobs, request.backend)?;
    let workload = runs
        .first()
        .map_or_else(Workload::default, |r| r.config.workload());
    let (methods, run_rows) = SweepTable::rows(&runs, metrics, workload);
    let table = SweepTable {
        workload,
        name: settings.name.clone(),
        backend: request.backend.name().to_string(),
        quick: request.quick,
        seeds: settings.seeds.clone(),
        wall_time_s: started.elapsed().as_secs_f64(),
        methods,
        runs: run_rows,
    };
    table.save(&dir)?;
    let markdown = dir.join("pareto.md");
    std::fs::write(&markdown, table.markdown() + "\n").map_err(ExperimentError::io(&markdown))?;
    let title = format!("sweep {}", settings.name);
    let plots = plot::plot_all(&table.methods, workload, &title, &dir)?;
    Ok(SweepOutcome { dir, table, plots })
}

/// Writes the sweep's copy of its config (unless it holds that text already), through a
/// temporary file so that the earlier record survives a failed write.
fn write_record(path: &Path, text: &str) -> Result<(), ExperimentError> {
    if std::fs::read_to_string(path).is_ok_and(|saved| saved == text) {
        return Ok(());
    }
    crate::atomic_write::write_atomically(path, text)
}
