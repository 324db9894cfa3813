//! A language-model run's configuration: one TOML file (`configs/lm-*.toml`) with `[corpus]`,
//! `[model]` and `[train]` sections over the defaults; `--set key=value` overrides single fields,
//! as for the task model's configs. A config file with a `[corpus]` table is a language-model
//! config.

use std::path::Path;

use burn::config::Config;
use moe_model::InvalidValue;
use moe_model::lm::LmConfig;
use moe_model::{FfnConfig, MoeLayerConfig};

use crate::config::{ConfigFile, check_shares, parse_config};
use crate::error::ExperimentError;
use crate::lm::corpus::CorpusConfig;

/// Optimisation of a language model: AdamW, linear warm-up and cosine decay, gradient clipping.
#[derive(Config, Debug)]
pub struct LmTrainConfig {
    /// Optimizer steps; every run of a study trains on `steps x batch_size x context` tokens.
    #[config(default = 2000)]
    pub steps: usize,
    /// Sequences (random windows of the context length) per step.
    #[config(default = 16)]
    pub batch_size: usize,
    /// Devices training runs on, data parallel (`crate::lm::data_parallel`): each step every
    /// device takes `batch_size / devices` windows and their gradients are added into one
    /// optimizer step on the first device, as one device would take on the whole batch. On
    /// ndarray the ranks are threads sharing the CPU.
    #[config(default = 1)]
    pub devices: usize,
    /// Peak learning rate, reached after the warm-up.
    #[config(default = 2e-3)]
    pub learning_rate: f64,
    /// Learning rate at the last step (end of the cosine decay).
    #[config(default = 2e-4)]
    pub min_learning_rate: f64,
    /// Steps of the linear warm-up.
    #[config(default = 100)]
    pub warmup_steps: usize,
    /// AdamW's decoupled weight decay.
    #[config(default = 0.1)]
    pub weight_decay: f64,
    /// Largest L2 norm of each parameter's gradient (Burn clips per parameter tensor; 0: off).
    #[config(default = 1.0)]
    pub grad_clip: f64,
    /// Seed of the weights and of the windows drawn.
    #[config(default = 0)]
    pub seed: u64,
    /// Steps between validation estimates (0: only at the end).
    #[config(default = 500)]
    pub eval_interval: usize,
    /// Windows of the validation split in each estimate during training.
    #[config(default = 64)]
    pub eval_windows: usize,
    /// Sequences per batch when evaluating.
    #[config(default = 16)]
    pub eval_batch_size: usize,
    /// Bytes of the validation and test splits scored at the end (0: the whole splits).
    #[config(default = 0)]
    pub final_eval_bytes: usize,
    /// Steps between progress lines.
    #[config(default = 100)]
    pub log_interval: usize,
}

impl LmTrainConfig {
    /// Checks every field against its allowed range.
    pub fn validate(&self) -> Result<(), InvalidValue> {
        for (field, value) in [
            ("steps", self.steps),
            ("batch_size", self.batch_size),
            ("devices", self.devices),
            ("eval_windows", self.eval_windows),
            ("eval_batch_size", self.eval_batch_size),
            ("log_interval", self.log_interval),
        ] {
            if value == 0 {
                return Err(InvalidValue::new(field, value, "must be >= 1"));
            }
        }
        for (field, value) in [
            ("learning_rate", self.learning_rate),
            ("min_learning_rate", self.min_learning_rate),
            ("weight_decay", self.weight_decay),
            ("grad_clip", self.grad_clip),
        ] {
            if !(value >= 0.0 && value.is_finite()) {
                return Err(InvalidValue::new(
                    field,
                    value,
                    "must be a finite number >= 0",
                ));
            }
        }
        if self.learning_rate == 0.0 {
            return Err(InvalidValue::new("learning_rate", 0.0, "must be > 0"));
        }
        check_shares(self.batch_size, self.devices)?;
        if self.min_learning_rate > self.learning_rate {
            return Err(InvalidValue::new(
                "min_learning_rate",
                self.min_learning_rate,
                format!("must be <= learning_rate ({})", self.learning_rate),
            ));
        }
        Ok(())
    }
}

/// Everything a language-model run needs: the text, the model and how to train it.
#[derive(Config, Debug)]
pub struct LmRunConfig {
    /// Which texts, where they are and how they split.
    #[config(default = "CorpusConfig::default()")]
    pub corpus: CorpusConfig,
    /// The byte-level transformer.
    #[config(default = "default_model()")]
    pub model: LmConfig,
    /// Optimisation.
    #[config(default = "LmTrainConfig::new()")]
    pub train: LmTrainConfig,
}

impl ConfigFile for LmRunConfig {
    fn defaults() -> Self {
        LmRunConfig::new()
    }

    fn validate(&self) -> Result<(), InvalidValue> {
        self.corpus.validate().map_err(|e| e.within("corpus"))?;
        self.model.validate().map_err(|e| e.within("model"))?;
        self.train.validate().map_err(|e| e.within("train"))?;
        tokens_per_step(self).map(|_| ())
    }
}

impl LmRunConfig {
    /// Reads `path`, applies `key=value` overrides, rejects unknown keys and validates.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self, ExperimentError> {
        let text = std::fs::read_to_string(path).map_err(ExperimentError::io(path))?;
        parse_config(&text, path, overrides)
    }

    /// The configuration as TOML, as written next to a run's results.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("a valid config serialises")
    }

    /// Tokens of one training step (`batch_size x context`).
    pub fn tokens_per_step(&self) -> usize {
        tokens_per_step(self).expect("validated")
    }
}

/// `batch_size x context`, refused when it overflows.
fn tokens_per_step(config: &LmRunConfig) -> Result<usize, InvalidValue> {
    config
        .train
        .batch_size
        .checked_mul(config.model.context)
        .filter(|&tokens| tokens <= u32::MAX as usize)
        .ok_or_else(|| {
            InvalidValue::new(
                "train.batch_size",
                config.train.batch_size,
                format!(
                    "times model.context ({}) must stay below 2^32 tokens per step",
                    config.model.context
                ),
            )
        })
}

/// Whether the config file at `path` is a language-model config (it has a `[corpus]` table).
/// An unreadable or unparsable file is left to the task config's loader, which names the error.
pub fn is_lm_config(path: &Path) -> bool {
    std::fs::read_to_string(path).is_ok_and(|text| is_lm_config_text(&text))
}

/// Whether config text is a language-model config (it has a `[corpus]` table); unparsable text
/// is not.
pub fn is_lm_config_text(text: &str) -> bool {
    toml::from_str::<toml::Table>(text).is_ok_and(|table| table.contains_key("corpus"))
}

/// The model a `[model]` table starts from (`configs/lm-moe.toml` lists it): 4 blocks of width
/// 256 with 4 heads over a 512-byte context, every feed-forward an MoE layer of 8 experts of
/// width 256 (SwiGLU) with threshold routing.
pub fn default_model() -> LmConfig {
    LmConfig::new()
        .with_context(512)
        .with_d_model(256)
        .with_ffn(FfnConfig::Moe(MoeLayerConfig::new().with_expert_width(256)))
}

/// The model in a few words, e.g. `4 blocks d=256 ctx=512, moe E=8 F=256 threshold(tau=0.5)`.
pub fn describe(model: &LmConfig) -> String {
    let interleave = match (&model.ffn, model.moe_every) {
        (FfnConfig::Moe(_), every) if every > 1 => format!(" in every {every}th block"),
        _ => String::new(),
    };
    format!(
        "{} blocks d={} ctx={}, {}{interleave}",
        model.num_blocks, model.d_model, model.context, model.ffn
    )
}
