//! Routing traces of the test split for the offloading runtime: the real routing of every block
//! and each predictor's predicted expert set, batch by batch (`trace-decode.json`: one token per
//! batch; `trace-prefill.json`: `--prefill-batch` tokens per batch).
//!
//! Decisions are made per token in evaluation-sized batches and grouped afterwards, which is what
//! a batch of the trace's size would choose for every per-token policy (top-k, threshold, top-p);
//! expert choice and capacity dropping depend on the batch, so there the trace keeps the
//! evaluation batches' decisions.

use moe_model::prediction::HostRouting;

use crate::routing_trace::{RoutingTrace, TraceBatch, TraceBlock};

/// The decode trace's file.
pub const DECODE_FILE: &str = "trace-decode.json";
/// The prefill trace's file.
pub const PREFILL_FILE: &str = "trace-prefill.json";

/// What a trace is made of: real routing and predictions of the test split.
pub struct TraceSource<'a> {
    /// Real routing of each block. `[block]`
    pub real: &'a [HostRouting],
    /// Predictions: `[predictor][target][j - 1]`, empty where `t < j`.
    pub predicted: &'a [Vec<Vec<HostRouting>>],
    /// Predictor names, in the order of `predicted`.
    pub predictors: &'a [&'a str],
    /// Experts per block.
    pub num_experts: usize,
    /// Routing slots per token.
    pub slots: usize,
    /// Largest distance predicted.
    pub max_distance: usize,
}

impl TraceSource<'_> {
    /// The first `tokens` test points in batches of `batch_size`.
    pub fn trace(&self, tokens: usize, batch_size: usize) -> RoutingTrace {
        let available = self.real.first().map_or(0, HostRouting::len);
        let tokens = tokens.min(available);
        let batches = (0..tokens)
            .step_by(batch_size.max(1))
            .map(|start| {
                let range = start..(start + batch_size).min(tokens);
                let blocks = (0..self.real.len())
                    .map(|t| TraceBlock {
                        expert_ids: self.real[t].slice(range.clone()).id_rows(self.slots),
                        predicted: self
                            .predicted
                            .iter()
                            .map(|by_target| {
                                (1..=self.max_distance)
                                    .map(|j| match t >= j {
                                        true => by_target[t][j - 1].union(range.clone()),
                                        false => Vec::new(),
                                    })
                                    .collect()
                            })
                            .collect(),
                    })
                    .collect();
                TraceBatch { blocks }
            })
            .collect();
        RoutingTrace {
            num_experts: self.num_experts,
            num_blocks: self.real.len(),
            slots: self.slots,
            predictors: self.predictors.iter().map(|p| p.to_string()).collect(),
            max_distance: self.max_distance,
            batches,
        }
    }
}
