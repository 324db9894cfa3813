//! The results directory of a run: `results/<run-name>/`, never overwritten unless asked.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::ExperimentError;

/// The resolved configuration, saved in every run directory.
pub const CONFIG_FILE: &str = "config.toml";
/// The trained weights (Burn's compact recorder).
pub const MODEL_FILE: &str = "model.mpk";
/// The measured numbers of the run ([`crate::RunMetrics`]).
pub const METRICS_FILE: &str = "metrics.json";
/// burn-train's logs.
pub const LEARNER_DIR: &str = "learner";

/// A created results directory.
#[derive(Clone, Debug)]
pub struct RunDir {
    /// The run's name (the directory's name).
    pub name: String,
    /// `results/<name>`.
    pub path: PathBuf,
}

impl RunDir {
    /// Creates `root/<name>`. An explicitly requested name that exists is an error unless
    /// `overwrite`; when no name is requested, `default_name` gets a suffix (`moe-2`, `moe-3`, ...)
    /// instead of replacing an earlier run.
    pub fn create(
        root: &Path,
        requested: Option<&str>,
        default_name: &str,
        overwrite: bool,
    ) -> Result<Self, ExperimentError> {
        let name = match requested {
            Some(name) => {
                let path = root.join(name);
                if path.exists() {
                    if !overwrite {
                        return Err(ExperimentError::RunExists(path));
                    }
                    std::fs::remove_dir_all(&path).map_err(ExperimentError::io(&path))?;
                }
                name.to_string()
            }
            None => std::iter::once(default_name.to_string())
                .chain((2..).map(|i| format!("{default_name}-{i}")))
                .find(|name| !root.join(name).exists())
                .expect("an unused name exists"),
        };
        let path = root.join(&name);
        std::fs::create_dir_all(&path).map_err(ExperimentError::io(&path))?;
        Ok(Self { name, path })
    }
}

/// The commit the binary runs from (`-dirty` when the work tree has changes), if inside git.
pub fn git_commit() -> Option<String> {
    let git = |args: &[&str]| {
        let out = Command::new("git").args(args).output().ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    let commit = git(&["rev-parse", "HEAD"])?;
    let dirty = !git(&["status", "--porcelain", "--untracked-files=no"])?.is_empty();
    Some(if dirty {
        format!("{commit}-dirty")
    } else {
        commit
    })
}
