//! `metrics.json` of a run, the summary printed after it, and the side-by-side comparison.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize};

use crate::error::ExperimentError;
use crate::lm::config::is_lm_config;
use crate::lm::metrics::LmMetrics;
use crate::routing_metrics::RoutingReport;
use crate::run_dir::{CONFIG_FILE, METRICS_FILE, RunState, load_metrics, run_state, save_metrics};

/// What one run measured; written as `results/<run>/metrics.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunMetrics {
    /// Run name.
    pub run: String,
    /// Backend it ran on.
    pub backend: String,
    /// Commit of the code (`-dirty` if it had uncommitted changes).
    pub git_commit: Option<String>,
    /// The feed-forward in words, e.g. `moe E=8 threshold(tau=0.5)`.
    pub ffn: String,
    /// Accuracy on the test split, in [0, 1].
    pub test_accuracy: f64,
    /// Test accuracy on easy points (one cluster).
    pub accuracy_easy: Option<f64>,
    /// Test accuracy on hard points (between two clusters).
    pub accuracy_hard: Option<f64>,
    /// Accuracy of always predicting the most frequent test label.
    pub chance_accuracy: f64,
    /// Mean test cross-entropy (NaN when training diverged; `null` in the file).
    #[serde(deserialize_with = "null_as_nan")]
    pub test_loss: f64,
    /// Wall time of training (all epochs, validation included), seconds.
    pub train_wall_time_s: f64,
    /// Test points classified per second.
    pub inference_tokens_per_s: f64,
    /// Every parameter of the model.
    pub params_total: usize,
    /// Parameters a token uses on average (idle experts excluded).
    pub params_active: f64,
    /// Multiply-add FLOPs per token of the matmuls: 2 x active parameters.
    pub flops_per_token: f64,
    /// Routing statistics on the test split (`null` for a dense model).
    pub routing: Option<RoutingReport>,
}

impl RunMetrics {
    /// Writes `metrics.json` into `run_dir`.
    pub fn save(&self, run_dir: &Path) -> Result<(), ExperimentError> {
        save_metrics(self, run_dir)
    }

    /// Reads `metrics.json` from `run_dir`.
    pub fn load(run_dir: &Path) -> Result<Self, ExperimentError> {
        load_metrics(run_dir)
    }

    /// A short two-column summary for the terminal.
    pub fn summary(&self) -> String {
        let mut rows = vec![
            (
                "run",
                format!("{} ({}, {})", self.run, self.ffn, self.backend),
            ),
            (
                "test accuracy",
                format!(
                    "{} (easy {}, hard {}; chance {})",
                    percent(Some(self.test_accuracy)),
                    percent(self.accuracy_easy),
                    percent(self.accuracy_hard),
                    percent(Some(self.chance_accuracy))
                ),
            ),
            ("test loss", format!("{:.4}", self.test_loss)),
            ("training time", format!("{:.1} s", self.train_wall_time_s)),
            (
                "inference",
                format!("{:.0} tokens/s", self.inference_tokens_per_s),
            ),
            (
                "parameters",
                format!(
                    "{} total, {:.0} active per token",
                    self.params_total, self.params_active
                ),
            ),
            ("FLOPs per token", format!("{:.0}", self.flops_per_token)),
        ];
        if let Some(routing) = &self.routing {
            rows.extend([
                (
                    "mean k",
                    format!(
                        "{:.3} (k=1 for {})",
                        routing.mean_k,
                        percent(Some(routing.fraction_k1))
                    ),
                ),
                (
                    "k=2 on hard points",
                    format!(
                        "precision {}, recall {}",
                        percent(routing.k2_precision_on_hard),
                        percent(routing.k2_recall_on_hard)
                    ),
                ),
                (
                    "expert load",
                    format!(
                        "CV {:.3}, Gini {:.3}, MaxVio {:.3}",
                        routing.load_cv, routing.load_gini, routing.max_violation
                    ),
                ),
            ]);
            rows.extend(crate::routing_summary::rows(routing));
        }
        rows.iter()
            .map(|(name, value)| format!("  {name:<20} {value}"))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// What `compare` found under a results directory.
pub struct Comparison {
    /// The results directory.
    pub root: PathBuf,
    /// Every readable task run, sorted by name.
    pub runs: Vec<RunMetrics>,
    /// Every readable language-model run, sorted by name.
    pub lm_runs: Vec<LmMetrics>,
    /// One line per run directory that could not be read: its path and why.
    pub skipped: Vec<String>,
}

/// Reads every run under `results_root`; unfinished and unreadable runs are listed in
/// [`Comparison::skipped`] instead of stopping the comparison.
pub fn compare(results_root: &Path) -> Result<Comparison, ExperimentError> {
    let entries = std::fs::read_dir(results_root).map_err(ExperimentError::io(results_root))?;
    let mut paths: Vec<PathBuf> = entries.flatten().map(|entry| entry.path()).collect();
    paths.sort();
    let mut runs = Vec::new();
    let mut lm_runs = Vec::new();
    let mut skipped = Vec::new();
    for path in paths {
        match run_state(&path) {
            RunState::Complete if is_lm_config(&path.join(CONFIG_FILE)) => {
                match LmMetrics::load(&path) {
                    Ok(metrics) => lm_runs.push(metrics),
                    Err(error) => skipped.push(error.to_string()),
                }
            }
            RunState::Complete => match RunMetrics::load(&path) {
                Ok(metrics) => runs.push(metrics),
                Err(error) => skipped.push(error.to_string()),
            },
            RunState::Incomplete(reason) => skipped.push(format!("{}: {reason}", path.display())),
            RunState::NotARun => {}
        }
    }
    runs.sort_by(|a, b| a.run.cmp(&b.run));
    lm_runs.sort_by(|a, b| a.run.cmp(&b.run));
    Ok(Comparison {
        root: results_root.to_path_buf(),
        runs,
        lm_runs,
        skipped,
    })
}

impl Comparison {
    /// Every run side by side, one row per run; an error if there were runs but none readable.
    pub fn table(&self) -> Result<String, ExperimentError> {
        if self.runs.is_empty() && self.lm_runs.is_empty() {
            return match self.skipped.len() {
                0 => Ok(format!(
                    "no runs with {METRICS_FILE} under {}",
                    self.root.display()
                )),
                skipped => Err(ExperimentError::NoReadableRun {
                    root: self.root.clone(),
                    skipped,
                }),
            };
        }
        let mut tables = Vec::new();
        if !self.runs.is_empty() {
            tables.push(self.task_table());
        }
        if !self.lm_runs.is_empty() {
            tables.push(self.lm_table());
        }
        Ok(tables.join("\n\n"))
    }

    /// The task runs side by side.
    fn task_table(&self) -> String {
        let header = [
            "run",
            "ffn",
            "backend",
            "acc",
            "easy",
            "hard",
            "mean k",
            "k2 prec",
            "k2 rec",
            "load CV",
            "train s",
            "tokens/s",
            "active params",
            "FLOPs/token",
        ];
        let rows: Vec<Vec<String>> = self
            .runs
            .iter()
            .map(|m| {
                let routing =
                    |f: fn(&RoutingReport) -> String| m.routing.as_ref().map_or("-".into(), f);
                vec![
                    m.run.clone(),
                    m.ffn.clone(),
                    m.backend.clone(),
                    percent(Some(m.test_accuracy)),
                    percent(m.accuracy_easy),
                    percent(m.accuracy_hard),
                    routing(|r| format!("{:.3}", r.mean_k)),
                    routing(|r| percent(r.k2_precision_on_hard)),
                    routing(|r| percent(r.k2_recall_on_hard)),
                    routing(|r| format!("{:.3}", r.load_cv)),
                    format!("{:.1}", m.train_wall_time_s),
                    format!("{:.0}", m.inference_tokens_per_s),
                    format!("{:.0}", m.params_active),
                    format!("{:.0}", m.flops_per_token),
                ]
            })
            .collect();
        table(&header, &rows)
    }

    /// The language-model runs side by side.
    fn lm_table(&self) -> String {
        let header = [
            "LM run",
            "model",
            "backend",
            "valid bits/byte",
            "test bits/byte",
            "mean k",
            "steps",
            "tokens/s (2nd half)",
            "active params",
        ];
        let rows: Vec<Vec<String>> = self
            .lm_runs
            .iter()
            .map(|m| {
                vec![
                    m.run.clone(),
                    m.model.clone(),
                    m.backend.clone(),
                    format!("{:.4}", m.valid.bits_per_byte),
                    format!("{:.4}", m.test.bits_per_byte),
                    m.test.mean_k.map_or("-".into(), |k| format!("{k:.3}")),
                    m.steps.to_string(),
                    m.steady_tokens_per_s
                        .map_or("-".into(), |rate| format!("{rate:.0}")),
                    format!("{:.0}", m.params_active),
                ]
            })
            .collect();
        table(&header, &rows)
    }
}

/// Reads a number that may be `null` (how JSON writes NaN) as NaN.
fn null_as_nan<'de, D: Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
    Option::<f64>::deserialize(deserializer).map(|value| value.unwrap_or(f64::NAN))
}

/// Left-aligned text table with a header rule.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let widths: Vec<usize> = (0..header.len())
        .map(|c| {
            rows.iter()
                .map(|r| r[c].len())
                .chain([header[c].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<&str>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    let mut out = vec![line(header.to_vec())];
    out.push(line(
        widths
            .iter()
            .map(|w| "-".repeat(*w))
            .collect::<Vec<_>>()
            .iter()
            .map(String::as_str)
            .collect(),
    ));
    out.extend(
        rows.iter()
            .map(|r| line(r.iter().map(String::as_str).collect())),
    );
    out.join("\n")
}

/// `0.8123` as `81.2%`; `None` (nothing to measure) as `-`.
fn percent(fraction: Option<f64>) -> String {
    fraction.map_or("-".into(), |f| format!("{:.1}%", 100.0 * f))
}
