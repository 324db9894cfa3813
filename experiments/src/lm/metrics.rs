//! `metrics.json` of a language-model run and the summary printed after it.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::ExperimentError;
use crate::lm::evaluate::SplitScore;
use crate::run_dir::{load_metrics, save_metrics};

/// One point of the training curve.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CurvePoint {
    /// Optimizer steps done.
    pub step: usize,
    /// Training cross-entropy of the last step, bits per token.
    pub train_bits: f64,
    /// Validation bits per byte on the first `eval_windows` windows (`None` between estimates).
    pub valid_bits_per_byte: Option<f64>,
}

/// What one language-model run measured; written as `results/<run>/metrics.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LmMetrics {
    /// Always `"lm"`: tells a language-model run from a task run.
    pub workload: String,
    /// Run name.
    pub run: String,
    /// Backend it ran on.
    pub backend: String,
    /// Commit of the code (`-dirty` if it had uncommitted changes).
    pub git_commit: Option<String>,
    /// The model in words, e.g. `4 blocks d=256, moe E=8 F=256 threshold(tau=0.5)`.
    pub model: String,
    /// Corpus sources trained on.
    pub sources: Vec<String>,
    /// Optimizer steps done.
    pub steps: usize,
    /// Tokens trained on (`steps x batch_size x context`).
    pub train_tokens: usize,
    /// Wall time of the training steps (validation estimates excluded), seconds.
    pub train_wall_time_s: f64,
    /// Tokens trained per second, over the whole run.
    pub train_tokens_per_s: f64,
    /// Tokens trained per second over the second half of the steps, after kernel compilation and
    /// autotuning (`None` for a run stopped before it).
    pub steady_tokens_per_s: Option<f64>,
    /// Every parameter of the model.
    pub params_total: usize,
    /// Parameters a token uses on average (idle experts excluded).
    pub params_active: f64,
    /// FLOPs per token of the forward pass: 2 x active matmul parameters plus attention over the
    /// context.
    pub flops_per_token: f64,
    /// The validation split, scored at the end.
    pub valid: SplitScore,
    /// The test split, scored at the end.
    pub test: SplitScore,
    /// The mean-k budget's frozen limit of each MoE block that has one.
    pub routing_limits: Vec<f64>,
    /// Training loss and validation estimates along the run.
    pub curve: Vec<CurvePoint>,
}

impl LmMetrics {
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
                "run".to_string(),
                format!("{} ({}, {})", self.run, self.model, self.backend),
            ),
            (
                "bits per byte".to_string(),
                format!(
                    "valid {:.4}, test {:.4}",
                    self.valid.bits_per_byte, self.test.bits_per_byte
                ),
            ),
            (
                "training".to_string(),
                format!(
                    "{} steps, {} tokens in {:.1} s ({:.0} tokens/s; second half {})",
                    self.steps,
                    self.train_tokens,
                    self.train_wall_time_s,
                    self.train_tokens_per_s,
                    self.steady_tokens_per_s
                        .map_or("-".into(), |rate| format!("{rate:.0} tokens/s"))
                ),
            ),
            (
                "evaluation".to_string(),
                format!("{:.0} tokens/s", self.test.tokens_per_s),
            ),
            (
                "parameters".to_string(),
                format!(
                    "{} total, {:.0} active per token; {:.0} FLOPs per token",
                    self.params_total, self.params_active, self.flops_per_token
                ),
            ),
        ];
        if let (Some(mean_k), Some(k1)) = (self.test.mean_k, self.test.fraction_k1) {
            rows.push((
                "mean k".to_string(),
                format!("{mean_k:.3} (k=1 for {:.1}%)", 100.0 * k1),
            ));
            for block in &self.test.blocks {
                rows.push((
                    format!("block {}", block.block),
                    format!(
                        "mean k {:.3}, load CV {:.3}, Gini {:.3}, MaxVio {:.3}, entropy {:.3}",
                        block.mean_k,
                        block.load.cv,
                        block.load.gini,
                        block.load.max_violation,
                        block.router_entropy
                    ),
                ));
            }
        }
        for score in self.test.by_class.iter().chain(&self.test.by_word_position) {
            let k = score
                .mean_k
                .map_or(String::new(), |k| format!(", mean k {k:.3}"));
            rows.push((
                format!("  {}", score.class),
                format!(
                    "{:.1}% of bytes, {:.3} bits/byte{k}",
                    100.0 * score.share,
                    score.bits_per_byte
                ),
            ));
        }
        rows.iter()
            .map(|(name, value)| format!("  {name:<20} {value}"))
            .collect::<Vec<_>>()
            .join("\n")
    }
}
