//! What the trained model does on a split, on the host: every block's real routing and, for the
//! training split, the inputs and targets the gating heads learn from.

use moe_model::prediction::{HostRouting, choice_targets};
use moe_model::{BlockPass, MoeBackend};

use super::source::{SourceModel, Split};

/// One split's routing by every block.
pub struct SplitRecords {
    /// Real routing of each block. `[block]`
    pub real: Vec<HostRouting>,
    /// Each block's normed input, row-major `[N, d]` (kept only when asked).
    pub normed: Vec<Vec<f32>>,
    /// Each block's choices as distributions over its experts, row-major `[N, E]` (kept only
    /// when asked).
    pub targets: Vec<Vec<f32>>,
    /// Whether each point is hard (task points; `None` for language-model tokens). `[N]`
    pub hard: Option<Vec<bool>>,
    /// Rows (points or tokens) recorded: N.
    pub rows: usize,
    /// Routing slots per token (K).
    pub slots: usize,
}

impl SplitRecords {
    /// Number of rows (points or tokens).
    pub fn len(&self) -> usize {
        self.rows
    }

    /// Whether the split is empty.
    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }
}

/// Runs `source`'s model over `split` and records every block's routing; with `keep_inputs`,
/// also each block's normed input and choice targets (the distillation data).
/// `on_batch(passes, rows)` is called for each batch's passes, for the caller's predictions.
pub fn collect<B: MoeBackend>(
    source: &SourceModel<B>,
    split: Split,
    device: &B::Device,
    keep_inputs: bool,
    mut on_batch: impl FnMut(&[BlockPass<B>], usize),
) -> SplitRecords {
    let blocks = source.blocks().num_blocks();
    let mut records = SplitRecords {
        real: vec![HostRouting::default(); blocks],
        normed: vec![Vec::new(); blocks],
        targets: vec![Vec::new(); blocks],
        hard: None,
        rows: 0,
        slots: 0,
    };
    source.for_each_batch(split, device, |passes, hard| {
        let rows = passes.first().map_or(0, |pass| pass.normed.dims()[0]);
        for (l, pass) in passes.iter().enumerate() {
            let Some(routing) = &pass.routing else {
                continue;
            };
            records.slots = routing.expert_ids.dims()[1];
            records.real[l].extend(HostRouting::from_routing(routing));
            if keep_inputs {
                records.normed[l].extend(pass.normed.to_data().iter::<f32>());
                records.targets[l].extend(choice_targets(routing));
            }
        }
        on_batch(&passes, rows);
        if let Some(hard) = hard {
            records.hard.get_or_insert_with(Vec::new).extend(hard);
        }
        records.rows += rows;
    });
    records
}
