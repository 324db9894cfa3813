//! `sweep`: the routing study. From one sweep config (`configs/sweep.toml`) it trains every
//! listed method (dense baselines, top-k, variable-k thresholds, the mean-k budget, top-p, expert
//! choice, balancing, capacity, shared experts) with every seed, then writes
//! `results/sweep-<name>/`: `sweep.json`, `sweep.csv`, `pareto.md` and the plots
//! (`pareto.{png,svg}`, `load_cv.{png,svg}`). Runs that finished earlier are kept, so an
//! interrupted sweep resumes.

mod plan;
mod plot;
mod runner;
mod settings;
mod table;

use std::path::PathBuf;
use std::time::Instant;

pub use plan::{Family, PlannedRun, plan};
pub use settings::{SweepFile, SweepSettings};
pub use table::{MethodRow, RunRow, Spread, SweepTable};

use crate::backend::BackendKind;
use crate::error::ExperimentError;
use runner::{SweepDirs, run_all};

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
    /// Delete earlier results of this sweep instead of resuming.
    pub fresh: bool,
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

/// Plans every run (all validated before anything trains), trains those without results, and
/// writes the tables and plots.
pub fn sweep(request: SweepRequest) -> Result<SweepOutcome, ExperimentError> {
    let started = Instant::now();
    let file = SweepFile::load(&request.config, request.quick)?;
    let runs = plan(&file, &request.config)?;
    let settings = &file.settings;
    let suffix = if request.quick { "-quick" } else { "" };
    let dir = request
        .results_root
        .join(format!("sweep-{}{suffix}", settings.name));
    if request.fresh && dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(ExperimentError::io(&dir))?;
    }
    std::fs::create_dir_all(&dir).map_err(ExperimentError::io(&dir))?;
    let copy = dir.join("sweep.toml");
    std::fs::copy(&request.config, &copy).map_err(ExperimentError::io(&copy))?;
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

    let dirs = SweepDirs { root: dir.clone() };
    let metrics = run_all(&runs, &dirs, settings.jobs, request.backend)?;
    let (methods, run_rows) = SweepTable::new(&runs, metrics);
    let table = SweepTable {
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
    let plots = plot::plot_all(&table.methods, &format!("sweep {}", settings.name), &dir)?;
    Ok(SweepOutcome { dir, table, plots })
}
