//! The trained run `predict` reads: a task model with its task's splits, or a language model
//! with windows of its corpus's train and test splits. Both hand over every block's inputs and
//! routing batch by batch; the rest of `predict` does not know which it has.

use std::path::Path;

use burn::data::dataloader::batcher::Batcher;
use burn::tensor::{Int, Tensor, TensorData};
use moe_model::prediction::RoutedBlocks;
use moe_model::{BlockPass, FfnConfig, Lm, Model, MoeBackend};

use crate::backend::{BackendKind, max_buffer_bytes};
use crate::config::{ConfigSources, RunConfig};
use crate::data::{TaskBatch, TaskBatcher, TaskSplits, items};
use crate::error::ExperimentError;
use crate::eval::load_classifier;
use crate::limits::{Purpose, check_memory};
use crate::lm::config::is_lm_config;
use crate::lm::data::TokenSplits;
use crate::lm::memory::check_lm_memory;
use crate::lm::saved::{SavedLm, load_lm};
use crate::lm::tokens::{Token, as_ids};
use crate::lm::windows::eval_windows;

/// The config of the run `predict` reads.
pub enum SourceConfig {
    /// A task-model run.
    Task(RunConfig),
    /// A language-model run.
    Lm(SavedLm),
}

impl SourceConfig {
    /// Reads the config of the run at `run`, `sources.file` (its kind from the file).
    pub fn load(run: &Path, sources: &ConfigSources) -> Result<Self, ExperimentError> {
        Ok(match is_lm_config(&sources.file) {
            true => Self::Lm(SavedLm::open(run)?),
            false => Self::Task(sources.load()?),
        })
    }

    /// Every block's feed-forward.
    pub fn ffn(&self) -> &FfnConfig {
        match self {
            Self::Task(config) => &config.model.ffn,
            Self::Lm(saved) => &saved.config.model.ffn,
        }
    }

    /// Number of blocks.
    pub fn num_blocks(&self) -> usize {
        match self {
            Self::Task(config) => config.model.num_blocks,
            Self::Lm(saved) => saved.config.model.num_blocks,
        }
    }

    /// Width of the residual stream.
    pub fn d_model(&self) -> usize {
        match self {
            Self::Task(config) => config.model.d_model,
            Self::Lm(saved) => saved.config.model.d_model,
        }
    }

    /// The kind of example `predict` counts: task points or language-model tokens.
    pub fn unit(&self) -> &'static str {
        match self {
            Self::Task(_) => "points",
            Self::Lm(_) => "tokens",
        }
    }

    /// Refuses a model that would not fit on `backend` to evaluate.
    pub fn check_memory(
        &self,
        sources: &ConfigSources,
        backend: BackendKind,
    ) -> Result<(), ExperimentError> {
        let buffer = max_buffer_bytes(backend);
        match self {
            Self::Task(config) => check_memory(config, sources, Purpose::Eval, buffer),
            Self::Lm(saved) => check_lm_memory(&saved.config, sources, buffer),
        }
    }
}

/// A trained model on a backend, with the examples `predict` fits on and scores on.
pub enum SourceModel<B: MoeBackend> {
    /// The task model and its task's splits.
    Task {
        /// The model.
        model: Model<B>,
        /// The task's splits (points).
        splits: TaskSplits,
        /// Points per forward pass.
        batch_size: usize,
    },
    /// The language model and its corpus's token streams.
    Lm {
        /// The model.
        model: Lm<B>,
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
        config: &SourceConfig,
        device: &B::Device,
    ) -> Result<Self, ExperimentError> {
        Ok(match config {
            SourceConfig::Task(config) => Self::Task {
                model: load_classifier::<B>(run, config, device)?.model,
                splits: TaskSplits::generate(&config.task),
                batch_size: config.train.eval_batch_size,
            },
            SourceConfig::Lm(saved) => Self::Lm {
                model: load_lm::<B>(saved, device)?,
                splits: TokenSplits::load(&saved.config.corpus)?,
                windows: saved.config.train.eval_windows,
                batch_size: saved.config.train.eval_batch_size,
            },
        })
    }

    /// The model's blocks, as the predictors read them.
    pub fn blocks(&self) -> &dyn RoutedBlocks<B> {
        match self {
            Self::Task { model, .. } => model,
            Self::Lm { model, .. } => model,
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
