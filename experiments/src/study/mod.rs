//! `report`: `docs/REPORT.md`, the project's answers written from result files. It reads the
//! routing studies (language model and synthetic task), the layer benchmark, routing prediction
//! and offloading, wherever they are found (`results/` first, then the committed copies under
//! `docs/results/`), answers the three questions in words, and puts every table after them.
//! Each number names the file it comes from and the command that wrote it; what is missing is
//! named with the command that measures it.

mod answers;
mod compare;
mod generation;
mod layer_speed;
mod routing_prediction;
mod sources;
mod studies;
mod sweep_view;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

pub use sources::{Found, Source};
pub use studies::Study;

use crate::atomic_write::write_atomically;
use crate::error::ExperimentError;
use crate::run_dir::git_commit;
use crate::workload::Workload;
use answers::{Evidence, answers, limits};
use generation::GenerationTimings;

/// One `report` command (its flags).
#[derive(clap::Args)]
pub struct ReportRequest {
    /// Directories searched for result files, in order (repeatable).
    #[arg(long = "results", default_values = ["results", "docs/results"])]
    pub roots: Vec<PathBuf>,
    /// The report to write.
    #[arg(long, default_value = "docs/REPORT.md")]
    pub out: PathBuf,
}

/// What `report` wrote.
pub struct ReportOutcome {
    /// The report file.
    pub path: PathBuf,
    /// The result files it read.
    pub read: Vec<PathBuf>,
    /// The commands whose results were missing.
    pub missing: Vec<&'static str>,
}

/// Reads the result files and writes the report (through a temporary file, so a failed write
/// keeps the previous report).
pub fn report(request: ReportRequest) -> Result<ReportOutcome, ExperimentError> {
    let roots = &request.roots;
    let mut read = Vec::new();
    let mut missing = Vec::new();
    let mut take = |sources: &[Source]| -> Result<Option<Found>, ExperimentError> {
        let found = sources::find(roots, sources)?;
        match &found {
            Some(found) => read.push(found.path.clone()),
            None => missing.push(sources[0].command),
        }
        Ok(found)
    };
    let lm = take(&sources::LM_SWEEPS)?.and_then(|f| Study::new(Workload::Lm, f));
    let task = take(&sources::TASK_SWEEPS)?.and_then(|f| Study::new(Workload::Task, f));
    let bench = take(&sources::BENCH)?;
    let lm_prediction = take(&sources::LM_PREDICTION)?;
    let task_prediction = take(&sources::TASK_PREDICTION)?;
    let offload = take(&sources::LM_OFFLOAD)?;
    // The CPU-sized study has every method on the CPU; shown too when the answers use another.
    let cpu_source = &sources::LM_SWEEPS[1..2];
    let lm_cpu = match &lm {
        Some(study) if study.found.command != cpu_source[0].command => {
            sources::find(roots, cpu_source)?.and_then(|f| Study::new(Workload::Lm, f))
        }
        _ => None,
    };
    if let Some(study) = &lm_cpu {
        read.push(study.found.path.clone());
    }
    let generation = lm.as_ref().and_then(|study| {
        let methods: Vec<String> = study
            .sweep
            .methods
            .iter()
            .map(|m| m.method.clone())
            .collect();
        // The study's own runs first; else another language-model study's (the CPU one's
        // timings while the H100 study has none), which the section names.
        sources::found_paths(roots, &sources::LM_SWEEPS)
            .iter()
            .find_map(|sweep_json| GenerationTimings::read(sweep_json, &methods))
    });
    if let Some(timings) = &generation {
        read.push(timings.dir.clone());
    }
    let bench_rows = bench.as_ref().map(|f| layer_speed::layer_rows(&f.json));
    let policy_rows = offload
        .as_ref()
        .map(|f| routing_prediction::policy_rows(&f.json))
        .filter(|rows| !rows.is_empty());
    let evidence = Evidence {
        lm: lm.as_ref(),
        task: task.as_ref(),
        bench: bench.as_ref().zip(bench_rows.as_deref()),
        offload: offload.as_ref().zip(policy_rows.as_deref()),
        generation: generation.as_ref(),
    };

    let out = &request.out;
    let not_found = |what: &str, command: &str| {
        format!("Not measured in the result files found: `{command}` writes {what}.")
    };
    let mut sections = vec![
        "# What variable-k routing buys: the report".to_string(),
        format!(
            "Written by `just report` (commit {}) from the result files below; every table \
             names its file and the command that wrote it. Variable-k routing sends a token to \
             one expert when the router is confident and to two otherwise; top-1 and top-2 \
             always use one and two; the dense baselines are SwiGLU MLPs with top-2's active \
             parameters (`dense-active`) and with all the experts' parameters (`dense-total`).",
            git_commit().unwrap_or_else(|| "unknown".into())
        ),
        "## The answers".to_string(),
        answers(&evidence),
        "## What the measurements do not support".to_string(),
        limits(&evidence),
        "## The language model: quality, balance and cost against mean k".to_string(),
        lm.as_ref().map_or_else(
            || not_found("the language-model study", sources::LM_SWEEPS[0].command),
            |study| study.section(out),
        ),
    ];
    if let Some(study) = &lm_cpu {
        sections.push("## The language model at the CPU size".to_string());
        sections.push(study.section(out));
    }
    sections.extend([
        "## The language model: generation speed".to_string(),
        match (&lm, &generation) {
            (_, Some(timings)) => timings.section(),
            (Some(study), None) => not_found(
                "the generation timings of its runs",
                &generation::command(study.found.path.parent().unwrap_or(Path::new("."))),
            ),
            (None, None) => not_found("the language-model study", sources::LM_SWEEPS[0].command),
        },
        "## The MoE layer's speed (prefill and decode)".to_string(),
        match (&bench, &bench_rows) {
            (Some(found), Some(rows)) => layer_speed::section(found, rows),
            _ => not_found("the layer benchmark", sources::BENCH[0].command),
        },
        "## Predicting the next blocks' experts".to_string(),
    ]);
    for (label, found, source) in [
        (
            "On the language model",
            &lm_prediction,
            &sources::LM_PREDICTION[0],
        ),
        (
            "On the synthetic task",
            &task_prediction,
            &sources::TASK_PREDICTION[0],
        ),
    ] {
        sections.push(format!(
            "{label}: {}",
            found.as_ref().map_or_else(
                || not_found("it", source.command),
                routing_prediction::prediction_section
            )
        ));
    }
    sections.push("## Offloading on the language model's routing".to_string());
    sections.push(match (&offload, &policy_rows) {
        (Some(found), Some(rows)) => routing_prediction::offload_section(found, rows),
        _ => not_found("it", sources::LM_OFFLOAD[0].command),
    });
    sections.push("## The synthetic task".to_string());
    sections.push(task.as_ref().map_or_else(
        || not_found("the routing study", sources::TASK_SWEEPS[0].command),
        |study| study.section(out),
    ));
    write_atomically(out, &(sections.join("\n\n") + "\n"))?;
    Ok(ReportOutcome {
        path: out.clone(),
        read,
        missing,
    })
}
