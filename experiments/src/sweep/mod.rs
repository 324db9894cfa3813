//! `sweep`: the routing study. From one sweep config (`configs/sweep.toml` for the synthetic
//! task, `configs/sweep-lm.toml` for the byte-level language model) it trains every listed method
//! (dense baselines, top-k, variable-k thresholds, the mean-k budget, top-p, expert choice,
//! balancing, capacity, shared experts) with every seed, then writes `results/sweep-<name>/`:
//! `sweep.json`, `sweep.csv`, `pareto.md` and the plots (`pareto.{png,svg}`,
//! `load_cv.{png,svg}`). Runs that finished earlier are kept, so an interrupted sweep resumes;
//! `--tables-only` writes the tables of the runs that finished without training the others.

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
use crate::workload::{Workload, WorkloadMetrics};
use runner::{SweepDirs, check_finished, finished_metrics, run_all};

/// The sweep's copy of its config, in its directory.
pub const RECORD_FILE: &str = "sweep.toml";

/// One sweep: which file, which settings, where (`sweep`'s flags).
#[derive(clap::Args)]
pub struct SweepRequest {
    /// Sweep config file.
    #[arg(long, default_value = "configs/sweep.toml")]
    pub config: PathBuf,
    /// The [sweep.quick] settings: a small task, fewer methods and seeds (CI); results go to
    /// sweep-<name>-quick.
    #[arg(long)]
    pub quick: bool,
    /// Backend every run trains on.
    #[arg(long, value_enum, default_value_t)]
    pub backend: BackendKind,
    /// Directory holding the sweep directory.
    #[arg(long = "results", default_value = "results")]
    pub results_root: PathBuf,
    /// Start over instead of resuming an earlier, interrupted sweep of the same name (replaces
    /// only a sweep directory).
    #[arg(long)]
    pub fresh: bool,
    /// Override one field of every run's config, after [sweep.quick]'s, e.g.
    /// --set model.ffn.compute_type="bf16" (repeatable; a resume needs the same ones).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Train nothing: write the tables and plots of the runs that finished and list the
    /// missing ones (a study the device time ran out on; pass the sweep's --set values).
    #[arg(long, conflicts_with = "fresh")]
    pub tables_only: bool,
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
/// anything is written), trains those without results, and writes the tables and plots; with
/// `tables_only` it trains nothing and tabulates the runs that finished. A sweep directory whose
/// finished runs were trained with another config is refused before anything in it changes.
pub fn sweep(request: SweepRequest) -> Result<SweepOutcome, ExperimentError> {
    let started = Instant::now();
    // Read once: the file may be this sweep's own record, which is rewritten below.
    let text =
        std::fs::read_to_string(&request.config).map_err(ExperimentError::io(&request.config))?;
    let mut file = SweepFile::parse(&text, &request.config, request.quick)?;
    file.run_overrides.extend(request.overrides.iter().cloned());
    let runs = plan(&file, &request.config)?;
    let settings = &file.settings;
    let suffix = if request.quick { "-quick" } else { "" };
    let dir_name = format!("sweep-{}{suffix}", settings.name);
    let name = RunName::parse(&dir_name).map_err(|reason| ExperimentError::BadRunName {
        name: format!("the sweep directory's name {dir_name:?}"),
        reason,
    })?;
    let dir = request.results_root.join(name.as_str());
    let dirs = SweepDirs { root: dir.clone() };
    let (metrics, backend) = match request.tables_only {
        true => {
            if !dir.join("runs").is_dir() {
                return Err(ExperimentError::SweepNotStarted(dir));
            }
            check_finished(&runs, &dirs)?;
            let metrics = finished_metrics(&runs, &dirs)?;
            let backend = backends_of(metrics.iter().flatten());
            (metrics, backend)
        }
        false => {
            preflight::check(&runs, &file, &request.config, request.backend)?;
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
            (metrics, request.backend.name().to_string())
        }
    };
    let missing: Vec<String> = runs
        .iter()
        .zip(&metrics)
        .filter(|(_, metrics)| metrics.is_none())
        .map(|(run, _)| run.name.clone())
        .collect();
    let finished: Vec<(&PlannedRun, WorkloadMetrics)> = runs
        .iter()
        .zip(metrics)
        .filter_map(|(run, metrics)| Some((run, metrics?)))
        .collect();
    if finished.is_empty() {
        return Err(ExperimentError::SweepNotStarted(dir));
    }
    if !missing.is_empty() {
        println!(
            "{} of {} runs finished; tabulating those (missing: {})",
            finished.len(),
            runs.len(),
            missing.join(", ")
        );
    }
    let workload = runs
        .first()
        .map_or_else(Workload::default, |r| r.config.workload());
    let (methods, run_rows) = SweepTable::rows(finished, workload);
    let table = SweepTable {
        workload,
        name: settings.name.clone(),
        backend,
        quick: request.quick,
        seeds: settings.seeds.clone(),
        wall_time_s: started.elapsed().as_secs_f64(),
        jobs: settings.jobs,
        missing,
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

/// The backends the runs trained on, e.g. `cuda` (joined with `+` if they differ).
fn backends_of<'a>(metrics: impl Iterator<Item = &'a WorkloadMetrics>) -> String {
    let mut names: Vec<&str> = metrics.map(WorkloadMetrics::backend).collect();
    names.sort_unstable();
    names.dedup();
    names.join("+")
}

/// Writes the sweep's copy of its config (unless it holds that text already), through a
/// temporary file so that the earlier record survives a failed write.
fn write_record(path: &Path, text: &str) -> Result<(), ExperimentError> {
    if std::fs::read_to_string(path).is_ok_and(|saved| saved == text) {
        return Ok(());
    }
    crate::atomic_write::write_atomically(path, text)
}
