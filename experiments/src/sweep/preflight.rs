//! What would fail every run of a sweep, found before the first one starts: a backend that is
//! missing or has no device, a compute type the device lacks, sizes the machine cannot hold, a
//! language model's corpus that is not there.

use std::path::Path;

use moe_model::MoeAutodiffBackend;

use super::plan::PlannedRun;
use super::settings::SweepFile;
use crate::backend::{BackendJob, BackendKind, check_compute_type, max_buffer_bytes, run_on};
use crate::config::ConfigSources;
use crate::error::ExperimentError;
use crate::limits::Purpose;
use crate::lm::data::TokenSplits;
use crate::workload::WorkloadConfig;

/// Checks every planned run's config against `backend` (which must be usable here) and the
/// memory, and loads a language model's corpus (every run reads the same one); the error names
/// the sweep file's field.
pub fn check(
    runs: &[PlannedRun],
    file: &SweepFile,
    path: &Path,
    backend: BackendKind,
) -> Result<(), ExperimentError> {
    if let Some(WorkloadConfig::Lm(config)) = runs.first().map(|run| &run.config) {
        TokenSplits::load(&config.corpus)?;
    }
    run_on(
        backend,
        Preflight {
            configs: runs.iter().map(|run| run.config.clone()).collect(),
            sources: ConfigSources {
                file: path.to_path_buf(),
                overrides: file.run_overrides.clone(),
            },
            backend,
        },
    )
}

/// The planned configs and where they come from.
struct Preflight {
    configs: Vec<WorkloadConfig>,
    sources: ConfigSources,
    backend: BackendKind,
}

impl BackendJob for Preflight {
    type Output = ();

    fn run<B: MoeAutodiffBackend>(self, device: B::Device) -> Result<(), ExperimentError> {
        let buffer = max_buffer_bytes(self.backend);
        for config in &self.configs {
            check_compute_type::<B>(config.ffn(), &device)?;
            config.check_memory(&self.sources, Purpose::Train, buffer)?;
        }
        Ok(())
    }
}
