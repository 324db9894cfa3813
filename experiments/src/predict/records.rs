//! What the trained model does on a split, on the host: every block's real routing and, for the
//! training split, the inputs and targets the gating heads learn from.

use burn::data::dataloader::batcher::Batcher;
use moe_model::prediction::{HostRouting, choice_targets};
use moe_model::{Model, MoeBackend};

use crate::data::{TaskBatch, TaskBatcher};
use crate::task::TaskItem;

/// One split's routing by every block.
pub struct SplitRecords {
    /// Real routing of each block. `[block]`
    pub real: Vec<HostRouting>,
    /// Each block's normed input, row-major `[N, d]` (kept only when asked).
    pub normed: Vec<Vec<f32>>,
    /// Each block's choices as distributions over its experts, row-major `[N, E]` (kept only
    /// when asked).
    pub targets: Vec<Vec<f32>>,
    /// Whether each point is hard. `[N]`
    pub hard: Vec<bool>,
    /// Routing slots per token (K).
    pub slots: usize,
}

impl SplitRecords {
    /// Number of points.
    pub fn len(&self) -> usize {
        self.hard.len()
    }

    /// Whether the split is empty.
    pub fn is_empty(&self) -> bool {
        self.hard.is_empty()
    }
}

/// Runs `model` over `items` in batches of `batch_size` and records every block's routing; with
/// `keep_inputs`, also each block's normed input and choice targets (the distillation data).
/// `on_batch(batch)` is called for each batch's passes, for the caller's predictions.
pub fn collect<B: MoeBackend>(
    model: &Model<B>,
    items: &[TaskItem],
    batch_size: usize,
    device: &B::Device,
    keep_inputs: bool,
    mut on_batch: impl FnMut(&[moe_model::BlockPass<B>], usize),
) -> SplitRecords {
    let blocks = model.blocks().len();
    let mut records = SplitRecords {
        real: vec![HostRouting::default(); blocks],
        normed: vec![Vec::new(); blocks],
        targets: vec![Vec::new(); blocks],
        hard: Vec::with_capacity(items.len()),
        slots: 0,
    };
    for chunk in items.chunks(batch_size.max(1)) {
        let batch: TaskBatch<B> = TaskBatcher.batch(chunk.to_vec(), device);
        let (_, passes) = model.forward_blocks(batch.inputs);
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
        on_batch(&passes, chunk.len());
        records.hard.extend(batch.hard);
    }
    records
}
