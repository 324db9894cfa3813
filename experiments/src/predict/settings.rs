//! The settings of `predict` (its flags), checked against the run before anything starts.

use moe_model::FfnConfig;
use moe_model::prediction::{DistillConfig, GatingHeadConfig};
use serde::{Deserialize, Serialize};

use crate::error::ExperimentError;

/// Widest hidden layer a gating head may have (a head is meant to be small next to the layer).
pub const MAX_HIDDEN: usize = 65536;

/// How the predictors are fitted and scored, and what the traces hold; `predict`'s flags.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, clap::Args)]
pub struct PredictSettings {
    /// Largest block distance j to predict (default: every distance the model has).
    #[arg(long = "distance", value_name = "J")]
    pub max_distance: Option<usize>,
    /// Hidden width of each gating head (0: a linear head).
    #[arg(long, default_value_t = PredictSettings::default().hidden)]
    pub hidden: usize,
    /// Distillation epochs of each gating head (passes over the training split).
    #[arg(long, default_value_t = PredictSettings::default().epochs)]
    pub epochs: usize,
    /// Points per distillation step (Adam).
    #[arg(long, default_value_t = PredictSettings::default().batch_size)]
    pub batch_size: usize,
    /// Adam learning rate of distillation.
    #[arg(long = "lr", value_name = "LR")]
    #[arg(default_value_t = PredictSettings::default().learning_rate)]
    pub learning_rate: f64,
    /// Seed of the heads' initialisation and data order.
    #[arg(long, default_value_t = PredictSettings::default().seed)]
    pub seed: u64,
    /// Tokens per batch of the batch-union scores and of trace-prefill.json.
    #[arg(long, default_value_t = PredictSettings::default().prefill_batch)]
    pub prefill_batch: usize,
    /// Test points covered by the routing traces (the first ones; fewer if the test split is
    /// smaller).
    #[arg(long, default_value_t = PredictSettings::default().trace_tokens)]
    pub trace_tokens: usize,
}

impl Default for PredictSettings {
    fn default() -> Self {
        let distill = DistillConfig::new();
        Self {
            max_distance: None,
            hidden: GatingHeadConfig::new(0, 0).hidden,
            epochs: distill.epochs,
            batch_size: distill.batch_size,
            learning_rate: distill.learning_rate,
            seed: distill.seed,
            prefill_batch: 64,
            trace_tokens: 1024,
        }
    }
}

impl PredictSettings {
    /// The distillation settings.
    pub fn distill(&self) -> DistillConfig {
        DistillConfig::new()
            .with_epochs(self.epochs)
            .with_batch_size(self.batch_size)
            .with_learning_rate(self.learning_rate)
            .with_seed(self.seed)
    }

    /// Checks the settings on their own and against the model of `run` (named in messages): its
    /// feed-forward `ffn` in each of its `blocks` blocks. Returns the largest distance to predict.
    pub fn check(
        &self,
        run: &str,
        ffn: &FfnConfig,
        blocks: usize,
    ) -> Result<usize, ExperimentError> {
        let bad = |flag: &str, value: String, reason: String| ExperimentError::BadSetting {
            setting: format!("--{flag} {value}"),
            reason,
        };
        for (flag, value) in [
            ("epochs", self.epochs),
            ("batch-size", self.batch_size),
            ("prefill-batch", self.prefill_batch),
            ("trace-tokens", self.trace_tokens),
        ] {
            if value == 0 {
                return Err(bad(flag, value.to_string(), "must be >= 1".into()));
            }
        }
        if !(self.learning_rate > 0.0 && self.learning_rate.is_finite()) {
            return Err(bad(
                "lr",
                self.learning_rate.to_string(),
                "must be a finite number > 0".into(),
            ));
        }
        if self.hidden > MAX_HIDDEN {
            return Err(bad(
                "hidden",
                self.hidden.to_string(),
                format!("must be in 0..={MAX_HIDDEN} (0: a linear head)"),
            ));
        }
        if !matches!(ffn, FfnConfig::Moe(_)) || blocks < 2 {
            let what = match ffn {
                FfnConfig::Moe(_) => "one MoE block".to_string(),
                FfnConfig::Dense(_) => "dense blocks".to_string(),
            };
            return Err(ExperimentError::BadSetting {
                setting: format!("--run {run}"),
                reason: format!(
                    "the model has {what}; predicting later blocks' experts needs an MoE model \
                     with at least 2 blocks (e.g. just train deep)"
                ),
            });
        }
        match self.max_distance {
            None => Ok(blocks - 1),
            Some(j) if (1..blocks).contains(&j) => Ok(j),
            Some(j) => Err(bad(
                "distance",
                j.to_string(),
                format!(
                    "must be in 1..={} ({run} has {blocks} MoE blocks)",
                    blocks - 1
                ),
            )),
        }
    }
}
