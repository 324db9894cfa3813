//! `prediction.json`, `prediction.csv` and the table printed at the end of `predict`.

use std::fmt::Write as _;
use std::path::Path;

use moe_model::prediction::{Cost, DistillReport, PredictionScore};
use serde::{Deserialize, Serialize};

use super::settings::PredictSettings;
use crate::error::ExperimentError;

/// The JSON file of a prediction run.
pub const JSON_FILE: &str = "prediction.json";
/// The CSV file of a prediction run.
pub const CSV_FILE: &str = "prediction.csv";

/// Everything `predict` measured; written as `prediction.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PredictionReport {
    /// The run directory whose model was read.
    pub run: String,
    /// Backend the predictors ran on.
    pub backend: String,
    /// Commit of the code (`-dirty` if it had uncommitted changes).
    pub git_commit: Option<String>,
    /// The settings used.
    pub settings: PredictSettings,
    /// Largest block distance predicted.
    pub max_distance: usize,
    /// The model whose routing is predicted.
    pub model: ModelSummary,
    /// One MoE layer's cost, to set the predictors' costs against.
    pub layer: LayerCost,
    /// Scores of every predictor at every distance.
    pub predictors: Vec<PredictorReport>,
    /// Distillation of every gating head.
    pub training: Vec<HeadTraining>,
    /// Wall time of the whole command, seconds.
    pub wall_time_s: f64,
}

/// The model whose routing is predicted.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelSummary {
    /// Blocks (all MoE).
    pub num_blocks: usize,
    /// Experts per block.
    pub num_experts: usize,
    /// Routing slots per token (K).
    pub slots: usize,
    /// Width of the residual stream.
    pub d_model: usize,
    /// The feed-forward in words.
    pub ffn: String,
    /// Points the heads were trained on (training split).
    pub train_points: usize,
    /// Points scored (test split).
    pub test_points: usize,
}

/// One MoE layer's size and compute.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LayerCost {
    /// Parameters of one layer (router and every expert).
    pub params: usize,
    /// FLOPs per token of one layer at the test set's mean k (router and the experts used).
    pub flops_per_token: f64,
    /// Mean experts per token on the test set, over blocks.
    pub mean_k: f64,
}

/// One predictor's scores.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PredictorReport {
    /// Its name (`fate`, `fate-target-norm`, `gating`, `frequency`).
    pub name: String,
    /// What it is.
    pub description: String,
    /// Scores for j = 1..=max_distance.
    pub distances: Vec<DistanceReport>,
}

/// A predictor's scores at one distance.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DistanceReport {
    /// Block distance j.
    pub distance: usize,
    /// Parameters and FLOPs per token of the predictor for one target block.
    pub cost: Cost,
    /// Scores over every target block j..N summed.
    pub all: PredictionScore,
    /// Scores per target block.
    pub targets: Vec<TargetScore>,
}

/// Scores for one target block.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TargetScore {
    /// The block whose routing is predicted (l + j).
    pub target_block: usize,
    /// The block whose input the prediction is made from (l).
    pub source_block: usize,
    /// The scores.
    pub score: PredictionScore,
}

/// How one gating head was distilled.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HeadTraining {
    /// Block whose routing the head predicts.
    pub target_block: usize,
    /// Distance j.
    pub distance: usize,
    /// Losses, steps and time.
    pub report: DistillReport,
}

impl PredictionReport {
    /// Writes `prediction.json` and `prediction.csv` into `dir`.
    pub fn save(&self, dir: &Path) -> Result<(), ExperimentError> {
        let json = dir.join(JSON_FILE);
        let text = serde_json::to_string_pretty(self).expect("a report serialises");
        std::fs::write(&json, text).map_err(ExperimentError::io(&json))?;
        let csv = dir.join(CSV_FILE);
        std::fs::write(&csv, self.csv()).map_err(ExperimentError::io(&csv))
    }

    /// Reads `prediction.json` from `dir`.
    pub fn load(dir: &Path) -> Result<Self, ExperimentError> {
        let path = dir.join(JSON_FILE);
        let text = std::fs::read_to_string(&path).map_err(ExperimentError::io(&path))?;
        serde_json::from_str(&text).map_err(|e| ExperimentError::DamagedFile {
            path,
            reason: e.to_string(),
        })
    }

    /// One row per predictor, distance and target block (`all`: every target summed).
    pub fn csv(&self) -> String {
        let mut out = String::from(
            "predictor,distance,target_block,source_block,tokens,recall,precision,exact_match,\
             batch_size,batch_recall,batch_precision,top1_hit,top2_hit,mean_predicted_k,\
             mean_real_k,recall_easy,recall_hard,precision_easy,precision_hard,top1_hit_easy,\
             top1_hit_hard,params,flops_per_token,layer_params,layer_flops_per_token\n",
        );
        for predictor in &self.predictors {
            for distance in &predictor.distances {
                let all = ("all".to_string(), String::new(), &distance.all);
                let targets = distance.targets.iter().map(|t| {
                    (
                        t.target_block.to_string(),
                        t.source_block.to_string(),
                        &t.score,
                    )
                });
                for (target, source, s) in std::iter::once(all).chain(targets) {
                    let group =
                        |g: &Option<moe_model::prediction::GroupScore>,
                         f: fn(&moe_model::prediction::GroupScore) -> f64| {
                            g.as_ref().map_or(String::new(), |g| format!("{:.6}", f(g)))
                        };
                    let hit = |k: usize| {
                        s.top_k_hit
                            .get(k)
                            .map_or(String::new(), |h| format!("{h:.6}"))
                    };
                    let _ = writeln!(
                        out,
                        "{},{},{target},{source},{},{:.6},{:.6},{:.6},{},{:.6},{:.6},{},{},{:.4},{:.4},{},{},{},{},{},{},{},{},{},{}",
                        predictor.name,
                        distance.distance,
                        s.tokens,
                        s.recall,
                        s.precision,
                        s.exact_match,
                        s.batch_size,
                        s.batch_recall,
                        s.batch_precision,
                        hit(0),
                        hit(1),
                        s.mean_predicted_k,
                        s.mean_real_k,
                        group(&s.easy, |g| g.recall),
                        group(&s.hard, |g| g.recall),
                        group(&s.easy, |g| g.precision),
                        group(&s.hard, |g| g.precision),
                        group(&s.easy, |g| g.top1_hit),
                        group(&s.hard, |g| g.top1_hit),
                        distance.cost.params,
                        distance.cost.flops_per_token,
                        self.layer.params,
                        self.layer.flops_per_token,
                    );
                }
            }
        }
        out
    }

    /// The summary table (every target summed per distance), in Markdown.
    pub fn markdown(&self) -> String {
        let batch = self
            .predictors
            .first()
            .and_then(|p| p.distances.first())
            .map_or(0, |d| d.all.batch_size);
        let mut out = format!(
            "| predictor | j | recall % | precision % | exact % | top-1 hit % | top-2 hit % | \
             batch-{batch} recall % | batch-{batch} precision % | recall easy / hard % | \
             top-1 easy / hard % | params | FLOPs/token |\n\
             | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n"
        );
        let pct = |v: f64| format!("{:.1}", 100.0 * v);
        let pair = |a: Option<f64>, b: Option<f64>| {
            let show = |v: Option<f64>| v.map_or("-".to_string(), pct);
            format!("{} / {}", show(a), show(b))
        };
        for predictor in &self.predictors {
            for d in &predictor.distances {
                let s = &d.all;
                let hit = |k: usize| s.top_k_hit.get(k).map_or("-".to_string(), |&h| pct(h));
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.0} |",
                    predictor.name,
                    d.distance,
                    pct(s.recall),
                    pct(s.precision),
                    pct(s.exact_match),
                    hit(0),
                    hit(1),
                    pct(s.batch_recall),
                    pct(s.batch_precision),
                    pair(
                        s.easy.as_ref().map(|g| g.recall),
                        s.hard.as_ref().map(|g| g.recall)
                    ),
                    pair(
                        s.easy.as_ref().map(|g| g.top1_hit),
                        s.hard.as_ref().map(|g| g.top1_hit)
                    ),
                    d.cost.params,
                    d.cost.flops_per_token,
                );
            }
        }
        let _ = write!(
            out,
            "\nOne MoE layer: {} parameters, {:.0} FLOPs/token at mean k {:.3} (test set); \
             predictor costs are per target block.",
            self.layer.params, self.layer.flops_per_token, self.layer.mean_k
        );
        out
    }
}
