//! `experiments quantize`: a trained run's experts quantized to int8 or FP8 e4m3 (issue 31),
//! written beside its model (`quantized_file.rs`) for `eval` and `generate` to serve from. The
//! router, norms, attention and shared experts keep their type.

use std::path::PathBuf;

use burn::tensor::backend::Backend;
use moe_kernels::quantized::QuantFormat;
use moe_kernels::quantized::reference::dequantize;
use moe_model::MoeAutodiffBackend;
use moe_model::experts::Experts;

use crate::backend::{BackendJob, BackendKind, run_on};
use crate::config::ConfigSources;
use crate::error::ExperimentError;
use crate::eval::load_classifier;
use crate::lm::config::is_lm_config;
use crate::lm::saved::{SavedLm, load_lm};
use crate::quantized_file::{QUANTIZED_FILE, QuantizedBlock, save_quantized};
use crate::run_dir::{CONFIG_FILE, RunState, run_state};

/// What to quantize and how (`quantize`'s flags).
#[derive(Clone, Debug, clap::Args)]
pub struct QuantizeRequest {
    /// The run directory (task model or language model), e.g. results/moe.
    #[arg(long)]
    pub run: PathBuf,
    /// int8 (per output channel), fp8 (e4m3, per output channel) or fp8-block (e4m3, per
    /// 128 x 128 block).
    #[arg(long, value_parser = QuantFormat::parse)]
    pub format: QuantFormat,
    /// Backend to load the model on (quantization itself runs on the host).
    #[arg(long, value_enum, default_value_t)]
    pub backend: BackendKind,
}

/// What `quantize` wrote.
#[derive(Clone, Debug)]
pub struct QuantizeSummary {
    /// The quantized experts file.
    pub path: PathBuf,
    /// Its format.
    pub format: QuantFormat,
    /// MoE blocks quantized.
    pub blocks: usize,
    /// Bytes of the quantized weights and scales.
    pub quantized_bytes: usize,
    /// Bytes of the same weights in bf16.
    pub bf16_bytes: usize,
    /// ||dequantized - float|| / ||float|| over every expert weight.
    pub weight_error: f64,
}

impl QuantizeSummary {
    /// One line for the terminal: where, how many blocks, bytes against bf16, weight error.
    pub fn summary(&self) -> String {
        format!(
            "{}: {} MoE block(s) in {}, {:.2} MB of weights and scales against {:.2} MB in bf16 \
             ({:.0}%), weight relative error {:.2e} against the trained f32 weights",
            self.path.display(),
            self.blocks,
            self.format,
            self.quantized_bytes as f64 / 1e6,
            self.bf16_bytes as f64 / 1e6,
            100.0 * self.quantized_bytes as f64 / self.bf16_bytes as f64,
            self.weight_error
        )
    }
}

/// Quantizes the experts of the run `request.run` and writes them to its
/// [`QUANTIZED_FILE`] (replacing an earlier one). An unfinished run or a model without MoE
/// blocks is an error.
pub fn quantize(request: QuantizeRequest) -> Result<QuantizeSummary, ExperimentError> {
    let reason = match run_state(&request.run) {
        RunState::Complete => return run_on(request.backend, request),
        RunState::Incomplete(reason) => reason,
        RunState::NotARun => "no training run there (no metrics.json)".into(),
    };
    Err(ExperimentError::IncompleteRun {
        path: request.run,
        reason,
    })
}

impl BackendJob for QuantizeRequest {
    type Output = QuantizeSummary;

    fn run<B: MoeAutodiffBackend>(
        self,
        device: B::Device,
    ) -> Result<QuantizeSummary, ExperimentError> {
        if is_lm_config(&self.run.join(CONFIG_FILE)) {
            let mut model = load_lm::<B::InnerBackend>(&SavedLm::open(&self.run)?, &device)?;
            quantize_experts(model.moe_experts_mut(), &self)
        } else {
            let config = ConfigSources {
                file: self.run.join(CONFIG_FILE),
                overrides: Vec::new(),
            }
            .load()?;
            let mut classifier = load_classifier::<B::InnerBackend>(&self.run, &config, &device)?;
            quantize_experts(classifier.model.moe_experts_mut(), &self)
        }
    }
}

/// Quantizes `experts` (a model's MoE blocks, in order) and saves them.
fn quantize_experts<B: Backend>(
    experts: Vec<&mut Experts<B>>,
    request: &QuantizeRequest,
) -> Result<QuantizeSummary, ExperimentError> {
    if experts.is_empty() {
        return Err(ExperimentError::BadSetting {
            setting: format!("--run {}", request.run.display()),
            reason: "the model has no MoE block to quantize (a dense run)".into(),
        });
    }
    let (mut diff, mut norm) = (0.0, 0.0);
    let mut blocks: Vec<QuantizedBlock> = Vec::new();
    for layer in experts {
        layer.quantize(request.format);
        let (w_in, w_out) = layer
            .quantized
            .as_ref()
            .expect("just quantized")
            .to_matrices();
        for (matrix, float) in [(&w_in, layer.w_in.val()), (&w_out, layer.w_out.val())] {
            let float = float.into_data().convert::<f64>();
            for (q, f) in dequantize(matrix).iter().zip(float.iter::<f64>()) {
                diff += (q - f).powi(2);
                norm += f * f;
            }
        }
        blocks.push((w_in, w_out));
    }
    let path = request.run.join(QUANTIZED_FILE);
    save_quantized(&blocks, &path)?;
    let matrices = || blocks.iter().flat_map(|(w_in, w_out)| [w_in, w_out]);
    Ok(QuantizeSummary {
        path,
        format: request.format,
        blocks: blocks.len(),
        quantized_bytes: matrices()
            .map(|m| m.bytes().len() + 4 * m.scales().len())
            .sum(),
        bf16_bytes: matrices().map(|m| 2 * m.bytes().len()).sum(),
        weight_error: (diff / norm.max(1e-300)).sqrt(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The command's error paths are error values (the binary prints them as one line and exits
    /// with code 2): an unknown format, and a run directory that is not a complete run.
    #[test]
    fn an_unknown_format_or_a_missing_run_is_an_error() {
        let error = QuantFormat::parse("fp4").unwrap_err();
        assert!(
            error.to_string().contains("int8, fp8, fp8-block"),
            "{error}"
        );
        let missing = std::env::temp_dir().join(format!("no-such-run-{}", std::process::id()));
        let error = quantize(QuantizeRequest {
            run: missing,
            format: QuantFormat::Int8,
            backend: BackendKind::Ndarray,
        })
        .unwrap_err();
        assert!(
            matches!(error, ExperimentError::IncompleteRun { .. }),
            "{error}"
        );
        assert_eq!(error.exit_code(), 2);
    }
}
