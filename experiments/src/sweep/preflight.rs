//! What would fail every run of a sweep, found before the first one starts: a backend that is
//! missing or has no device, a compute type the device lacks, sizes the machine cannot hold.

use std::path::Path;

use moe_model::MoeAutodiffBackend;

use super::plan::PlannedRun;
use super::settings::SweepFile;
use crate::backend::{BackendJob, BackendKind, check_compute_type, max_buffer_bytes, run_on};
use crate::config::{ConfigSources, RunConfig};
use crate::error::ExperimentError;
use crate::limits::{Purpose, check_memory};

/// Checks every planned run's config against `backend` (which must be usable here) and the
/// memory; the error names the sweep file's field.
pub fn check(
    runs: &[PlannedRun],
    file: &SweepFile,
    path: &Path,
    backend: BackendKind,
) -> Result<(), ExperimentError> {
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
    configs: Vec<RunConfig>,
    sources: ConfigSources,
    backend: BackendKind,
}

impl BackendJob for Preflight {
    type Output = ();

    fn run<B: MoeAutodiffBackend>(self, device: B::Device) -> Result<(), ExperimentError> {
        let buffer = max_buffer_bytes(self.backend);
        for config in &self.configs {
            check_compute_type::<B>(&config.model.ffn, &device)?;
            check_memory(config, &self.sources, Purpose::Train, buffer)?;
        }
        Ok(())
    }
}
