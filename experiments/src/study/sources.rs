//! The result files the report reads, each with the command that writes it. A file is looked up
//! under each results root in turn (`results/` first, then the committed copies in
//! `docs/results/`); the first found is used and the report names it.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::ExperimentError;

/// One result file the report can use: where it lives under a results root, and what writes it.
#[derive(Clone, Copy, Debug)]
pub struct Source {
    /// Path under a results root, e.g. `sweep-lm/sweep.json`.
    pub file: &'static str,
    /// The command that writes it.
    pub command: &'static str,
}

/// The language-model routing study, best first: the H100 sweep, the CPU sweep, the CI one.
pub const LM_SWEEPS: [Source; 3] = [
    Source {
        file: "sweep-lm-routing/sweep.json",
        command: "just sweep --config configs/sweep-lm.toml --backend cuda --set 'model.ffn.compute_type=\"bf16\"'",
    },
    Source {
        file: "sweep-lm-cpu/sweep.json",
        command: "just sweep --config configs/sweep-lm-cpu.toml",
    },
    Source {
        file: "sweep-lm-routing-quick/sweep.json",
        command: "just sweep --config configs/sweep-lm.toml --quick",
    },
];

/// The synthetic task's routing study, best first.
pub const TASK_SWEEPS: [Source; 2] = [
    Source {
        file: "sweep-routing/sweep.json",
        command: "just sweep",
    },
    Source {
        file: "sweep-routing-quick/sweep.json",
        command: "just sweep --quick",
    },
];

/// The layer benchmark on the GPU.
pub const BENCH: [Source; 1] = [Source {
    file: "bench-cuda-bf16/bench.json",
    command: "just bench --backend cuda --dtype bf16",
}];

/// Routing prediction on the variable-k language model (the study's budget-1.4 model, seed 0),
/// best first: the H100 study's, the CPU study's.
pub const LM_PREDICTION: [Source; 2] = [
    Source {
        file: "lm-moe-predict/prediction.json",
        command: "just predict sweep-lm-routing/runs/budget-1.4-s0 --backend cuda --name lm-moe-predict",
    },
    Source {
        file: "lm-cpu-predict/prediction.json",
        command: "just predict sweep-lm-cpu/runs/budget-1.4-s0 --name lm-cpu-predict",
    },
];

/// Routing prediction on the synthetic task's deep model, for comparison.
pub const TASK_PREDICTION: [Source; 1] = [Source {
    file: "deep-predict/prediction.json",
    command: "just predict deep",
}];

/// Offloading replayed on the variable-k language model's predicted routing.
pub const LM_OFFLOAD: [Source; 1] = [Source {
    file: "offload-lm/offload.json",
    command: "just offload --trace results/lm-moe-predict/trace-decode.json --backend cuda \
              --dtype bf16 --name offload-lm",
}];

/// A result file that was found: its JSON, where it was, and what wrote it.
#[derive(Clone, Debug)]
pub struct Found {
    /// The file's contents.
    pub json: Value,
    /// Where it was found, as the report prints it (relative to the repository when given so).
    pub path: PathBuf,
    /// The command that writes it.
    pub command: &'static str,
}

impl Found {
    /// `` `path`, written by `command` ``: how the report cites the file.
    pub fn cite(&self) -> String {
        format!("`{}`, written by `{}`", self.path.display(), self.command)
    }
}

/// The first of `sources` found under one of `roots`, searched root by root; a file that is
/// there but is not JSON is an error naming it.
pub fn find(roots: &[PathBuf], sources: &[Source]) -> Result<Option<Found>, ExperimentError> {
    for source in sources {
        for root in roots {
            let path = root.join(source.file);
            if !path.is_file() {
                continue;
            }
            return read_json(&path).map(|json| {
                Some(Found {
                    json,
                    path,
                    command: source.command,
                })
            });
        }
    }
    Ok(None)
}

/// Every one of `sources` found under `roots`, in the order [`find`] searches them.
pub fn found_paths(roots: &[PathBuf], sources: &[Source]) -> Vec<PathBuf> {
    sources
        .iter()
        .flat_map(|source| roots.iter().map(|root| root.join(source.file)))
        .filter(|path| path.is_file())
        .collect()
}

fn read_json(path: &Path) -> Result<Value, ExperimentError> {
    let text = std::fs::read_to_string(path).map_err(ExperimentError::io(path))?;
    serde_json::from_str(&text).map_err(|e| ExperimentError::DamagedFile {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}
