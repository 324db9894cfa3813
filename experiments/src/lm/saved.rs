//! A trained language model's run directory: its config and its weights, read back for `eval`,
//! `generate` and routing traces.

use std::path::{Path, PathBuf};

use moe_model::MoeBackend;
use moe_model::lm::Lm;

use crate::backend::check_compute_type;
use crate::error::ExperimentError;
use crate::lm::config::{LmRunConfig, is_lm_config};
use crate::lm::metrics::LmMetrics;
use crate::model_file::load_model;
use crate::run_dir::{CONFIG_FILE, MODEL_FILE, RunState, run_state};

/// A complete language-model run: where it is, its config and its metrics.
#[derive(Debug)]
pub struct SavedLm {
    /// The run directory.
    pub path: PathBuf,
    /// The config it was trained with.
    pub config: LmRunConfig,
    /// What it measured.
    pub metrics: LmMetrics,
}

impl SavedLm {
    /// Reads the run at `path`; an unfinished run, a task-model run or a damaged config or
    /// metrics file is an error naming it.
    pub fn open(path: &Path) -> Result<Self, ExperimentError> {
        if let RunState::Incomplete(reason) = run_state(path) {
            return Err(ExperimentError::IncompleteRun {
                path: path.to_path_buf(),
                reason,
            });
        }
        let config_path = path.join(CONFIG_FILE);
        if !is_lm_config(&config_path) {
            return Err(ExperimentError::NotALanguageModel(path.to_path_buf()));
        }
        Ok(Self {
            path: path.to_path_buf(),
            config: LmRunConfig::load(&config_path, &[])?,
            metrics: LmMetrics::load(path)?,
        })
    }
}

/// The run's model on `device`, with its saved weights; a missing, damaged or mismatched
/// `model.mpk` is an error naming the file.
pub fn load_lm<B: MoeBackend>(
    saved: &SavedLm,
    device: &B::Device,
) -> Result<Lm<B>, ExperimentError> {
    check_compute_type::<B>(&saved.config.model.ffn, device)?;
    let fresh: Lm<B> = saved.config.model.init(device);
    load_model(fresh, &saved.path.join(MODEL_FILE), device)
}
