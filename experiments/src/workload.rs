//! The two models the experiments train: the synthetic task's classifier or the byte-level
//! language model. A config with a `[corpus]` table is a language model. A sweep's configs and
//! metrics are of one workload; `predict` reads a run of either.

use std::path::Path;

use moe_model::{FfnConfig, InvalidValue};

use crate::config::{ConfigFile, ConfigSources, RunConfig, parse_config};
use crate::error::ExperimentError;
use crate::limits::{Purpose, check_memory};
use crate::lm::config::{LmRunConfig, is_lm_config_text};
use crate::lm::memory::check_lm_memory;
use crate::lm::metrics::LmMetrics;
use crate::report::RunMetrics;

/// The two models.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Workload {
    /// The synthetic task's classifier (`configs/sweep.toml`).
    #[default]
    Task,
    /// The byte-level language model (`configs/sweep-lm.toml`).
    Lm,
}

impl Workload {
    /// Reads the metrics a finished run of this workload wrote into `run_dir`.
    pub fn load_metrics(self, run_dir: &Path) -> Result<WorkloadMetrics, ExperimentError> {
        Ok(match self {
            Workload::Task => WorkloadMetrics::Task(RunMetrics::load(run_dir)?),
            Workload::Lm => WorkloadMetrics::Lm(LmMetrics::load(run_dir)?),
        })
    }
}

/// One planned run's config: a task run or a language-model run.
#[derive(Clone, Debug)]
pub enum WorkloadConfig {
    /// A task run (`[task]`, `[model]`, `[train]`).
    Task(RunConfig),
    /// A language-model run (`[corpus]`, `[model]`, `[train]`).
    Lm(LmRunConfig),
}

impl WorkloadConfig {
    /// Parses config text (a language model when it has a `[corpus]` table) with `key=value`
    /// overrides, as `train --config <path> --set ...` would; `path` is used in errors.
    pub fn parse(text: &str, path: &Path, overrides: &[String]) -> Result<Self, ExperimentError> {
        Ok(match is_lm_config_text(text) {
            true => WorkloadConfig::Lm(parse_config(text, path, overrides)?),
            false => WorkloadConfig::Task(RunConfig::parse(text, path, overrides)?),
        })
    }

    /// Which model it trains.
    pub fn workload(&self) -> Workload {
        match self {
            WorkloadConfig::Task(_) => Workload::Task,
            WorkloadConfig::Lm(_) => Workload::Lm,
        }
    }

    /// Number of blocks.
    pub fn num_blocks(&self) -> usize {
        match self {
            WorkloadConfig::Task(config) => config.model.num_blocks,
            WorkloadConfig::Lm(config) => config.model.num_blocks,
        }
    }

    /// Width of the residual stream.
    pub fn d_model(&self) -> usize {
        match self {
            WorkloadConfig::Task(config) => config.model.d_model,
            WorkloadConfig::Lm(config) => config.model.d_model,
        }
    }

    /// The feed-forward of every block (every MoE block of a language model).
    pub fn ffn(&self) -> &FfnConfig {
        match self {
            WorkloadConfig::Task(config) => &config.model.ffn,
            WorkloadConfig::Lm(config) => &config.model.ffn,
        }
    }

    /// Replaces the feed-forward.
    pub fn set_ffn(&mut self, ffn: FfnConfig) {
        match self {
            WorkloadConfig::Task(config) => config.model.ffn = ffn,
            WorkloadConfig::Lm(config) => config.model.ffn = ffn,
        }
    }

    /// The training seed (weights, and the shuffling or the windows drawn).
    pub fn seed(&self) -> u64 {
        match self {
            WorkloadConfig::Task(config) => config.train.seed,
            WorkloadConfig::Lm(config) => config.train.seed,
        }
    }

    /// Replaces the training seed.
    pub fn set_seed(&mut self, seed: u64) {
        match self {
            WorkloadConfig::Task(config) => config.train.seed = seed,
            WorkloadConfig::Lm(config) => config.train.seed = seed,
        }
    }

    /// Checks every section; the error names the field by its dotted path.
    pub fn validate(&self) -> Result<(), InvalidValue> {
        match self {
            WorkloadConfig::Task(config) => config.validate(),
            WorkloadConfig::Lm(config) => ConfigFile::validate(config),
        }
    }

    /// The config as TOML, as `train` writes it next to the run's results.
    pub fn to_toml(&self) -> String {
        match self {
            WorkloadConfig::Task(config) => config.to_toml(),
            WorkloadConfig::Lm(config) => config.to_toml(),
        }
    }

    /// Refuses a run the machine cannot hold for `purpose` (host memory; `device_buffer`, the
    /// largest buffer of the device); the error names the size field and who set it. The
    /// language model's estimate is its training's, for either purpose.
    pub fn check_memory(
        &self,
        sources: &ConfigSources,
        purpose: Purpose,
        device_buffer: Option<u64>,
    ) -> Result<(), ExperimentError> {
        match self {
            WorkloadConfig::Task(config) => check_memory(config, sources, purpose, device_buffer),
            WorkloadConfig::Lm(config) => check_lm_memory(config, sources, device_buffer),
        }
    }
}

/// What one run of the sweep measured (its `metrics.json`); serialised as the inner metrics.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[serde(untagged)]
pub enum WorkloadMetrics {
    /// A task run's.
    Task(RunMetrics),
    /// A language-model run's.
    Lm(LmMetrics),
}

impl WorkloadMetrics {
    /// The model (task: the feed-forward) in words.
    pub fn describe(&self) -> &str {
        match self {
            WorkloadMetrics::Task(metrics) => &metrics.ffn,
            WorkloadMetrics::Lm(metrics) => &metrics.model,
        }
    }

    /// The backend the run trained on, e.g. `cuda`.
    pub fn backend(&self) -> &str {
        match self {
            WorkloadMetrics::Task(metrics) => &metrics.backend,
            WorkloadMetrics::Lm(metrics) => &metrics.backend,
        }
    }

    /// The run's quality and mean k for a progress line, e.g. `test accuracy 71.2%, mean k
    /// 1.400` or `valid bits per byte 2.1034, mean k 1.400`.
    pub fn progress(&self) -> String {
        let (quality, mean_k) = match self {
            WorkloadMetrics::Task(metrics) => (
                format!("test accuracy {:.1}%", 100.0 * metrics.test_accuracy),
                metrics.routing.as_ref().map(|r| r.mean_k),
            ),
            WorkloadMetrics::Lm(metrics) => (
                format!("valid bits per byte {:.4}", metrics.valid.bits_per_byte),
                metrics.valid.mean_k,
            ),
        };
        let mean_k = mean_k.map_or("-".into(), |k| format!("{k:.3}"));
        format!("{quality}, mean k {mean_k}")
    }
}
