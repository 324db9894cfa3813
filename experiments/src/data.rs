//! The task's points as Burn datasets (train/valid/test splits) and batches.

use std::sync::Arc;

use burn::data::dataloader::batcher::Batcher;
use burn::data::dataset::transform::PartialDataset;
use burn::data::dataset::{Dataset, InMemDataset};
use burn::tensor::{Int, Tensor, TensorData, backend::Backend};

use crate::task::{TaskConfig, TaskItem, generate};

/// One split of the generated points.
pub type TaskDataset = PartialDataset<Arc<InMemDataset<TaskItem>>, TaskItem>;

/// The three splits of one generated task.
pub struct TaskSplits {
    /// Training points.
    pub train: TaskDataset,
    /// Validation points (model selection, progress).
    pub valid: TaskDataset,
    /// Test points (the reported numbers).
    pub test: TaskDataset,
}

impl TaskSplits {
    /// Generates the task and cuts it into consecutive train, valid and test ranges.
    pub fn generate(config: &TaskConfig) -> Self {
        let all = Arc::new(InMemDataset::new(generate(config)));
        let valid_start = config.train_size;
        let test_start = valid_start + config.valid_size;
        Self {
            train: PartialDataset::new(all.clone(), 0, valid_start),
            valid: PartialDataset::new(all.clone(), valid_start, test_start),
            test: PartialDataset::new(all, test_start, config.total_size()),
        }
    }
}

/// All items of a dataset, in order.
pub fn items(dataset: &impl Dataset<TaskItem>) -> Vec<TaskItem> {
    dataset.iter().collect()
}

/// A batch of points on a device.
#[derive(Clone, Debug)]
pub struct TaskBatch<B: Backend> {
    /// `[T, input_dim]`
    pub inputs: Tensor<B, 2>,
    /// `[T]`
    pub targets: Tensor<B, 1, Int>,
    /// Whether each point is hard (kept on the host for the easy/hard breakdown). `[T]`
    pub hard: Vec<bool>,
    /// Each point's cluster (kept on the host for the specialisation metrics). `[T]`
    pub clusters: Vec<usize>,
}

/// Stacks [`TaskItem`]s into a [`TaskBatch`].
#[derive(Clone, Debug, Default)]
pub struct TaskBatcher;

impl<B: Backend> Batcher<B, TaskItem, TaskBatch<B>> for TaskBatcher {
    fn batch(&self, items: Vec<TaskItem>, device: &B::Device) -> TaskBatch<B> {
        let input_dim = items[0].features.len();
        let features: Vec<f32> = items
            .iter()
            .flat_map(|item| item.features.iter().copied())
            .collect();
        let labels: Vec<i64> = items.iter().map(|item| item.label as i64).collect();
        TaskBatch {
            inputs: Tensor::from_data(TensorData::new(features, [items.len(), input_dim]), device),
            targets: Tensor::from_data(TensorData::new(labels, [items.len()]), device),
            hard: items.iter().map(|item| item.hard).collect(),
            clusters: items.iter().map(|item| item.cluster).collect(),
        }
    }
}
