//! Errors a user can act on; the binary prints them as one line and exits with code 2 (130 when
//! Ctrl-C stopped training).

use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use moe_model::InvalidValue;

use crate::config_origin::ConfigOrigin;
use crate::interrupt::StopCause;

/// Everything that stops an experiment before it produces results.
#[derive(Debug, thiserror::Error)]
pub enum ExperimentError {
    /// A config field holds a value outside its range.
    #[error("{origin}: {source}")]
    InvalidConfig {
        /// The config file, or the `--set` flag that set the field.
        origin: ConfigOrigin,
        /// The field and its allowed range.
        source: InvalidValue,
    },
    /// A config file could not be parsed or has a field of the wrong type.
    #[error("{origin}: {message}")]
    ParseConfig {
        /// The config file, or the `--set` flag that set the field.
        origin: ConfigOrigin,
        /// What is wrong, with the field's path.
        message: String,
    },
    /// A config file names a field that does not exist.
    #[error(
        "{origin}: unknown key `{key}` (check the spelling, or see configs/moe.toml for the fields)"
    )]
    UnknownKey {
        /// The config file, or the `--set` flag that names the key.
        origin: ConfigOrigin,
        /// Dotted path of the unknown key.
        key: String,
    },
    /// A config file that sets nothing (empty, or only comments).
    #[error(
        "{0}: empty config file; to train the defaults, use configs/moe.toml (it lists every field)"
    )]
    EmptyConfig(PathBuf),
    /// A `--set key=value` override is malformed.
    #[error("--set {0}: expected key=value, e.g. --set train.epochs=3")]
    BadOverride(String),
    /// A flag of a command (not a config field) holds a value it cannot take.
    #[error("{setting}: {reason}")]
    BadSetting {
        /// The flag and its value as given, e.g. `--distance 9`.
        setting: String,
        /// What is allowed, e.g. `must be in 1..=3 (results/deep has 4 MoE blocks)`.
        reason: String,
    },
    /// A run would need more memory than the machine has.
    #[error("{origin}: {field} = {value} is too large for this machine: {detail}")]
    TooLarge {
        /// The config file, or the `--set` flag that set the field.
        origin: ConfigOrigin,
        /// The size field that contributes most, by its dotted path.
        field: String,
        /// Its value.
        value: usize,
        /// Need and limit, e.g. `the run needs about 3.1 TB of memory, 20.4 GB is available`.
        detail: String,
    },
    /// A run name that is not one plain directory name.
    #[error(
        "{name} is not a valid run name: {reason}; use letters, digits and . _ - + = (at most \
         100 characters, not starting with '.' or '-')"
    )]
    BadRunName {
        /// Where the name comes from and the name, e.g. `--name ".."`.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The system error.
        source: std::io::Error,
    },
    /// A saved file of a run exists but cannot be read as what it should hold.
    #[error("{path}: damaged or not written by this program ({reason}); train the run again")]
    DamagedFile {
        /// The file.
        path: PathBuf,
        /// What is wrong, e.g. `EOF while parsing an object at line 5 column 0`.
        reason: String,
    },
    /// `eval` was given a directory that is not a complete run.
    #[error("{path}: not a complete run: {reason}")]
    IncompleteRun {
        /// The directory.
        path: PathBuf,
        /// What it is instead.
        reason: String,
    },
    /// `generate` (or a language-model command) was given a run of the task model.
    #[error(
        "{0}: not a language-model run (train one with `just train lm-smoke` or another configs/lm-*.toml)"
    )]
    NotALanguageModel(PathBuf),
    /// `compare` found run directories but could read none of them.
    #[error("no readable run under {root}: {skipped} skipped (see the notes above)")]
    NoReadableRun {
        /// The results directory.
        root: PathBuf,
        /// How many were skipped.
        skipped: usize,
    },
    /// A finished run could not be renamed into place; it is kept where it was written.
    #[error("{path}: cannot move the finished run into place ({source}); it is kept in {staging}")]
    CommitRun {
        /// Where the run should be.
        path: PathBuf,
        /// Where it was written.
        staging: PathBuf,
        /// The system error.
        source: std::io::Error,
    },
    /// Training failed inside burn-train (e.g. its logger on a full disk); nothing was kept.
    #[error("training failed: {reason}; nothing was kept; {left}")]
    TrainingFailed {
        /// burn-train's message, first line.
        reason: String,
        /// What the run's name holds now.
        left: String,
    },
    /// The disk holding the results has too little free space for the run's files.
    #[error(
        "{path}: {need} of free disk space needed for the run's files (model, logs), {available} free"
    )]
    DiskFull {
        /// The results directory.
        path: PathBuf,
        /// Bytes needed.
        need: String,
        /// Bytes free.
        available: String,
    },
    /// Training was stopped by a signal or from the dashboard; nothing was kept.
    #[error("{cause}: training stopped, nothing was kept; {left}")]
    Interrupted {
        /// What stopped it.
        cause: StopCause,
        /// What the run's name holds now, e.g. `results/moe still holds the earlier run`.
        left: String,
    },
    /// `--dtype` names a float type the chosen backend's device does not have.
    #[error(
        "--dtype {dtype}: backend `{backend}` cannot run it here ({reason}); use f32, or bf16/f16 on --backend cuda"
    )]
    FloatTypeUnavailable {
        /// The float type asked for.
        dtype: &'static str,
        /// The backend asked for.
        backend: &'static str,
        /// Why not.
        reason: String,
    },
    /// The config's `compute_type` names a float type the chosen backend's device does not have.
    #[error(
        "model.ffn.compute_type = \"{compute}\": the device ({device}) has no {compute}; remove the \
         field (products in the parameters' type) or run on --backend cuda"
    )]
    ComputeTypeUnavailable {
        /// The products' float type asked for.
        compute: &'static str,
        /// The device, as Burn names it.
        device: String,
    },
    /// The chosen backend is not part of this build.
    #[error("backend `{0}` was not compiled into this binary; rebuild with `--features {0}`")]
    BackendNotCompiled(&'static str),
    /// A command that runs CubeCL kernels was given the ndarray backend.
    #[error("this command runs CubeCL kernels: pass --backend cuda or --backend wgpu")]
    NeedsCubecl,
    /// The chosen backend was compiled in but found no usable device.
    #[error("backend `{backend}` has no usable device ({reason}); see README.md, Backends")]
    BackendUnavailable {
        /// The backend's name.
        backend: &'static str,
        /// First line of what the backend reported.
        reason: String,
    },
    /// `bench --case` matches no benchmark case.
    #[error("no benchmark case contains `{filter}`; the cases are: {cases}")]
    NoBenchCase {
        /// The text given to `--case`.
        filter: String,
        /// The labels of all cases.
        cases: String,
    },
    /// `bench` measured none of the expert cases it was asked for; nothing was written.
    #[error("bench: every expert case failed, the first with {0}; nothing was written")]
    BenchFailed(String),
    /// The results directory of the run already exists.
    #[error(
        "{0} already exists; pass --overwrite to replace it or --name to pick another run name"
    )]
    RunExists(PathBuf),
    /// `--overwrite` or `--fresh` would replace something that is not a results directory of the
    /// command's own kind.
    #[error(
        "{path} is {found}, not {kind}; refusing to replace it (pick another name, or move it away yourself)"
    )]
    NotReplaceable {
        /// What would be replaced.
        path: PathBuf,
        /// What it is, e.g. `a file` or `a training run`.
        found: String,
        /// What the command writes, e.g. `a predict result directory`.
        kind: &'static str,
    },
    /// A run of a sweep failed; the sweep stops (finished runs are kept for a resume).
    #[error(
        "sweep run `{run}` failed: {reason} (its output: {log}); the finished runs are kept, and \
         the same command resumes from them once the cause is fixed"
    )]
    SweepRunFailed {
        /// The run's name.
        run: String,
        /// The run's error line.
        reason: String,
        /// The run's output.
        log: PathBuf,
    },
    /// A finished run of a sweep was trained with another config than the sweep now plans.
    #[error(
        "{0} was trained with another config than the sweep now plans (was the sweep config or a --set edited?); give the sweep the config and --set values it was started with to resume or tabulate it, or pass --fresh to start it over"
    )]
    SweepChanged(PathBuf),
    /// `sweep --tables-only` found no finished run to tabulate.
    #[error(
        "{0} holds no finished run of this sweep yet; run the sweep without --tables-only first"
    )]
    SweepNotStarted(PathBuf),
    /// A plot could not be drawn or written.
    #[error("{path}: cannot draw the plot: {reason}")]
    Plot {
        /// The plot file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The language model's corpus is missing, damaged or too small (`experiments/src/lm/`).
    #[error(transparent)]
    Corpus(#[from] crate::lm::corpus::CorpusError),
    /// An `offload` setting, trace or device problem (`experiments/src/offload/`).
    #[error(transparent)]
    Offload(#[from] crate::offload::error::OffloadError),
    /// A model file could not be written, or read back into the model its config describes.
    #[error("{path}: cannot {action} the model: {reason}")]
    ModelFile {
        /// The model file.
        path: PathBuf,
        /// `save` or `load`.
        action: &'static str,
        /// What went wrong.
        reason: String,
    },
}

impl ExperimentError {
    /// The process exit code for this error: 128 + the signal for an interrupted run (130 for
    /// Ctrl-C), 2 for everything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            ExperimentError::Interrupted { cause, .. } => cause.exit_code(),
            _ => 2,
        }
    }

    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { path, source }
    }
}

/// Runs `f`, turning a panic (in `f` or on a thread it waits for) into the first panic's message,
/// cut to its first line: Burn and CubeCL report some user errors (no device, a saved model that
/// does not fit) by panicking.
pub fn catch_panic<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    let first_panic = Arc::new(Mutex::new(None::<String>));
    let recorder = first_panic.clone();
    let previous_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()));
        let mut first = recorder.lock().unwrap_or_else(|e| e.into_inner());
        if first.is_none() {
            *first = message;
        }
    }));
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(f));
    std::panic::set_hook(previous_hook);
    outcome.map_err(|_| {
        let message = first_panic.lock().unwrap_or_else(|e| e.into_inner()).take();
        first_line(
            &message.unwrap_or_else(|| "unknown failure".to_string()),
            160,
        )
    })
}

/// The first non-empty line of `message`, cut to about `max_chars` characters.
pub(crate) fn first_line(message: &str, max_chars: usize) -> String {
    let line = message
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or_default();
    match line.char_indices().nth(max_chars) {
        Some((cut, _)) => format!("{}...", &line[..cut]),
        None => line.to_string(),
    }
}
