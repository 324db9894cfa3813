//! The fitted predictors of every (target block, distance) and their predictions for a batch.

use burn::tensor::backend::Backend;
use moe_model::prediction::RoutedBlocks;
use moe_model::prediction::{
    Cost, FateInput, FrequencyBaseline, HostRouting, fate_cost, fate_routing,
};
use moe_model::{BlockPass, MoeBackend};

use super::fit::Heads;

/// The predictors, in the order of results and traces.
pub const PREDICTORS: [&str; 4] = ["fate", "fate-target-norm", "gating", "frequency"];

/// What each predictor is, for `prediction.json`.
pub fn description(name: &str, hidden: usize) -> String {
    match name {
        "fate" => "block l+j's router on block l's normed input (no training)".into(),
        "fate-target-norm" => {
            "block l+j's norm and router on block l's residual input (no training)".into()
        }
        "gating" => match hidden {
            0 => "linear head per (target block, distance) on block l's normed input, distilled \
                  from the router's choices (BCE); predicts the experts of probability >= 1/2"
                .into(),
            h => format!(
                "two-layer head (hidden {h}, ReLU) per (target block, distance) on block l's \
                 normed input, distilled from the router's choices (BCE); predicts the experts \
                 of probability >= 1/2"
            ),
        },
        _ => {
            "the target block's most frequent experts in the training split, mean-k of them".into()
        }
    }
}

/// The predictors fitted for a model.
pub struct FittedPredictors<B: Backend> {
    /// Gating head of each target block and distance: `heads[t][j - 1]`, `Some` where `t >= j`.
    pub heads: Heads<B>,
    /// Frequency baseline of each target block.
    pub frequency: Vec<FrequencyBaseline>,
    /// Largest distance predicted.
    pub max_distance: usize,
}

impl<B: MoeBackend> FittedPredictors<B> {
    /// Every predictor's prediction for every target block and distance, for a batch of `tokens`
    /// tokens whose block passes are `passes`: `[predictor][target][j - 1]`, empty where `t < j`.
    pub fn predict(
        &self,
        model: &dyn RoutedBlocks<B>,
        passes: &[BlockPass<B>],
        tokens: usize,
    ) -> Vec<Vec<Vec<HostRouting>>> {
        let blocks = passes.len();
        let mut out = vec![vec![vec![HostRouting::default(); self.max_distance]; blocks]; 4];
        for t in 0..blocks {
            if model.moe_layer(t).is_none() {
                continue;
            }
            for j in 1..=self.max_distance.min(t) {
                let source = &passes[t - j];
                for (p, input) in [FateInput::SourceNormed, FateInput::TargetNorm]
                    .into_iter()
                    .enumerate()
                {
                    if let Some(routing) = fate_routing(model, source, t, input) {
                        out[p][t][j - 1] = HostRouting::from_routing(&routing);
                    }
                }
                if let Some(head) = &self.heads[t][j - 1] {
                    out[2][t][j - 1] = head.predict(source.normed.clone());
                }
                out[3][t][j - 1] = self.frequency[t].predict(tokens);
            }
        }
        out
    }
}

/// The cost of one predictor for one target block.
pub fn predictor_cost(name: &str, d_model: usize, num_experts: usize, head: Cost) -> Cost {
    match name {
        "fate" | "fate-target-norm" => fate_cost(d_model, num_experts),
        "gating" => head,
        _ => Cost {
            params: 0,
            flops_per_token: 0.0,
        },
    }
}
