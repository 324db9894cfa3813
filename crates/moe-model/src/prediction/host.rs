//! Routing decisions on the host, in the one form every predictor produces and the metrics read.

use burn::tensor::backend::Backend;

use crate::backend_ext::Routing;

/// One block's routing for a sequence of tokens (real, or predicted), on the host.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HostRouting {
    /// Experts of each token in the order chosen (the first choice first), unused slots left
    /// out. `[T][k_t]`
    pub sets: Vec<Vec<usize>>,
    /// Every expert of each token ranked by score, best first, ties to the lower index. `[T][E]`
    pub ranking: Vec<Vec<usize>>,
}

impl HostRouting {
    /// Reads a decision back from the device: its chosen experts and the ranking of its logits.
    pub fn from_routing<B: Backend>(routing: &Routing<B>) -> Self {
        let [_, slots] = routing.expert_ids.dims();
        let [_, num_experts] = routing.logits.dims();
        let ids: Vec<i64> = routing.expert_ids.to_data().iter::<i64>().collect();
        let logits: Vec<f32> = routing.logits.to_data().iter::<f32>().collect();
        Self {
            sets: ids
                .chunks(slots.max(1))
                .map(|row| {
                    row.iter()
                        .filter(|&&e| e >= 0)
                        .map(|&e| e as usize)
                        .collect()
                })
                .collect(),
            ranking: rank_scores(&logits, num_experts),
        }
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.sets.len()
    }

    /// Whether there are no tokens.
    pub fn is_empty(&self) -> bool {
        self.sets.is_empty()
    }

    /// Appends the tokens of `other` (the next batch).
    pub fn extend(&mut self, other: HostRouting) {
        self.sets.extend(other.sets);
        self.ranking.extend(other.ranking);
    }

    /// The tokens in `range`.
    pub fn slice(&self, range: std::ops::Range<usize>) -> HostRouting {
        HostRouting {
            sets: self.sets[range.clone()].to_vec(),
            ranking: self.ranking[range].to_vec(),
        }
    }

    /// Each token's experts as a row of `slots` ids, -1 in unused slots (the trace format).
    pub fn id_rows(&self, slots: usize) -> Vec<Vec<i32>> {
        self.sets
            .iter()
            .map(|set| {
                let mut row: Vec<i32> = set.iter().map(|&e| e as i32).collect();
                row.resize(slots.max(set.len()), -1);
                row
            })
            .collect()
    }

    /// The distinct experts of the tokens in `range`, sorted: what a batch of them needs.
    pub fn union(&self, range: std::ops::Range<usize>) -> Vec<usize> {
        let mut experts: Vec<usize> = self.sets[range].iter().flatten().copied().collect();
        experts.sort_unstable();
        experts.dedup();
        experts
    }
}

/// Ranks the experts of each row of `scores` (`[T, E]` row-major): best first, ties to the lower
/// index, NaN last.
pub fn rank_scores(scores: &[f32], num_experts: usize) -> Vec<Vec<usize>> {
    scores
        .chunks(num_experts.max(1))
        .map(|row| {
            let mut order: Vec<usize> = (0..row.len()).collect();
            let key = |e: usize| {
                if row[e].is_nan() {
                    f32::NEG_INFINITY
                } else {
                    row[e]
                }
            };
            order.sort_by(|&a, &b| key(b).total_cmp(&key(a)).then(a.cmp(&b)));
            order
        })
        .collect()
}
