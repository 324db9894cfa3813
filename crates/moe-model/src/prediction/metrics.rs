//! How good a routing prediction is, against the real routing of the same tokens:
//! - recall: of the (token, expert) pairs the router chose, the share predicted (a missed pair is
//!   an expert that must be loaded on demand); precision: of the predicted pairs, the share the
//!   router chose (a wrong one is a wasted copy). Summed over tokens (micro-averaged);
//! - the same on the union of each batch's experts (prefill: what must be resident for the batch);
//! - top-k hit rate: the share of tokens whose first-choice expert is among the predictor's k
//!   best-ranked experts;
//! - exact match: the share of tokens whose predicted set equals the real one;
//! - recall, precision and top-1 hits on easy and on hard points separately.
//!
//! A ratio with nothing to divide by is 0.

use serde::{Deserialize, Serialize};

use super::HostRouting;

/// Overlap, real and predicted sizes of a sequence of sets.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct SetCounts {
    overlap: usize,
    real: usize,
    predicted: usize,
}

impl SetCounts {
    fn add(&mut self, real: &[usize], predicted: &[usize]) {
        self.overlap += real.iter().filter(|e| predicted.contains(e)).count();
        self.real += real.len();
        self.predicted += predicted.len();
    }

    fn recall(&self) -> f64 {
        ratio(self.overlap, self.real)
    }

    fn precision(&self) -> f64 {
        ratio(self.overlap, self.predicted)
    }
}

/// Counts of one kind of point (easy or hard).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct GroupCounts {
    tokens: usize,
    sets: SetCounts,
    with_first_choice: usize,
    top1_hits: usize,
}

/// Scores of one kind of point.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GroupScore {
    /// Tokens of this kind.
    pub tokens: usize,
    /// Recall of the per-token sets.
    pub recall: f64,
    /// Precision of the per-token sets.
    pub precision: f64,
    /// Share of tokens whose first-choice expert is the predictor's best-ranked one.
    pub top1_hit: f64,
}

impl GroupCounts {
    fn score(&self) -> Option<GroupScore> {
        (self.tokens > 0).then(|| GroupScore {
            tokens: self.tokens,
            recall: self.sets.recall(),
            precision: self.sets.precision(),
            top1_hit: ratio(self.top1_hits, self.with_first_choice),
        })
    }
}

/// Scores of one predictor against the real routing (one target block, or several summed).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PredictionScore {
    /// Tokens scored (over all target blocks summed in).
    pub tokens: usize,
    /// Recall of the per-token expert sets.
    pub recall: f64,
    /// Precision of the per-token expert sets.
    pub precision: f64,
    /// Share of tokens whose predicted set equals the real one.
    pub exact_match: f64,
    /// Tokens per batch of the batch-union scores (consecutive tokens; the last batch may be
    /// shorter).
    pub batch_size: usize,
    /// Recall of each batch's union of experts.
    pub batch_recall: f64,
    /// Precision of each batch's union of experts.
    pub batch_precision: f64,
    /// `top_k_hit[k - 1]`: share of tokens whose first-choice expert is in the predictor's top k.
    pub top_k_hit: Vec<f64>,
    /// Mean experts predicted per token.
    pub mean_predicted_k: f64,
    /// Mean experts the router chose per token.
    pub mean_real_k: f64,
    /// Scores on easy points (one cluster), if the points were labelled and some are easy.
    pub easy: Option<GroupScore>,
    /// Scores on hard points (between two clusters), if labelled and some are hard.
    pub hard: Option<GroupScore>,
}

/// Accumulates the comparison of predictions with real routing over target blocks.
#[derive(Clone, Debug)]
pub struct PredictionTally {
    batch_size: usize,
    tokens: usize,
    exact: usize,
    sets: SetCounts,
    batches: SetCounts,
    with_first_choice: usize,
    top_k_hits: Vec<usize>,
    easy: GroupCounts,
    hard: GroupCounts,
}

impl PredictionTally {
    /// An empty tally scoring batch unions over `batch_size` tokens and top-k hits for k in
    /// `1..=max_hit_k`.
    pub fn new(batch_size: usize, max_hit_k: usize) -> Self {
        Self {
            batch_size: batch_size.max(1),
            tokens: 0,
            exact: 0,
            sets: SetCounts::default(),
            batches: SetCounts::default(),
            with_first_choice: 0,
            top_k_hits: vec![0; max_hit_k],
            easy: GroupCounts::default(),
            hard: GroupCounts::default(),
        }
    }

    /// Adds one target block's tokens: its `real` routing, the `predicted` one for the same
    /// tokens, and which tokens are hard (`None`: no easy/hard split).
    ///
    /// # Panics
    /// If the token counts differ.
    pub fn add(&mut self, real: &HostRouting, predicted: &HostRouting, hard: Option<&[bool]>) {
        assert_eq!(
            real.len(),
            predicted.len(),
            "real and predicted token counts"
        );
        if let Some(hard) = hard {
            assert_eq!(hard.len(), real.len(), "one easy/hard flag per token");
        }
        for t in 0..real.len() {
            let (real_set, predicted_set) = (&real.sets[t], &predicted.sets[t]);
            self.tokens += 1;
            self.sets.add(real_set, predicted_set);
            let same = real_set.len() == predicted_set.len()
                && real_set.iter().all(|e| predicted_set.contains(e));
            self.exact += usize::from(same);
            let first = real_set.first();
            let ranked = &predicted.ranking[t];
            if let Some(first) = first {
                self.with_first_choice += 1;
                let position = ranked.iter().position(|e| e == first);
                for (k, hits) in self.top_k_hits.iter_mut().enumerate() {
                    *hits += usize::from(position.is_some_and(|p| p <= k));
                }
            }
            if let Some(hard) = hard {
                let group = match hard[t] {
                    true => &mut self.hard,
                    false => &mut self.easy,
                };
                group.tokens += 1;
                group.sets.add(real_set, predicted_set);
                if let Some(first) = first {
                    group.with_first_choice += 1;
                    group.top1_hits += usize::from(ranked.first() == Some(first));
                }
            }
        }
        for start in (0..real.len()).step_by(self.batch_size) {
            let batch = start..(start + self.batch_size).min(real.len());
            self.batches
                .add(&real.union(batch.clone()), &predicted.union(batch));
        }
    }

    /// The scores of everything added so far.
    pub fn score(&self) -> PredictionScore {
        PredictionScore {
            tokens: self.tokens,
            recall: self.sets.recall(),
            precision: self.sets.precision(),
            exact_match: ratio(self.exact, self.tokens),
            batch_size: self.batch_size,
            batch_recall: self.batches.recall(),
            batch_precision: self.batches.precision(),
            top_k_hit: self
                .top_k_hits
                .iter()
                .map(|&hits| ratio(hits, self.with_first_choice))
                .collect(),
            mean_predicted_k: ratio(self.sets.predicted, self.tokens),
            mean_real_k: ratio(self.sets.real, self.tokens),
            easy: self.easy.score(),
            hard: self.hard.score(),
        }
    }
}

/// `numerator / denominator`, 0 when the denominator is 0.
fn ratio(numerator: usize, denominator: usize) -> f64 {
    match denominator {
        0 => 0.0,
        d => numerator as f64 / d as f64,
    }
}
