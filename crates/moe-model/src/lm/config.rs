//! [`LmConfig`]: the sizes of the byte-level language model and the feed-forward of its blocks.

use burn::config::Config;
use burn::module::Initializer;
use burn::nn::{EmbeddingConfig, RmsNormConfig, RotaryEncodingConfig};

use crate::InvalidValue;
use crate::backend_ext::MoeBackend;
use crate::ffn::FfnConfig;
use crate::init::projection;
use crate::lm::attention::CausalSelfAttention;
use crate::lm::model::{Lm, LmBlock};
use crate::mlp::DenseMlpConfig;
use crate::moe::MoeLayerConfig;
use crate::precision::in_backend_float_type;

/// Configuration of [`Lm`], a decoder-only transformer over byte tokens whose feed-forward
/// blocks are dense MLPs or MoE layers; serde-compatible, so experiments read it from TOML.
#[derive(Config, Debug)]
pub struct LmConfig {
    /// Vocabulary size: 256 bytes and a document-boundary token.
    #[config(default = 257)]
    pub vocab_size: usize,
    /// Longest sequence the model reads (rotary table and key/value cache length).
    #[config(default = 256)]
    pub context: usize,
    /// Width d of the residual stream.
    #[config(default = 128)]
    pub d_model: usize,
    /// Attention heads; each has `d_model / num_heads` (even, for the rotary pairs) dimensions.
    #[config(default = 4)]
    pub num_heads: usize,
    /// Number of transformer blocks.
    #[config(default = 4)]
    pub num_blocks: usize,
    /// Feed-forward of the blocks `moe_every` selects (every block when it is dense).
    #[config(default = "FfnConfig::Moe(MoeLayerConfig::new())")]
    pub ffn: FfnConfig,
    /// With an MoE `ffn`: blocks `moe_every - 1, 2 * moe_every - 1, ...` use it, the others a
    /// dense MLP of `dense_width` (1: every block is MoE; 2: blocks 1, 3, ...).
    #[config(default = 1)]
    pub moe_every: usize,
    /// Hidden width of the dense blocks between MoE blocks; `None`: the MoE's `expert_width`
    /// times its most experts per token (`routing.max_slots()`, k for top-k, 2 for threshold),
    /// so a dense block costs what the MoE's widest token does. Activation and compute type are
    /// the MoE's.
    #[config(default = "None")]
    pub dense_width: Option<usize>,
    /// The LM head reuses the token embedding matrix (transposed) instead of its own weights.
    #[config(default = true)]
    pub tie_embeddings: bool,
    /// Base of the rotary position frequencies.
    #[config(default = 10000.0)]
    pub rope_theta: f64,
}

impl LmConfig {
    /// Checks sizes, the head split, the feed-forward and the MoE interleave.
    pub fn validate(&self) -> Result<(), InvalidValue> {
        if self.vocab_size < 2 {
            return Err(InvalidValue::new(
                "vocab_size",
                self.vocab_size,
                "must be >= 2",
            ));
        }
        if self.context == 0 {
            return Err(InvalidValue::new("context", 0, "must be >= 1"));
        }
        if self.d_model == 0 {
            return Err(InvalidValue::new("d_model", 0, "must be >= 1"));
        }
        if self.num_heads == 0 || !self.d_model.is_multiple_of(self.num_heads) {
            return Err(InvalidValue::new(
                "num_heads",
                self.num_heads,
                format!("must be >= 1 and divide d_model ({})", self.d_model),
            ));
        }
        let head_dim = self.d_model / self.num_heads;
        if !head_dim.is_multiple_of(2) {
            return Err(InvalidValue::new(
                "num_heads",
                self.num_heads,
                format!(
                    "must leave an even head dimension d_model / num_heads for the rotary pairs \
                     (d_model {} / {} = {head_dim})",
                    self.d_model, self.num_heads
                ),
            ));
        }
        if self.num_blocks == 0 {
            return Err(InvalidValue::new("num_blocks", 0, "must be >= 1"));
        }
        if self.moe_every == 0 {
            return Err(InvalidValue::new("moe_every", 0, "must be >= 1"));
        }
        if self.dense_width == Some(0) {
            return Err(InvalidValue::new("dense_width", 0, "must be >= 1"));
        }
        if !(self.rope_theta > 0.0 && self.rope_theta.is_finite()) {
            return Err(InvalidValue::new(
                "rope_theta",
                self.rope_theta,
                "must be a finite number > 0",
            ));
        }
        self.ffn.validate().map_err(|e| e.within("ffn"))
    }

    /// Whether block `index` uses `ffn` (true) or the dense MLP between MoE blocks.
    pub fn uses_ffn(&self, index: usize) -> bool {
        matches!(self.ffn, FfnConfig::Dense(_)) || index % self.moe_every == self.moe_every - 1
    }

    /// The feed-forward of block `index`.
    fn block_ffn(&self, index: usize) -> FfnConfig {
        match &self.ffn {
            FfnConfig::Moe(moe) if !self.uses_ffn(index) => {
                FfnConfig::Dense(dense_between(moe, self.dense_width))
            }
            ffn => ffn.clone(),
        }
    }

    /// A freshly initialised model. Call [`LmConfig::validate`] first: invalid sizes panic.
    ///
    /// Projections are N(0, 1/fan_in), the embedding N(0, 1/d) (unit-scale logits when tied);
    /// the attention output projection is further scaled by `1/sqrt(2 * num_blocks)` (GPT-2) so
    /// the residual stream does not grow with depth at initialisation.
    pub fn init<B: MoeBackend>(&self, device: &B::Device) -> Lm<B> {
        let residual_scale = 1.0 / ((2 * self.num_blocks) as f64).sqrt();
        let blocks = (0..self.num_blocks)
            .map(|index| LmBlock {
                attn_norm: RmsNormConfig::new(self.d_model).init(device),
                attention: CausalSelfAttention::new(
                    self.d_model,
                    self.num_heads,
                    residual_scale,
                    device,
                ),
                ffn_norm: RmsNormConfig::new(self.d_model).init(device),
                ffn: self.block_ffn(index).init(self.d_model, device),
            })
            .collect();
        let std = 1.0 / (self.d_model as f64).sqrt();
        let lm = Lm {
            embedding: EmbeddingConfig::new(self.vocab_size, self.d_model)
                .with_initializer(Initializer::Normal { mean: 0.0, std })
                .init(device),
            blocks,
            final_norm: RmsNormConfig::new(self.d_model).init(device),
            head: (!self.tie_embeddings)
                .then(|| projection([self.d_model, self.vocab_size], self.d_model, device)),
            rotary: RotaryEncodingConfig::new(self.context, self.d_model / self.num_heads)
                .with_theta(self.rope_theta as f32)
                .init(device),
            context: self.context,
        };
        in_backend_float_type(lm, device)
    }
}

/// The dense MLP between MoE blocks: `width` or the MoE's widest token, its activation and
/// compute type.
fn dense_between(moe: &MoeLayerConfig, width: Option<usize>) -> DenseMlpConfig {
    DenseMlpConfig::new()
        .with_width(width.unwrap_or(moe.expert_width * moe.routing.max_slots()))
        .with_activation(moe.activation)
        .with_compute_type(moe.compute_type)
}
