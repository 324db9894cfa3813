//! `eval` of a language-model run: its saved model scored again on the validation and test
//! splits of its corpus, in the float type asked for.

use std::path::Path;

use moe_model::MoeAutodiffBackend;

use crate::backend::{BackendJob, BackendKind, FloatType, run_on, use_float_type};
use crate::error::ExperimentError;
use crate::lm::data::TokenSplits;
use crate::lm::evaluate::score_split;
use crate::lm::metrics::LmMetrics;
use crate::lm::saved::{SavedLm, load_lm};
use crate::quantized_file::attach_quantized;

/// Scores the model saved in `run_path` on its corpus's validation and test splits; the training
/// numbers are the run's own.
pub fn eval_lm(
    run_path: &Path,
    backend: BackendKind,
    dtype: FloatType,
) -> Result<LmMetrics, ExperimentError> {
    let saved = SavedLm::open(run_path)?;
    let splits = TokenSplits::load(&saved.config.corpus)?;
    run_on(
        backend,
        SavedLmEval {
            saved,
            splits,
            backend,
            dtype,
        },
    )
}

/// A run to score, and its splits.
struct SavedLmEval {
    saved: SavedLm,
    splits: TokenSplits,
    backend: BackendKind,
    dtype: FloatType,
}

impl BackendJob for SavedLmEval {
    type Output = LmMetrics;

    fn run<B: MoeAutodiffBackend>(self, device: B::Device) -> Result<LmMetrics, ExperimentError> {
        if self.dtype != FloatType::F32 {
            use_float_type::<B::InnerBackend>(&device, self.dtype, self.backend)?;
        }
        let mut model = load_lm::<B::InnerBackend>(&self.saved, &device)?;
        attach_quantized(model.moe_experts_mut(), &self.saved.path, &device)?;
        let train = &self.saved.config.train;
        let score = |stream: &[u16]| {
            score_split(
                &model,
                stream,
                train.eval_batch_size,
                train.final_eval_bytes,
                &device,
            )
        };
        Ok(LmMetrics {
            backend: self.backend.name().to_string(),
            valid: score(&self.splits.valid),
            test: score(&self.splits.test),
            ..self.saved.metrics
        })
    }
}
