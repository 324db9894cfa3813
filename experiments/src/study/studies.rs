//! The two routing studies (the language model's and the synthetic task's) as report sections:
//! their tables, and the comparisons the answers quote.

use std::path::Path;

use super::compare::Comparison;
use super::sources::Found;
use super::sweep_view::{MethodView, SweepView};
use crate::markdown::{link_from, number, pm, table};
use crate::workload::Workload;

/// The quality in words.
pub fn quality_words(workload: Workload) -> &'static str {
    match workload {
        Workload::Lm => "validation bits per byte (lower is better)",
        Workload::Task => "test accuracy in % (higher is better)",
    }
}

/// How the quality prints: the factor on the stored value and the decimals.
pub fn quality_format(workload: Workload) -> (f64, usize) {
    match workload {
        Workload::Lm => (1.0, 4),
        Workload::Task => (100.0, 1),
    }
}

/// What a sentence calls the workload.
pub fn workload_name(workload: Workload) -> &'static str {
    match workload {
        Workload::Lm => "the language model",
        Workload::Task => "the synthetic task",
    }
}

/// A loaded study: its file and rows.
pub struct Study {
    /// Which workload.
    pub workload: Workload,
    /// The file it came from.
    pub found: Found,
    /// Its method rows.
    pub sweep: SweepView,
}

impl Study {
    /// The study in `found`, if it has method rows.
    pub fn new(workload: Workload, found: Found) -> Option<Self> {
        let sweep = SweepView::parse(&found.json)?;
        Some(Self {
            workload,
            found,
            sweep,
        })
    }

    /// The variable-k method the answers quote: the mean-k budget nearest 1.4, else the first
    /// threshold method.
    pub fn variable_k(&self) -> Option<&MethodView> {
        let target = |m: &&MethodView| {
            m.method
                .strip_prefix("budget-")
                .and_then(|t| t.parse::<f64>().ok())
                .map_or(f64::INFINITY, |t| (t - 1.4).abs())
        };
        self.sweep
            .family("budget")
            .min_by(|a, b| target(a).total_cmp(&target(b)))
            .or_else(|| self.sweep.family("threshold").next())
    }

    /// For a partial sweep, which runs did not run, in a sentence.
    pub fn partial(&self) -> Option<String> {
        let missing = &self.sweep.missing;
        let finished: usize = self.sweep.methods.iter().map(|m| m.runs).sum();
        (!missing.is_empty()).then(|| {
            format!(
                "Partial: {finished} of {} runs finished; not run: {}.",
                finished + missing.len(),
                missing.join(", ")
            )
        })
    }

    /// `method` against `base` on the quality quantity.
    pub fn quality(&self, method: &str, base: &str) -> Option<Comparison> {
        let quantity = self.workload.quality().quantity;
        Comparison::of(
            self.sweep.method(method)?,
            self.sweep.method(base)?,
            quantity,
        )
    }

    /// `method` against `base` on `quantity`.
    pub fn compare(&self, method: &str, base: &str, quantity: &str) -> Option<Comparison> {
        Comparison::of(
            self.sweep.method(method)?,
            self.sweep.method(base)?,
            quantity,
        )
    }

    /// The section: where the numbers come from, the table, the plots, and (LM) where the router
    /// spends its second expert.
    pub fn section(&self, report: &Path) -> String {
        let sweep_dir = self.found.path.parent().unwrap_or(Path::new("."));
        let link = |file: &str| {
            link_from(report, &sweep_dir.join(file))
                .display()
                .to_string()
        };
        let mut source = format!(
            "Source: {}; {} seeds per method, trained on {}.",
            self.found.cite(),
            self.sweep.seeds,
            self.sweep.backend
        );
        if let Some(partial) = self.partial() {
            source += &format!(" {partial}");
        }
        let mut parts = vec![source];
        parts.push(self.table());
        let tables = match self.workload {
            Workload::Lm => "Every table of the study, per block and per byte class included",
            Workload::Task => "Every table of the study",
        };
        parts.push(format!(
            "![{} against mean k]({}) ![load CV per method]({})\n\n{tables}: [{}]({}).",
            quality_words(self.workload),
            link("pareto.png"),
            link("load_cv.png"),
            "pareto.md",
            link("pareto.md")
        ));
        if self.workload == Workload::Lm
            && let Some(classes) = self.byte_classes()
        {
            parts.push(classes);
        }
        parts.join("\n\n")
    }

    fn table(&self) -> String {
        let methods = &self.sweep.methods;
        match self.workload {
            Workload::Lm => table(
                &[
                    "method",
                    "valid bits/byte",
                    "mean k",
                    "k=1 %",
                    "FLOPs/token",
                    "train tokens/s",
                    "load CV",
                ],
                &methods
                    .iter()
                    .map(|m| {
                        vec![
                            m.method.clone(),
                            pm(m.get("valid_bits_per_byte"), 1.0, 4),
                            pm(m.get("mean_k"), 1.0, 3),
                            pm(m.get("fraction_k1"), 100.0, 1),
                            number(m.get("flops_per_token").map(|s| s.mean), 0),
                            number(m.get("steady_tokens_per_s").map(|s| s.mean), 0),
                            pm(m.get("load_cv"), 1.0, 3),
                        ]
                    })
                    .collect::<Vec<_>>(),
            ),
            Workload::Task => table(
                &[
                    "method",
                    "test accuracy %",
                    "mean k",
                    "FLOPs/token",
                    "load CV",
                ],
                &methods
                    .iter()
                    .map(|m| {
                        vec![
                            m.method.clone(),
                            pm(m.get("test_accuracy"), 100.0, 1),
                            pm(m.get("mean_k"), 1.0, 3),
                            number(m.get("flops_per_token").map(|s| s.mean), 0),
                            pm(m.get("load_cv"), 1.0, 3),
                        ]
                    })
                    .collect::<Vec<_>>(),
            ),
        }
    }

    /// Mean k by byte class of the variable-k method, averaged over its seeds (validation
    /// split), from the runs' own metrics in `sweep.json`.
    fn byte_classes(&self) -> Option<String> {
        let method = self.variable_k()?;
        let runs: Vec<&serde_json::Value> = self.found.json["runs"]
            .as_array()?
            .iter()
            .filter(|run| run["method"] == method.method.as_str())
            .collect();
        // Per class, one [share, bits per byte, mean k] per run.
        let mut rows: Vec<(String, Vec<[f64; 3]>)> = Vec::new();
        for run in &runs {
            let valid = &run["metrics"]["valid"];
            let classes = valid["by_class"].as_array().into_iter().flatten();
            for score in classes.chain(valid["by_word_position"].as_array().into_iter().flatten()) {
                let (Some(class), Some(share), Some(bits), Some(k)) = (
                    score["class"].as_str(),
                    score["share"].as_f64(),
                    score["bits_per_byte"].as_f64(),
                    score["mean_k"].as_f64(),
                ) else {
                    continue;
                };
                match rows.iter_mut().find(|row| row.0 == class) {
                    Some(row) => row.1.push([share, bits, k]),
                    None => rows.push((class.to_string(), vec![[share, bits, k]])),
                }
            }
        }
        if rows.is_empty() {
            return None;
        }
        let body: Vec<Vec<String>> = rows
            .iter()
            .map(|(class, values)| {
                let mean =
                    |i: usize| values.iter().map(|v| v[i]).sum::<f64>() / values.len() as f64;
                vec![
                    class.clone(),
                    format!("{:.1}", 100.0 * mean(0)),
                    format!("{:.3}", mean(1)),
                    format!("{:.3}", mean(2)),
                ]
            })
            .collect();
        Some(format!(
            "Where {} spends its second expert (validation split, mean over {} seeds):\n\n{}",
            method.method,
            runs.len(),
            table(&["byte class", "% of bytes", "bits/byte", "mean k"], &body)
        ))
    }
}
