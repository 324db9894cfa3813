//! A language-model run's memory, estimated from its config before anything is allocated (a
//! failed allocation aborts the process, so it has to be foreseen), in checked arithmetic.

use moe_model::FfnConfig;

use crate::config::ConfigSources;
use crate::error::ExperimentError;
use crate::limits::{furthest_above_default, memory_shortfall};
use crate::lm::config::LmRunConfig;

/// Bytes of one weight or activation (f32).
const FLOAT_BYTES: f64 = 4.0;

/// Estimated memory of a language-model training run, in bytes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LmMemory {
    /// Weights, gradients, AdamW's two moments and one step's activations.
    pub total: f64,
    /// The weights alone (what the model file holds, at most).
    pub weights: f64,
    /// The largest single tensor (one device buffer on CubeCL backends).
    pub largest_tensor: f64,
}

impl LmMemory {
    /// Estimates the memory of training `config` from its sizes alone. In f64, so no product
    /// overflows; a size past what a `usize` holds is refused by the caller's limits.
    pub fn of(config: &LmRunConfig) -> Self {
        let model = &config.model;
        let (d, vocab, blocks) = (
            model.d_model as f64,
            model.vocab_size as f64,
            model.num_blocks as f64,
        );
        let tokens = config.train.batch_size as f64 * model.context as f64;
        let scores = tokens * model.num_heads as f64 * model.context as f64; // [B, H, T, T]
        let (ffn_weights, ffn_largest, ffn_per_token) = match &model.ffn {
            FfnConfig::Dense(mlp) => {
                let f = mlp.width as f64;
                (3.0 * d * f, 2.0 * d * f, 4.0 * f)
            }
            FfnConfig::Moe(moe) => {
                let (e, f) = (moe.num_experts as f64, moe.expert_width as f64);
                let shared = moe.shared_experts as f64 * 3.0 * d * moe.shared_expert_width as f64;
                let k = moe.routing.max_slots() as f64;
                (
                    e * 3.0 * d * f + d * e + shared,
                    e * 2.0 * d * f,
                    k * (4.0 * f + 2.0 * d) + 2.0 * e,
                )
            }
        };
        let weights = 2.0 * vocab * d + blocks * (4.0 * d * d + ffn_weights);
        let per_token = blocks * (12.0 * d + ffn_per_token) + 3.0 * vocab;
        let activations = tokens * per_token + blocks * 2.0 * scores;
        Self {
            total: FLOAT_BYTES * (4.0 * weights + 2.0 * activations),
            weights: FLOAT_BYTES * weights,
            largest_tensor: FLOAT_BYTES * ffn_largest.max(scores).max(tokens * vocab),
        }
    }
}

/// Refuses a run that does not fit: its estimate against the host's available memory (where the
/// system reports it) and its largest tensor against `device_buffer`, the largest buffer the
/// device allows. The error names the size field that weighs most, and who set it.
pub fn check_lm_memory(
    config: &LmRunConfig,
    sources: &ConfigSources,
    device_buffer: Option<u64>,
) -> Result<(), ExperimentError> {
    let estimate = LmMemory::of(config);
    let Some(detail) = memory_shortfall(estimate.total, estimate.largest_tensor, device_buffer)
    else {
        return Ok(());
    };
    let (field, value) = largest_size_field(config);
    Err(ExperimentError::TooLarge {
        origin: sources.origin_of(field),
        field: field.to_string(),
        value,
        detail,
    })
}

/// The size field furthest above its default (by ratio), and its value.
fn largest_size_field(config: &LmRunConfig) -> (&'static str, usize) {
    let defaults = LmRunConfig::new();
    let (model, default) = (&config.model, &defaults.model);
    let mut fields = vec![
        ("model.d_model", model.d_model, default.d_model),
        ("model.context", model.context, default.context),
        ("model.num_blocks", model.num_blocks, default.num_blocks),
        ("model.num_heads", model.num_heads, default.num_heads),
        ("model.vocab_size", model.vocab_size, default.vocab_size),
        (
            "train.batch_size",
            config.train.batch_size,
            defaults.train.batch_size,
        ),
    ];
    match &model.ffn {
        FfnConfig::Dense(mlp) => fields.push(("model.ffn.width", mlp.width, 256)),
        FfnConfig::Moe(moe) => fields.extend([
            ("model.ffn.num_experts", moe.num_experts, 8),
            ("model.ffn.expert_width", moe.expert_width, 128),
        ]),
    }
    furthest_above_default(fields)
}
