//! The baseline a trained predictor must beat: predict, for every token, the experts the target
//! block chose most often in the training data.

use serde::{Deserialize, Serialize};

use super::HostRouting;

/// The target block's experts by how often it chose them, and how many to predict per token.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FrequencyBaseline {
    /// Times each expert was chosen. `[E]`
    pub counts: Vec<usize>,
    /// Experts predicted per token: the block's mean k, rounded, at least 1.
    pub set_size: usize,
}

impl FrequencyBaseline {
    /// Counts the choices of `real` (one block's routing on the training data) over
    /// `num_experts` experts.
    pub fn fit(real: &HostRouting, num_experts: usize) -> Self {
        let mut counts = vec![0; num_experts];
        for &e in real.sets.iter().flatten() {
            counts[e] += 1;
        }
        let chosen: usize = counts.iter().sum();
        let mean_k = chosen as f64 / real.len().max(1) as f64;
        Self {
            counts,
            set_size: (mean_k.round() as usize).clamp(1, num_experts.max(1)),
        }
    }

    /// Experts from most to least frequent, ties to the lower index.
    pub fn ranking(&self) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.counts.len()).collect();
        order.sort_by(|&a, &b| self.counts[b].cmp(&self.counts[a]).then(a.cmp(&b)));
        order
    }

    /// The same prediction for each of `tokens` tokens: the `set_size` most frequent experts.
    pub fn predict(&self, tokens: usize) -> HostRouting {
        let ranking = self.ranking();
        let set = ranking[..self.set_size.min(ranking.len())].to_vec();
        HostRouting {
            sets: vec![set; tokens],
            ranking: vec![ranking; tokens],
        }
    }
}
