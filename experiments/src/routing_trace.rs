//! A routing trace: the experts every block of a multi-block MoE model chose for a sequence of
//! batches, with the expert sets that predictors expected for them. `predict` writes it from a
//! trained model; the offloading runtime replays it at a larger layer size.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::ExperimentError;

/// Routing of a model on a sequence of batches (prefill: many tokens; decode: one token each).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RoutingTrace {
    /// Experts per MoE block.
    pub num_experts: usize,
    /// MoE blocks of the model.
    pub num_blocks: usize,
    /// Routing slots per token (columns of `expert_ids`).
    pub slots: usize,
    /// Names of the predictors whose predictions each block holds, in that order.
    pub predictors: Vec<String>,
    /// Largest block distance j predicted (1: the next block).
    pub max_distance: usize,
    /// The batches, in the order they were run.
    pub batches: Vec<TraceBatch>,
}

/// One batch through every block.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TraceBatch {
    /// One entry per block, in block order.
    pub blocks: Vec<TraceBlock>,
}

/// What one block chose for one batch, and what was predicted for it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TraceBlock {
    /// Experts of each token, most probable first, -1 in unused slots. `[T][slots]`
    pub expert_ids: Vec<Vec<i32>>,
    /// `predicted[p][j - 1]`: the expert set predictor `p` expected this block to use, made `j`
    /// blocks earlier (from block `l - j`'s input); empty where `l - j < 0`. Sorted, distinct.
    pub predicted: Vec<Vec<Vec<usize>>>,
}

impl TraceBlock {
    /// The distinct experts this block used for the batch, sorted: what must be resident.
    pub fn needed(&self) -> Vec<usize> {
        let mut experts: Vec<usize> = self
            .expert_ids
            .iter()
            .flatten()
            .filter(|&&e| e >= 0)
            .map(|&e| e as usize)
            .collect();
        experts.sort_unstable();
        experts.dedup();
        experts
    }
}

impl RoutingTrace {
    /// Reads a trace written by [`RoutingTrace::save`], checked for consistency.
    pub fn load(path: &Path) -> Result<Self, ExperimentError> {
        let text = std::fs::read_to_string(path).map_err(ExperimentError::io(path))?;
        let damaged = |reason: String| ExperimentError::DamagedFile {
            path: path.to_path_buf(),
            reason,
        };
        let trace: Self = serde_json::from_str(&text).map_err(|e| damaged(e.to_string()))?;
        trace.check().map_err(damaged)?;
        Ok(trace)
    }

    /// Writes the trace as JSON.
    pub fn save(&self, path: &Path) -> Result<(), ExperimentError> {
        let text = serde_json::to_string(self).expect("a trace serialises");
        std::fs::write(path, text).map_err(ExperimentError::io(path))
    }

    /// Why the trace is inconsistent, if it is: block counts, slot counts, expert ids and
    /// prediction shapes must match the header, and every batch holds the same number of tokens
    /// (at least one) in every block.
    pub fn check(&self) -> Result<(), String> {
        for (field, value) in [
            ("num_experts", self.num_experts),
            ("num_blocks", self.num_blocks),
            ("slots", self.slots),
        ] {
            if value == 0 {
                return Err(format!("{field} = 0, must be >= 1"));
            }
        }
        if self.batches.is_empty() {
            return Err("it holds no batch".into());
        }
        for (b, batch) in self.batches.iter().enumerate() {
            let tokens = batch
                .blocks
                .first()
                .map_or(0, |block| block.expert_ids.len());
            if tokens == 0 && !batch.blocks.is_empty() {
                return Err(format!("batch {b} holds no token"));
            }
            if let Some(l) = batch
                .blocks
                .iter()
                .position(|block| block.expert_ids.len() != tokens)
            {
                return Err(format!(
                    "batch {b}: block {l} has {} tokens, block 0 has {tokens}",
                    batch.blocks[l].expert_ids.len()
                ));
            }
            if batch.blocks.len() != self.num_blocks {
                return Err(format!(
                    "batch {b} has {} blocks, the trace says {}",
                    batch.blocks.len(),
                    self.num_blocks
                ));
            }
            for (l, block) in batch.blocks.iter().enumerate() {
                let at = format!("batch {b} block {l}");
                if let Some(row) = block.expert_ids.iter().find(|r| r.len() != self.slots) {
                    return Err(format!(
                        "{at}: a token has {} slots, the trace says {}",
                        row.len(),
                        self.slots
                    ));
                }
                let ids = block.expert_ids.iter().flatten();
                if let Some(e) = ids
                    .copied()
                    .find(|&e| e < -1 || e >= self.num_experts as i32)
                {
                    return Err(format!(
                        "{at}: expert id {e} outside -1..{}",
                        self.num_experts
                    ));
                }
                if block.predicted.len() != self.predictors.len()
                    || block.predicted.iter().any(|p| p.len() != self.max_distance)
                {
                    return Err(format!(
                        "{at}: predictions must be [{} predictors][{} distances]",
                        self.predictors.len(),
                        self.max_distance
                    ));
                }
                let sets = block.predicted.iter().flatten().flatten();
                if let Some(e) = sets.copied().find(|&e| e >= self.num_experts) {
                    return Err(format!(
                        "{at}: predicted expert {e} >= {}",
                        self.num_experts
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trace() -> RoutingTrace {
        RoutingTrace {
            num_experts: 4,
            num_blocks: 2,
            slots: 2,
            predictors: vec!["fate".into()],
            max_distance: 1,
            batches: vec![TraceBatch {
                blocks: vec![
                    TraceBlock {
                        expert_ids: vec![vec![3, -1], vec![1, 3]],
                        predicted: vec![vec![vec![]]],
                    },
                    TraceBlock {
                        expert_ids: vec![vec![0, 2], vec![2, -1]],
                        predicted: vec![vec![vec![0, 2]]],
                    },
                ],
            }],
        }
    }

    #[test]
    fn needed_is_the_sorted_distinct_experts_used() {
        assert_eq!(trace().batches[0].blocks[0].needed(), vec![1, 3]);
    }

    #[test]
    fn save_then_load_gives_the_same_trace_and_bad_ids_are_refused() {
        let dir = std::env::temp_dir().join(format!("trace-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("trace.json");
        trace().save(&path).unwrap();
        assert_eq!(RoutingTrace::load(&path).unwrap(), trace());

        let mut bad = trace();
        bad.batches[0].blocks[1].expert_ids[0][1] = 4;
        bad.save(&path).unwrap();
        let error = RoutingTrace::load(&path).unwrap_err().to_string();
        assert!(error.contains("expert id 4 outside -1..4"), "{error}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
