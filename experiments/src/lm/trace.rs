//! The routing of a trained MoE language model on real text, in the trace format `offload`
//! replays (`--trace`): every MoE block's experts for each token of the first test windows,
//! without predictions (`offload` injects predictors of a chosen accuracy into such a trace).

use std::path::Path;

use burn::tensor::{Int, Tensor, TensorData};
use moe_model::MoeBackend;
use moe_model::lm::Lm;
use moe_model::prediction::HostRouting;

use crate::error::ExperimentError;
use crate::lm::tokens::{Token, as_ids};
use crate::lm::windows::eval_windows;
use crate::predict::trace::{DECODE_FILE, PREFILL_FILE};
use crate::routing_trace::{RoutingTrace, TraceBatch, TraceBlock};

/// Windows of the test split whose routing the prefill trace holds (one batch per window).
const PREFILL_WINDOWS: usize = 4;
/// Tokens of the decode trace (one token per batch, from the first window).
const DECODE_TOKENS: usize = 256;

/// Writes `trace-prefill.json` and `trace-decode.json` into `dir` from `model`'s routing of the
/// first windows of `stream`; nothing for a model without MoE blocks.
pub fn write_traces<B: MoeBackend>(
    model: &Lm<B>,
    stream: &[Token],
    dir: &Path,
    device: &B::Device,
) -> Result<(), ExperimentError> {
    let moe_blocks = model.moe_blocks();
    let Some(&first) = moe_blocks.first() else {
        return Ok(());
    };
    let mut windows: Vec<Vec<HostRouting>> = Vec::new(); // [window][MoE block]
    let mut slots = 0;
    for (inputs, _) in eval_windows(stream, model.context()).take(PREFILL_WINDOWS) {
        let tokens = Tensor::<B, 2, Int>::from_data(
            TensorData::new(as_ids(inputs), [1, inputs.len()]),
            device,
        );
        let (_, passes) = model.forward_blocks(tokens);
        let routing: Vec<HostRouting> = passes
            .iter()
            .filter_map(|pass| pass.routing.as_ref())
            .map(|routing| {
                slots = routing.expert_ids.dims()[1];
                HostRouting::from_routing(routing)
            })
            .collect();
        windows.push(routing);
    }
    let num_experts = match &model.blocks()[first].ffn {
        moe_model::Ffn::Moe(layer) => layer.num_experts(),
        moe_model::Ffn::Dense(_) => return Ok(()),
    };
    let trace = |batches: Vec<TraceBatch>| RoutingTrace {
        num_experts,
        num_blocks: moe_blocks.len(),
        slots,
        predictors: Vec::new(),
        max_distance: 1,
        batches,
    };
    let batch = |blocks: &[HostRouting], range: std::ops::Range<usize>| TraceBatch {
        blocks: blocks
            .iter()
            .map(|routing| TraceBlock {
                expert_ids: routing.slice(range.clone()).id_rows(slots),
                predicted: Vec::new(),
            })
            .collect(),
    };
    let prefill = windows
        .iter()
        .map(|blocks| batch(blocks, 0..blocks[0].len()))
        .collect();
    let decode = windows.first().map_or_else(Vec::new, |blocks| {
        (0..blocks[0].len().min(DECODE_TOKENS))
            .map(|t| batch(blocks, t..t + 1))
            .collect()
    });
    trace(prefill).save(&dir.join(PREFILL_FILE))?;
    trace(decode).save(&dir.join(DECODE_FILE))
}
