//! Scores of every predictor at every distance, summed over target blocks and per target.

use moe_model::prediction::{Cost, HostRouting, PredictionScore, PredictionTally};

use super::predictors::{PREDICTORS, description, predictor_cost};
use super::records::SplitRecords;
use super::report::{DistanceReport, PredictorReport, TargetScore};

/// Top-k hit rates reported: k = 1 and 2 (at most E).
const MAX_HIT_K: usize = 2;

/// What the scores need besides the routing.
pub struct ScoreSetup {
    /// Largest distance predicted.
    pub max_distance: usize,
    /// Tokens per batch of the batch-union scores.
    pub batch_size: usize,
    /// Width of the model.
    pub d_model: usize,
    /// Experts per block.
    pub num_experts: usize,
    /// Hidden width of the gating heads.
    pub hidden: usize,
    /// Cost of one gating head.
    pub head_cost: Cost,
}

/// One report per predictor (in [`PREDICTORS`] order) from the test split's real routing and
/// the predictions `predicted[p][t][j - 1]`.
pub fn score_predictors(
    test: &SplitRecords,
    predicted: &[Vec<Vec<HostRouting>>],
    setup: &ScoreSetup,
) -> Vec<PredictorReport> {
    let blocks = test.real.len();
    let score = |p: usize, j: usize, targets: std::ops::Range<usize>| -> PredictionScore {
        let max_hit_k = MAX_HIT_K.min(setup.num_experts);
        let mut tally = PredictionTally::new(setup.batch_size, max_hit_k);
        for t in targets {
            tally.add(&test.real[t], &predicted[p][t][j - 1], test.hard.as_deref());
        }
        tally.score()
    };
    PREDICTORS
        .iter()
        .enumerate()
        .map(|(p, &name)| PredictorReport {
            name: name.to_string(),
            description: description(name, setup.hidden),
            distances: (1..=setup.max_distance)
                .map(|j| DistanceReport {
                    distance: j,
                    cost: predictor_cost(name, setup.d_model, setup.num_experts, setup.head_cost),
                    all: score(p, j, j..blocks),
                    targets: (j..blocks)
                        .map(|t| TargetScore {
                            target_block: t,
                            source_block: t - j,
                            score: score(p, j, t..t + 1),
                        })
                        .collect(),
                })
                .collect(),
        })
        .collect()
}

/// Mean experts per token of the real routing, over tokens and blocks.
pub fn mean_k(records: &SplitRecords) -> f64 {
    let per_block = records.real.iter().map(|real| {
        real.sets.iter().map(Vec::len).sum::<usize>() as f64 / real.len().max(1) as f64
    });
    per_block.sum::<f64>() / records.real.len().max(1) as f64
}
