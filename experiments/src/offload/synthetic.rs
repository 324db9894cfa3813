//! A documented synthetic routing distribution, written as a [`RoutingTrace`], and the injection
//! of prediction errors at a chosen accuracy (for traces from here or from `predict`).
//!
//! Routing, per block `l` of `blocks`:
//! - expert popularity is Zipf-like: the expert of rank `r` (a random order per block) is drawn
//!   with probability proportional to `1 / (r + 1)^skew` (`skew = 0`: uniform);
//! - a token takes `top_k` distinct experts drawn by popularity without replacement, except a
//!   share `single_expert_share` of tokens that take one (variable k, as a threshold router);
//! - batch 0 is the prefill (`prefill_tokens` tokens); every later batch is one decode step of
//!   `decode_tokens` tokens, where each token keeps the experts its position chose at the
//!   previous step with probability `locality` (temporal locality, what a cache can reuse) and
//!   draws afresh otherwise.
//!
//! Predictions with accuracy `a`, for block `l` made `j` blocks earlier (`l >= j`): each expert
//! the block needs is predicted with probability `a`; each one missed is replaced by an expert
//! the block does not need (by popularity), so the predicted set has the size of the needed
//! set and its precision equals its recall in expectation. `a = 1` predicts exactly the needed
//! set (the oracle's set).

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::routing_trace::{RoutingTrace, TraceBatch, TraceBlock};

/// The synthetic distribution's parameters (see the module docs).
#[derive(Clone, Debug, PartialEq)]
pub struct SyntheticRouting {
    /// MoE blocks N.
    pub blocks: usize,
    /// Experts E per block.
    pub num_experts: usize,
    /// Experts per token.
    pub top_k: usize,
    /// Share of tokens that take a single expert (0: fixed top-k).
    pub single_expert_share: f64,
    /// Zipf exponent of expert popularity (0: uniform).
    pub skew: f64,
    /// Probability that a decode token reuses its previous step's experts.
    pub locality: f64,
    /// Tokens of the prefill batch.
    pub prefill_tokens: usize,
    /// Decode steps after the prefill.
    pub decode_steps: usize,
    /// Tokens per decode step.
    pub decode_tokens: usize,
    /// Accuracy of the predictor written into the trace (named [`SYNTHETIC_PREDICTOR`]).
    pub accuracy: f64,
    /// Largest block distance predicted.
    pub max_distance: usize,
    /// Seed of every draw.
    pub seed: u64,
}

/// The name of the synthetic predictor in a generated trace.
pub const SYNTHETIC_PREDICTOR: &str = "synthetic";
/// The name of the predictor [`inject_predictions`] writes.
pub const INJECTED_PREDICTOR: &str = "injected";

impl SyntheticRouting {
    /// Draws the trace.
    pub fn generate(&self) -> RoutingTrace {
        let mut rng = StdRng::seed_from_u64(self.seed);
        let popularity: Vec<Vec<f64>> = (0..self.blocks)
            .map(|_| self.popularity(&mut rng))
            .collect();
        let mut batches = Vec::with_capacity(1 + self.decode_steps);
        let prefill: Vec<Vec<Vec<i32>>> = popularity
            .iter()
            .map(|p| {
                (0..self.prefill_tokens)
                    .map(|_| self.token(&mut rng, p))
                    .collect()
            })
            .collect();
        batches.push(prefill);
        let mut previous: Option<Vec<Vec<Vec<i32>>>> = None;
        for _ in 0..self.decode_steps {
            let step: Vec<Vec<Vec<i32>>> = popularity
                .iter()
                .enumerate()
                .map(|(l, p)| {
                    (0..self.decode_tokens)
                        .map(|t| match &previous {
                            Some(prev) if rng.random_bool(self.locality) => prev[l][t].clone(),
                            _ => self.token(&mut rng, p),
                        })
                        .collect()
                })
                .collect();
            previous = Some(step.clone());
            batches.push(step);
        }
        let trace = RoutingTrace {
            num_experts: self.num_experts,
            num_blocks: self.blocks,
            slots: self.top_k,
            predictors: vec![],
            max_distance: self.max_distance,
            batches: batches
                .into_iter()
                .map(|blocks| TraceBatch {
                    blocks: blocks
                        .into_iter()
                        .map(|expert_ids| TraceBlock {
                            expert_ids,
                            predicted: vec![],
                        })
                        .collect(),
                })
                .collect(),
        };
        let popularity_of = |l: usize| popularity[l].clone();
        with_predictions(
            &trace,
            SYNTHETIC_PREDICTOR,
            self.accuracy,
            self.seed ^ 0x5eed,
            &popularity_of,
        )
    }

    /// Probabilities of the experts of one block: Zipf over a random order.
    fn popularity(&self, rng: &mut StdRng) -> Vec<f64> {
        let mut order: Vec<usize> = (0..self.num_experts).collect();
        for i in (1..order.len()).rev() {
            order.swap(i, rng.random_range(0..=i));
        }
        let mut weights = vec![0.0; self.num_experts];
        for (rank, &expert) in order.iter().enumerate() {
            weights[expert] = 1.0 / ((rank + 1) as f64).powf(self.skew);
        }
        let total: f64 = weights.iter().sum();
        weights.iter().map(|w| w / total).collect()
    }

    /// One token's experts, most probable draw first, padded with -1 to `top_k` slots.
    fn token(&self, rng: &mut StdRng, popularity: &[f64]) -> Vec<i32> {
        let k = if rng.random_bool(self.single_expert_share) {
            1
        } else {
            self.top_k
        };
        let mut chosen = draw_distinct(rng, popularity, k, &[]);
        chosen.resize(self.top_k, -1);
        chosen
    }
}

/// `count` distinct experts drawn by `popularity`, none of `excluded` (fewer if not enough
/// remain).
fn draw_distinct(
    rng: &mut StdRng,
    popularity: &[f64],
    count: usize,
    excluded: &[usize],
) -> Vec<i32> {
    let mut weights: Vec<f64> = popularity.to_vec();
    for &e in excluded {
        weights[e] = 0.0;
    }
    let mut chosen = Vec::with_capacity(count);
    for _ in 0..count {
        let total: f64 = weights.iter().sum();
        if total <= 0.0 {
            break;
        }
        let mut pick = rng.random_range(0.0..total);
        let mut expert = weights.len() - 1;
        for (e, &w) in weights.iter().enumerate() {
            if pick < w {
                expert = e;
                break;
            }
            pick -= w;
        }
        if weights[expert] <= 0.0 {
            // Rounding at the end of the range: take the last expert still available.
            expert = weights.iter().rposition(|&w| w > 0.0).expect("total > 0");
        }
        weights[expert] = 0.0;
        chosen.push(expert as i32);
    }
    chosen
}

/// The trace with its predictors replaced by one, [`INJECTED_PREDICTOR`], of accuracy
/// `accuracy` at every distance (see the module docs); wrong experts are drawn by how often
/// each block uses them in the trace.
pub fn inject_predictions(trace: &RoutingTrace, accuracy: f64, seed: u64) -> RoutingTrace {
    let usage: Vec<Vec<f64>> = (0..trace.num_blocks)
        .map(|l| {
            let mut counts = vec![1.0; trace.num_experts];
            for batch in &trace.batches {
                for &e in batch.blocks[l].expert_ids.iter().flatten() {
                    if e >= 0 {
                        counts[e as usize] += 1.0;
                    }
                }
            }
            counts
        })
        .collect();
    with_predictions(trace, INJECTED_PREDICTOR, accuracy, seed, &|l| {
        usage[l].clone()
    })
}

/// The trace with one predictor `name` of `accuracy`; replacements drawn by `popularity(l)`.
fn with_predictions(
    trace: &RoutingTrace,
    name: &str,
    accuracy: f64,
    seed: u64,
    popularity: &dyn Fn(usize) -> Vec<f64>,
) -> RoutingTrace {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = trace.clone();
    out.predictors = vec![name.to_string()];
    for batch in &mut out.batches {
        for (l, block) in batch.blocks.iter_mut().enumerate() {
            let needed = block.needed();
            let weights = popularity(l);
            block.predicted = vec![
                (1..=trace.max_distance)
                    .map(|j| {
                        if l < j {
                            return Vec::new();
                        }
                        predict(&mut rng, &needed, accuracy, &weights)
                    })
                    .collect(),
            ];
        }
    }
    out
}

/// Keeps each of `needed` with probability `accuracy` and replaces each one dropped by an
/// expert outside `needed`; sorted and distinct.
fn predict(rng: &mut StdRng, needed: &[usize], accuracy: f64, popularity: &[f64]) -> Vec<usize> {
    let kept: Vec<usize> = needed
        .iter()
        .copied()
        .filter(|_| rng.random_bool(accuracy.clamp(0.0, 1.0)))
        .collect();
    let wrong = draw_distinct(rng, popularity, needed.len() - kept.len(), needed);
    let mut predicted: Vec<usize> = kept
        .into_iter()
        .chain(wrong.into_iter().map(|e| e as usize))
        .collect();
    predicted.sort_unstable();
    predicted
}

/// Recall of the predictions of `predictor` at `distance` against the needed sets, over every
/// (batch, block) that has a prediction; `None` if none has.
pub fn measured_recall(trace: &RoutingTrace, predictor: usize, distance: usize) -> Option<f64> {
    let (mut hit, mut total) = (0usize, 0usize);
    for batch in &trace.batches {
        for (l, block) in batch.blocks.iter().enumerate() {
            if l < distance {
                continue;
            }
            let predicted = &block.predicted[predictor][distance - 1];
            let needed = block.needed();
            hit += needed.iter().filter(|e| predicted.contains(e)).count();
            total += needed.len();
        }
    }
    (total > 0).then(|| hit as f64 / total as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routing() -> SyntheticRouting {
        SyntheticRouting {
            blocks: 4,
            num_experts: 8,
            top_k: 2,
            single_expert_share: 0.3,
            skew: 1.0,
            locality: 0.5,
            prefill_tokens: 64,
            decode_steps: 50,
            decode_tokens: 1,
            accuracy: 0.7,
            max_distance: 2,
            seed: 3,
        }
    }

    #[test]
    fn generated_traces_are_consistent_reproducible_and_skewed() {
        let trace = routing().generate();
        trace.check().unwrap();
        assert_eq!(trace, routing().generate());
        assert_eq!(trace.batches.len(), 51);
        assert_eq!(trace.batches[0].blocks[0].expert_ids.len(), 64);
        let ids: Vec<i32> = trace.batches[0].blocks[0]
            .expert_ids
            .iter()
            .flatten()
            .copied()
            .collect();
        let singles = trace.batches[0].blocks[0]
            .expert_ids
            .iter()
            .filter(|t| t[1] == -1)
            .count();
        assert!((5..40).contains(&singles), "{singles} single-expert tokens");
        let mut counts = [0; 8];
        ids.iter()
            .filter(|&&e| e >= 0)
            .for_each(|&e| counts[e as usize] += 1);
        let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
        assert!(max > &(2 * min.max(&1)), "skewed popularity: {counts:?}");
        // Tokens have distinct experts.
        for token in trace.batches[0].blocks[0].expert_ids.iter() {
            assert!(token[0] != token[1]);
        }
    }

    #[test]
    fn injected_accuracy_is_the_measured_recall_and_one_is_exact() {
        let trace = routing().generate();
        for accuracy in [0.0, 0.5, 0.9] {
            let injected = inject_predictions(&trace, accuracy, 1);
            injected.check().unwrap();
            let recall = measured_recall(&injected, 0, 1).unwrap();
            assert!(
                (recall - accuracy).abs() < 0.1,
                "{accuracy}: recall {recall}"
            );
        }
        let exact = inject_predictions(&trace, 1.0, 1);
        for batch in &exact.batches {
            for (l, block) in batch.blocks.iter().enumerate() {
                let expected = if l >= 1 { block.needed() } else { vec![] };
                assert_eq!(block.predicted[0][0], expected);
                assert_eq!(
                    block.predicted[0][1],
                    if l >= 2 { block.needed() } else { vec![] }
                );
            }
        }
    }

    #[test]
    fn decode_steps_reuse_experts_with_the_locality_probability() {
        let mut always = routing();
        always.locality = 1.0;
        let trace = always.generate();
        for step in 2..trace.batches.len() {
            assert_eq!(trace.batches[step].blocks, {
                let mut blocks = trace.batches[step - 1].blocks.clone();
                for (b, mine) in blocks.iter_mut().zip(&trace.batches[step].blocks) {
                    b.predicted = mine.predicted.clone();
                }
                blocks
            });
        }
    }
}
