//! The sweep's numbers: one row per run, one row per method (mean and standard deviation over
//! seeds of the workload's quantities), written as `sweep.json` and `sweep.csv`, and the methods
//! on the Pareto front of quality against mean k.

use std::path::Path;

use serde::Serialize;

use super::plan::{Family, PlannedRun};
use super::quantities::Quality;
use crate::error::ExperimentError;
use crate::workload::{Workload, WorkloadMetrics};

/// Mean and sample standard deviation of a quantity over seeds (std 0 for one seed).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Spread {
    /// Mean over the runs that have the quantity.
    pub mean: f64,
    /// Sample standard deviation (n - 1).
    pub std: f64,
}

impl Spread {
    /// Mean and spread of `values`; `None` when there are none.
    pub fn of(values: &[f64]) -> Option<Self> {
        if values.is_empty() {
            return None;
        }
        let n = values.len() as f64;
        let mean = values.iter().sum::<f64>() / n;
        let std = match values.len() {
            1 => 0.0,
            _ => (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt(),
        };
        Some(Self { mean, std })
    }
}

/// One run's row.
#[derive(Clone, Debug, Serialize)]
pub struct RunRow {
    /// Run name.
    pub run: String,
    /// Method name.
    pub method: String,
    /// Method family.
    pub family: Family,
    /// Training seed.
    pub seed: u64,
    /// Everything the run measured.
    pub metrics: WorkloadMetrics,
}

/// One method's row: every quantity's mean and spread over seeds.
#[derive(Clone, Debug, Serialize)]
pub struct MethodRow {
    /// Method name.
    pub method: String,
    /// Method family.
    pub family: Family,
    /// The feed-forward in words.
    pub ffn: String,
    /// Runs (seeds) summarised.
    pub runs: usize,
    /// `(quantity, spread)` in [`Workload::quantity_names`] order; `None` where no run has it
    /// (dense: mean k).
    pub stats: Vec<(String, Option<Spread>)>,
    /// No other routed method is at least as good on the quality axis with a mean k at most as
    /// high.
    pub on_front: bool,
}

impl MethodRow {
    /// The spread of the quantity `name`.
    pub fn get(&self, name: &str) -> Option<Spread> {
        self.stats
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, s)| *s)
    }
}

/// Everything the sweep measured (`sweep.json`).
#[derive(Clone, Debug, Serialize)]
pub struct SweepTable {
    /// What the runs trained (not written: the metrics say it).
    #[serde(skip)]
    pub workload: Workload,
    /// Sweep name (directory `sweep-<name>`).
    pub name: String,
    /// Backend the runs trained on.
    pub backend: String,
    /// Whether `--quick` settings were used.
    pub quick: bool,
    /// Seeds of every method.
    pub seeds: Vec<u64>,
    /// Wall time of this invocation of the sweep, seconds (resumed runs excluded).
    pub wall_time_s: f64,
    /// Runs trained at once: above 1 they shared the device, and so did their speeds.
    pub jobs: usize,
    /// Planned runs without results (`sweep --tables-only` before the sweep finished), in plan
    /// order; empty for a complete sweep.
    pub missing: Vec<String>,
    /// One row per method, in plan order.
    pub methods: Vec<MethodRow>,
    /// One row per run, in plan order.
    pub runs: Vec<RunRow>,
}

impl SweepTable {
    /// Groups the `finished` runs (each with its metrics, in plan order) by method and marks
    /// the front of `workload`'s quality.
    pub fn rows(
        finished: Vec<(&PlannedRun, WorkloadMetrics)>,
        workload: Workload,
    ) -> (Vec<MethodRow>, Vec<RunRow>) {
        let runs: Vec<RunRow> = finished
            .into_iter()
            .map(|(run, metrics)| RunRow {
                run: run.name.clone(),
                method: run.method.clone(),
                family: run.family,
                seed: run.seed,
                metrics,
            })
            .collect();
        let mut methods: Vec<MethodRow> = Vec::new();
        for row in &runs {
            if methods.iter().any(|m| m.method == row.method) {
                continue;
            }
            let of_method: Vec<Vec<(&str, Option<f64>)>> = runs
                .iter()
                .filter(|r| r.method == row.method)
                .map(|r| r.metrics.quantities())
                .collect();
            let stats = workload
                .quantity_names()
                .into_iter()
                .enumerate()
                .map(|(i, name)| {
                    let values: Vec<f64> = of_method.iter().filter_map(|q| q[i].1).collect();
                    (name.to_string(), Spread::of(&values))
                })
                .collect();
            methods.push(MethodRow {
                method: row.method.clone(),
                family: row.family,
                ffn: row.metrics.describe().to_string(),
                runs: of_method.len(),
                stats,
                on_front: false,
            });
        }
        mark_front(&mut methods, workload.quality());
        (methods, runs)
    }

    /// Writes `sweep.json` and `sweep.csv` into `dir`.
    pub fn save(&self, dir: &Path) -> Result<(), ExperimentError> {
        let json_path = dir.join("sweep.json");
        let json = serde_json::to_string_pretty(self).expect("the sweep table serialises");
        std::fs::write(&json_path, json).map_err(ExperimentError::io(&json_path))?;
        let csv_path = dir.join("sweep.csv");
        std::fs::write(&csv_path, self.csv()).map_err(ExperimentError::io(&csv_path))
    }

    /// One row per run (`kind = run`, std columns empty), then one per method (`kind = method`,
    /// mean and std over seeds, `seed` empty).
    pub fn csv(&self) -> String {
        let mut header: Vec<String> = ["kind", "method", "family", "seed", "runs"]
            .map(String::from)
            .to_vec();
        for name in self.workload.quantity_names() {
            header.extend([name.to_string(), format!("{name}_std")]);
        }
        let number = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v}"));
        let mut lines = vec![header.join(",")];
        for row in &self.runs {
            let mut cells = vec![
                "run".to_string(),
                row.method.clone(),
                row.family.label().to_string(),
                row.seed.to_string(),
                "1".to_string(),
            ];
            for (_, value) in row.metrics.quantities() {
                cells.push(number(value));
                cells.push(String::new());
            }
            lines.push(cells.join(","));
        }
        for row in &self.methods {
            let mut cells = vec![
                "method".to_string(),
                row.method.clone(),
                row.family.label().to_string(),
                String::new(),
                row.runs.to_string(),
            ];
            for (_, spread) in &row.stats {
                cells.push(number(spread.map(|s| s.mean)));
                cells.push(number(spread.map(|s| s.std)));
            }
            lines.push(cells.join(","));
        }
        lines.join("\n") + "\n"
    }
}

/// Marks the routed methods no other routed method dominates: `quality` at least as good with a
/// mean k at most as high, one of them strictly.
pub(super) fn mark_front(methods: &mut [MethodRow], quality: Quality) {
    let points: Vec<Option<(f64, f64)>> = methods
        .iter()
        .map(|m| Some((m.get("mean_k")?.mean, m.get(quality.quantity)?.mean)))
        .collect();
    for (i, method) in methods.iter_mut().enumerate() {
        let Some((k, value)) = points[i] else {
            continue;
        };
        method.on_front = !points.iter().flatten().any(|&(other_k, other)| {
            other_k <= k
                && quality.at_least_as_good(other, value)
                && (other_k < k || other != value)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_is_the_mean_and_sample_standard_deviation() {
        let s = Spread::of(&[0.7, 0.8, 0.9]).unwrap();
        assert!((s.mean - 0.8).abs() < 1e-12);
        assert!((s.std - 0.1).abs() < 1e-12);
        assert_eq!(
            Spread::of(&[2.5]),
            Some(Spread {
                mean: 2.5,
                std: 0.0
            })
        );
        assert_eq!(Spread::of(&[]), None);
    }

    #[test]
    fn the_front_keeps_methods_no_other_beats_on_both_axes() {
        let row = |method: &str, k: f64, acc: f64| MethodRow {
            method: method.into(),
            family: Family::Threshold,
            ffn: String::new(),
            runs: 1,
            stats: vec![
                ("mean_k".into(), Spread::of(&[k])),
                ("test_accuracy".into(), Spread::of(&[acc])),
            ],
            on_front: false,
        };
        let mut rows = vec![
            row("a", 1.0, 0.60),
            row("b", 1.5, 0.70),
            row("c", 1.6, 0.65),
            row("d", 2.0, 0.71),
        ];
        mark_front(&mut rows, Workload::Task.quality());
        let front: Vec<bool> = rows.iter().map(|r| r.on_front).collect();
        assert_eq!(front, [true, true, false, true]);
    }
}
