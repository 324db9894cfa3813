//! The trained run `predict` reads: a task model with its task's splits, or a language model
//! with windows of its corpus's train and test splits. Both hand over every block's inputs and
//! routing batch by batch; the rest of `predict` does not know which it has.

use std::path::Path;

use burn::data::dataloader::batcher::Batcher;
use burn::tensor::{Int, Tensor, TensorData};
use moe_model::prediction::RoutedBlocks;
use moe_model::{BlockPass, Lm, Model, MoeBackend};

use crate::config::ConfigSources;
use crate::data::{TaskBatch, TaskBatcher, TaskSplits, items};
use crate::error::ExperimentError;
use crate::eval::load_classifier;
use crate::lm::data::TokenSplits;
use crate::lm::saved::{SavedLm, load_lm};
use crate::lm::tokens::{Token, as_ids};
use crate::lm::windows::eval_windows;
use crate::workload::{Workload, WorkloadConfig};

/// Reads a run's `config.toml` (`sources.file`) as either workload.
pub fn load_config(sources: &ConfigSources) -> Result<WorkloadConfig, ExperimentError> {
    let text =
        std::fs::read_to_string(&sources.file).map_err(ExperimentError::io(&sources.file))?;
    WorkloadConfig::parse(&text, &sources.file, &sources.overrides)
}

/// The kind of example `predict` counts: task points or language-model tokens.
pub fn unit(workload: Workload) -> &'static str {
    match workload {
        Workload::Task => "points",
        Workload::Lm => "tokens",
    }
}

/// A trained model on a backend, with the examples `predict` fits on and scores on.
pub enum SourceModel<B: MoeBackend> {
    /// The task model and its task's splits.
    Task {
        /// The model.
        model: Box<Model<B>>,
        /// The task's splits (points).
        splits: TaskSplits,
        /// Points per forward pass.
        batch_size: usize,
    },
    /// The language model and its corpus's token streams.
    Lm {
        /// The model.
        model: Box<Lm<B>>,
        /// The corpus's splits (token streams).
        splits: TokenSplits,
        /// Windows of `context` tokens read from the start of each split.
        windows: usize,
        /// Windows per forward pass.
        batch_size: usize,
    },
}

/// Which split to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    /// Where the gating heads and the frequency baseline are fitted.
    Train,
    /// Where the predictors are scored.
    Test,
}

impl<B: MoeBackend> SourceModel<B> {
    /// Loads the run's model with its saved weights and its examples.
    pub fn load(
        run: &Path,
        config: &WorkloadConfig,
        device: &B::Device,
    ) -> Result<Self, ExperimentError> {
        Ok(match config {
            WorkloadConfig::Task(config) => Self::Task {
                model: Box::new(load_classifier::<B>(run, config, device)?.model),
                splits: TaskSplits::generate(&config.task),
                batch_size: config.train.eval_batch_size,
            },
            WorkloadConfig::Lm(config) => Self::Lm {
                model: Box::new(load_lm::<B>(&SavedLm::open(run)?, device)?),
                splits: TokenSplits::load(&config.corpus)?,
                windows: config.train.eval_windows,
                batch_size: config.train.eval_batch_size,
            },
        })
    }

    /// The model's blocks, as the predictors read them.
    pub fn blocks(&self) -> &dyn RoutedBlocks<B> {
        match self {
            Self::Task { model, .. } => model.as_ref(),
            Self::Lm { model, .. } => model.as_ref(),
        }
    }

    /// Runs the model over `split` batch by batch and calls `on_batch(passes, hard)` with every
    /// block's pass over the batch's rows and, for the task, which of its points are hard
    /// (`None` for the language model, whose tokens have no such label).
    pub fn for_each_batch(
        &self,
        split: Split,
        device: &B::Device,
        mut on_batch: impl FnMut(Vec<BlockPass<B>>, Option<Vec<bool>>),
    ) {
        match self {
            Self::Task {
                model,
                splits,
                batch_size,
            } => {
                let points = match split {
                    Split::Train => &splits.train,
                    Split::Test => &splits.test,
                };
                for chunk in items(points).chunks((*batch_size).max(1)) {
                    let batch: TaskBatch<B> = TaskBatcher.batch(chunk.to_vec(), device);
                    let (_, passes) = model.forward_blocks(batch.inputs);
                    on_batch(passes, Some(batch.hard));
                }
            }
            Self::Lm {
                model,
                splits,
                windows,
                batch_size,
            } => {
                let stream = match split {
                    Split::Train => &splits.train,
                    Split::Test => &splits.test,
                };
                let full: Vec<&[Token]> = eval_windows(stream, model.context())
                    .map(|(inputs, _)| inputs)
                    .filter(|inputs| inputs.len() == model.context())
                    .take(*windows)
                    .collect();
                for chunk in full.chunks((*batch_size).max(1)) {
                    let ids: Vec<i64> = chunk.iter().flat_map(|w| as_ids(w)).collect();
                    let tokens = Tensor::<B, 2, Int>::from_data(
                        TensorData::new(ids, [chunk.len(), model.context()]),
                        device,
                    );
                    let (_, passes) = model.forward_blocks(tokens);
                    on_batch(passes, None);
                }
            }
        }
    }
}
