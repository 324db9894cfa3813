//! Run directories under the results root: checked names, the files a run holds, and writing a
//! run so that a crash, a kill or Ctrl-C never costs an earlier run.
//!
//! A run is written into `<root>/.<name>.partial-<pid>` and renamed to `<root>/<name>` only once
//! it is complete; `--overwrite` moves the earlier run aside at that moment and deletes it after
//! the rename. A name is claimed before training by creating `<root>/<name>` with `create_dir`,
//! which fails atomically when the name is taken (concurrent runs take different names); the final
//! rename replaces that empty directory. Dot-prefixed directories are never runs: `compare` and
//! `eval` skip them with a note.
//!
//! Every command writes its results directories here (train, sweep, predict, offload, bench): each
//! directory carries a marker file ([`KIND_FILE`]) naming its [`DirKind`], written before it
//! appears under its name. `--overwrite` and `--fresh` replace only a directory of the same kind
//! (or an empty claim left by a killed run); anything else under the name is refused and left as
//! it was.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::ExperimentError;

/// The resolved configuration, saved in every run directory.
pub const CONFIG_FILE: &str = "config.toml";
/// The trained weights (Burn's compact recorder).
pub const MODEL_FILE: &str = "model.mpk";
/// The measured numbers of the run ([`crate::RunMetrics`]).
pub const METRICS_FILE: &str = "metrics.json";
/// burn-train's logs.
pub const LEARNER_DIR: &str = "learner";

/// The marker file naming what kind of results directory holds it ([`DirKind`]).
pub const KIND_FILE: &str = ".kind";

/// What a results directory holds, as its marker file says: the commands replace only their own
/// kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DirKind {
    /// A training run (`train`).
    Run,
    /// A sweep of training runs (`sweep`), resumed in place.
    Sweep,
    /// Routing predictors scored on a run (`predict`).
    Predict,
    /// Expert-offloading measurements (`offload`).
    Offload,
    /// Kernel benchmark tables (`bench`).
    Bench,
}

impl DirKind {
    const ALL: [DirKind; 5] = [
        DirKind::Run,
        DirKind::Sweep,
        DirKind::Predict,
        DirKind::Offload,
        DirKind::Bench,
    ];

    /// The marker's text, e.g. `run`.
    pub fn name(self) -> &'static str {
        match self {
            DirKind::Run => "run",
            DirKind::Sweep => "sweep",
            DirKind::Predict => "predict",
            DirKind::Offload => "offload",
            DirKind::Bench => "bench",
        }
    }

    /// What it is, in words, for messages.
    fn description(self) -> &'static str {
        match self {
            DirKind::Run => "a training run",
            DirKind::Sweep => "a sweep directory",
            DirKind::Predict => "a predict result directory",
            DirKind::Offload => "an offload result directory",
            DirKind::Bench => "a bench result directory",
        }
    }

    /// Files that together identify a directory of this kind written before the marker existed.
    fn legacy_files(self) -> &'static [&'static str] {
        match self {
            DirKind::Run => &[METRICS_FILE, CONFIG_FILE],
            DirKind::Sweep => &["sweep.toml", "runs"],
            DirKind::Predict => &["prediction.json"],
            DirKind::Offload => &["offload.json"],
            DirKind::Bench => &["bench.json"],
        }
    }
}

/// The kind of results directory `path` is: its marker, or for one written before markers
/// existed, the files it holds; `None` for anything else (a file, a foreign directory).
pub fn kind_of(path: &Path) -> Option<DirKind> {
    if !path.symlink_metadata().is_ok_and(|m| m.is_dir()) {
        return None;
    }
    if let Ok(text) = std::fs::read_to_string(path.join(KIND_FILE)) {
        return DirKind::ALL.into_iter().find(|k| k.name() == text.trim());
    }
    DirKind::ALL
        .into_iter()
        .find(|k| k.legacy_files().iter().all(|f| path.join(f).exists()))
}

/// Whether `path` may be replaced by a directory of `kind`: `Ok(false)` if nothing is there,
/// `Ok(true)` for a directory of the same kind or an empty one (the claim of a killed run), an
/// error naming what is there otherwise.
pub fn check_replaceable(path: &Path, kind: DirKind) -> Result<bool, ExperimentError> {
    let metadata = match path.symlink_metadata() {
        Ok(metadata) => metadata,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(ExperimentError::io(path)(e)),
    };
    let refuse = |found: String| ExperimentError::NotReplaceable {
        path: path.to_path_buf(),
        found,
        kind: kind.description(),
    };
    if metadata.file_type().is_symlink() {
        return Err(refuse("a symbolic link".into()));
    }
    if !metadata.is_dir() {
        return Err(refuse("a file".into()));
    }
    let is_empty = std::fs::read_dir(path)
        .map_err(ExperimentError::io(path))?
        .next()
        .is_none();
    match kind_of(path) {
        _ if is_empty => Ok(true),
        Some(found) if found == kind => Ok(true),
        Some(found) => Err(refuse(found.description().into())),
        None => Err(refuse("a directory not written by this program".into())),
    }
}

/// Opens the resumable results directory `root/<name>` of `kind` (a sweep): creates it with its
/// marker when absent, keeps it when it is of that kind, and with `fresh` replaces it by an empty
/// one (the old one is moved aside first, then deleted). Anything else under the name is an error
/// and stays as it was.
pub fn open_resumable(
    root: &Path,
    name: &RunName,
    kind: DirKind,
    fresh: bool,
) -> Result<PathBuf, ExperimentError> {
    create_root(root)?;
    let path = root.join(name.as_str());
    let exists = check_replaceable(&path, kind)?;
    let aside = match exists && fresh {
        true => move_aside(&path, name.as_str())?,
        false => None,
    };
    if !exists || fresh {
        match std::fs::create_dir(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::AlreadyExists && !exists => {
                // Created by a concurrent command since the check: check it again.
                check_replaceable(&path, kind)?;
            }
            Err(e) => return Err(ExperimentError::io(&path)(e)),
        }
    }
    if !path.join(KIND_FILE).exists() {
        write_marker(&path, kind)?;
    }
    if let Some(aside) = aside
        && let Err(e) = remove_any(&aside)
    {
        eprintln!(
            "note: the replaced directory is kept in {} ({e}); delete it by hand",
            aside.display()
        );
    }
    Ok(path)
}

/// Removes the staging directories (`.<name>.partial-<pid>`) under `root` whose process is gone,
/// left by runs that were killed; returns how many. Only where `/proc` tells which processes live.
pub fn remove_abandoned_staging(root: &Path) -> usize {
    if !Path::new("/proc/self").exists() {
        return 0;
    }
    let Ok(entries) = std::fs::read_dir(root) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some((_, suffix)) = name.split_once(PARTIAL) else {
            continue;
        };
        let pid = suffix.split('-').next().unwrap_or_default();
        let alive = pid.parse::<u32>().is_ok_and(|pid| {
            pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists()
        });
        if name.starts_with('.') && !alive && remove_any(&entry.path()).is_ok() {
            eprintln!(
                "note: removed {}, left by a killed run",
                entry.path().display()
            );
            removed += 1;
        }
    }
    removed
}

/// Writes the marker of `kind` into `dir`.
fn write_marker(dir: &Path, kind: DirKind) -> Result<(), ExperimentError> {
    let marker = dir.join(KIND_FILE);
    std::fs::write(&marker, format!("{}\n", kind.name())).map_err(ExperimentError::io(marker))
}

/// Longest run name accepted (the staging directory adds a prefix and a suffix to it).
const MAX_NAME_LEN: usize = 100;
/// Infix of a run's staging directory, `.<name>.partial-<pid>`.
const PARTIAL: &str = ".partial-";
/// Infix of an earlier run moved aside by `--overwrite`, `.<name>.replaced-<pid>`.
const REPLACED: &str = ".replaced-";

/// A checked run name: one directory name of letters, digits and `. _ - + =`, not starting with
/// `.` or `-`, at most 100 characters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunName(String);

impl RunName {
    /// Checks `name`; the error says what is wrong with it, e.g. `it contains '/'`.
    pub fn parse(name: &str) -> Result<Self, String> {
        let allowed = |c: char| c.is_ascii_alphanumeric() || "._-+=".contains(c);
        if name.is_empty() {
            return Err("it is empty".into());
        }
        if name.len() > MAX_NAME_LEN {
            return Err(format!("it is longer than {MAX_NAME_LEN} characters"));
        }
        if let Some(c) = name.chars().find(|&c| !allowed(c)) {
            return Err(format!("it contains {c:?}"));
        }
        if name.starts_with('.') || name.starts_with('-') {
            return Err(format!("it starts with '{}'", &name[..1]));
        }
        Ok(Self(name.to_string()))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `<name>-<n>`, the n-th candidate when the name is taken (`moe-2`, `moe-3`, ...).
    fn numbered(&self, n: usize) -> String {
        match n {
            1 => self.0.clone(),
            n => format!("{}-{n}", self.0),
        }
    }
}

/// A run being written: its name is claimed, its files go into [`RunDir::staging`] until
/// [`RunDir::commit`] moves them into place. Dropped without a commit, it removes what it wrote
/// and its claim, and leaves an earlier run of the same name as it was.
#[derive(Debug)]
pub struct RunDir {
    name: String,
    path: PathBuf,
    staging: PathBuf,
    /// What the directory holds (its marker).
    kind: DirKind,
    /// `path` held a directory of the same kind before and `--overwrite` replaces it at the
    /// commit.
    replaces: bool,
    committed: bool,
}

impl RunDir {
    /// Claims `root/<name>` for a directory of `kind`; a name that exists is an error unless
    /// `overwrite` and it holds a directory of the same kind (checked again at the commit).
    pub fn claim(
        root: &Path,
        name: &RunName,
        kind: DirKind,
        overwrite: bool,
    ) -> Result<Self, ExperimentError> {
        create_root(root)?;
        let path = root.join(name.as_str());
        let replaces = match std::fs::create_dir(&path) {
            Ok(()) => false,
            Err(e) if e.kind() == ErrorKind::AlreadyExists && overwrite => {
                check_replaceable(&path, kind)?;
                true
            }
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                return Err(ExperimentError::RunExists(path));
            }
            Err(e) => return Err(ExperimentError::io(&path)(e)),
        };
        Self::with_staging(root, name.as_str().to_string(), path, kind, replaces)
    }

    /// Claims the first free name of `name`, `name-2`, `name-3`, ... for a directory of `kind`;
    /// concurrent runs get different names.
    pub fn claim_next_free(
        root: &Path,
        name: &RunName,
        kind: DirKind,
    ) -> Result<Self, ExperimentError> {
        create_root(root)?;
        for n in 1.. {
            let candidate = name.numbered(n);
            let path = root.join(&candidate);
            match std::fs::create_dir(&path) {
                Ok(()) => return Self::with_staging(root, candidate, path, kind, false),
                Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(ExperimentError::io(&path)(e)),
            }
        }
        unreachable!("one of infinitely many names is free")
    }

    fn with_staging(
        root: &Path,
        name: String,
        path: PathBuf,
        kind: DirKind,
        replaces: bool,
    ) -> Result<Self, ExperimentError> {
        let mut run = Self {
            staging: PathBuf::new(),
            name,
            path,
            kind,
            replaces,
            committed: false,
        };
        // A staging directory of the same pid can only be left by a killed earlier process.
        for n in 1.. {
            let staging = root.join(format!(".{}{PARTIAL}{}", run.name, pid_suffix(n)));
            match std::fs::create_dir(&staging) {
                Ok(()) => {
                    run.staging = staging;
                    write_marker(&run.staging, kind)?;
                    return Ok(run);
                }
                Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(ExperimentError::io(&staging)(e)),
            }
        }
        unreachable!("one of infinitely many names is free")
    }

    /// The run's name (the final directory's name).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Where the run will be once complete, `<root>/<name>`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where the run's files are written until the commit.
    pub fn staging(&self) -> &Path {
        &self.staging
    }

    /// What a run that stops before its commit leaves under its name, for messages.
    pub fn left_as_it_was(&self) -> String {
        match self.replaces {
            true => format!("{} still holds the earlier run", self.path.display()),
            false => format!("{} was not created", self.path.display()),
        }
    }

    /// Moves the complete run into place; with `--overwrite`, the earlier run is moved aside
    /// first (if it is still of the same kind) and deleted once the new one is in place.
    pub fn commit(mut self) -> Result<PathBuf, ExperimentError> {
        let aside = match self.replaces {
            true => {
                if let Err(error) = check_replaceable(&self.path, self.kind) {
                    // Replaced by something else since the claim: keep both, the finished run
                    // where it was written.
                    self.committed = true;
                    return Err(ExperimentError::CommitRun {
                        path: self.path.clone(),
                        staging: self.staging.clone(),
                        source: std::io::Error::other(error.to_string()),
                    });
                }
                move_aside(&self.path, &self.name)?
            }
            false => None,
        };
        let moved = std::fs::rename(&self.staging, &self.path);
        // From here on the finished run is never deleted: in place, or kept where it was written.
        self.committed = true;
        if let Err(source) = moved {
            if let Some(aside) = &aside {
                let _ = std::fs::rename(aside, &self.path);
            }
            return Err(ExperimentError::CommitRun {
                path: self.path.clone(),
                staging: self.staging.clone(),
                source,
            });
        }
        if let Some(aside) = aside
            && let Err(e) = remove_any(&aside)
        {
            eprintln!(
                "note: the replaced run is kept in {} ({e}); delete it by hand",
                aside.display()
            );
        }
        Ok(self.path.clone())
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        let _ = std::fs::remove_dir_all(&self.staging);
        if !self.replaces {
            // Only the empty claim: `remove_dir` refuses a directory someone else filled.
            let _ = std::fs::remove_dir(&self.path);
        }
    }
}

/// What an entry of the results directory holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunState {
    /// A run directory with its metrics.
    Complete,
    /// Not a usable run; the text says why, e.g. `an unfinished run (...)`.
    Incomplete(String),
    /// Not a training run (a file, a benchmark table, a hidden file).
    NotARun,
}

/// Whether `path` is a complete run, an unfinished or damaged one, or something else.
pub fn run_state(path: &Path) -> RunState {
    let name = path
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    if name.starts_with('.') {
        return if name.contains(PARTIAL) {
            RunState::Incomplete(
                "an unfinished run: still training, or stopped by a crash or a kill; \
                 delete it once no training is running"
                    .into(),
            )
        } else if name.contains(REPLACED) {
            RunState::Incomplete(
                "a run replaced by --overwrite whose deletion was cut short; delete it".into(),
            )
        } else {
            RunState::NotARun
        };
    }
    if !path.is_dir() {
        return RunState::NotARun;
    }
    if path.join(METRICS_FILE).exists() {
        return RunState::Complete;
    }
    let is_empty = match std::fs::read_dir(path) {
        Ok(mut entries) => entries.next().is_none(),
        Err(e) => return RunState::Incomplete(format!("cannot be read: {e}")),
    };
    if is_empty {
        RunState::Incomplete("empty: a run still training, or one that was killed".into())
    } else if kind_of(path) == Some(DirKind::Run)
        || path.join(CONFIG_FILE).exists()
        || path.join(MODEL_FILE).exists()
    {
        RunState::Incomplete(format!("{METRICS_FILE} is missing"))
    } else {
        RunState::NotARun
    }
}

/// Renames `path` to `.<name>.replaced-<pid>` beside it; `None` if it is gone already.
fn move_aside(path: &Path, name: &str) -> Result<Option<PathBuf>, ExperimentError> {
    let root = path.parent().unwrap_or(Path::new("."));
    for n in 1.. {
        let aside = root.join(format!(".{name}{REPLACED}{}", pid_suffix(n)));
        if aside.symlink_metadata().is_ok() {
            continue;
        }
        return match std::fs::rename(path, &aside) {
            Ok(()) => Ok(Some(aside)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(ExperimentError::io(path)(e)),
        };
    }
    unreachable!("one of infinitely many names is free")
}

/// Creates the results directory (and its parents) if it does not exist.
fn create_root(root: &Path) -> Result<(), ExperimentError> {
    std::fs::create_dir_all(root).map_err(ExperimentError::io(root))
}

/// `<pid>`, then `<pid>-2`, `<pid>-3`, ...
fn pid_suffix(n: usize) -> String {
    match n {
        1 => std::process::id().to_string(),
        n => format!("{}-{n}", std::process::id()),
    }
}

/// Removes a directory tree, or a file.
fn remove_any(path: &Path) -> std::io::Result<()> {
    match path.symlink_metadata()?.is_dir() {
        true => std::fs::remove_dir_all(path),
        false => std::fs::remove_file(path),
    }
}

/// The commit the binary was built from (`-dirty` when its tracked files had changes), embedded
/// at build time by `build.rs`; `None` when it was built outside git.
pub fn git_commit() -> Option<String> {
    option_env!("MOE_BUILD_COMMIT").map(str::to_string)
}

/// Writes `metrics` as `metrics.json` into `run_dir`.
pub fn save_metrics<T: Serialize>(metrics: &T, run_dir: &Path) -> Result<(), ExperimentError> {
    let path = run_dir.join(METRICS_FILE);
    let json = serde_json::to_string_pretty(metrics).expect("metrics serialise");
    std::fs::write(&path, json).map_err(ExperimentError::io(path))
}

/// Reads `metrics.json` from `run_dir`; a file that does not parse is a damaged file.
pub fn load_metrics<T: DeserializeOwned>(run_dir: &Path) -> Result<T, ExperimentError> {
    let path = run_dir.join(METRICS_FILE);
    let text = std::fs::read_to_string(&path).map_err(ExperimentError::io(&path))?;
    serde_json::from_str(&text).map_err(|e| ExperimentError::DamagedFile {
        path,
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The commit embedded at build time is the checkout's HEAD (tests build from the tree they
    /// test; `build.rs` reruns on every commit and checkout).
    #[test]
    fn records_name_the_commit_the_binary_was_built_from() {
        let head = std::process::Command::new("git")
            .args(["rev-parse", "HEAD"])
            .output()
            .ok()
            .filter(|out| out.status.success());
        match head {
            Some(out) => {
                let head = String::from_utf8_lossy(&out.stdout).trim().to_string();
                let embedded = git_commit().expect("built inside git: a commit is embedded");
                assert!(embedded.starts_with(&head), "{embedded} is not HEAD {head}");
            }
            None => assert_eq!(git_commit(), None, "built outside git: nothing embedded"),
        }
    }

    #[test]
    fn names_are_single_plain_components() {
        for good in ["moe", "moe-2", "tau=0.7", "top_k+8", "A.b"] {
            assert!(RunName::parse(good).is_ok(), "{good}");
        }
        for (bad, reason) in [
            ("", "empty"),
            (".", "starts with '.'"),
            ("..", "starts with '.'"),
            ("../x", "'/'"),
            ("a/b", "'/'"),
            ("/abs", "'/'"),
            ("a\\b", "'\\\\'"),
            ("a b", "' '"),
            ("-x", "starts with '-'"),
            ("é", "'é'"),
        ] {
            let error = RunName::parse(bad).unwrap_err();
            assert!(error.contains(reason), "{bad:?}: {error}");
        }
        assert!(RunName::parse(&"x".repeat(MAX_NAME_LEN)).is_ok());
        assert!(RunName::parse(&"x".repeat(MAX_NAME_LEN + 1)).is_err());
    }

    #[test]
    fn only_a_directory_of_the_same_kind_or_an_empty_claim_is_replaceable() {
        let root = std::env::temp_dir().join(format!("run-dir-kinds-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("legacy")).unwrap();
        for file in [METRICS_FILE, CONFIG_FILE] {
            std::fs::write(root.join("legacy").join(file), "").unwrap();
        }
        std::fs::create_dir_all(root.join("marked")).unwrap();
        write_marker(&root.join("marked"), DirKind::Predict).unwrap();
        std::fs::create_dir_all(root.join("empty")).unwrap();
        std::fs::create_dir_all(root.join("foreign")).unwrap();
        std::fs::write(root.join("foreign/photo.jpg"), "").unwrap();
        std::fs::write(root.join("file"), "").unwrap();

        assert_eq!(kind_of(&root.join("legacy")), Some(DirKind::Run));
        assert_eq!(kind_of(&root.join("marked")), Some(DirKind::Predict));
        assert_eq!(kind_of(&root.join("foreign")), None);
        let replaceable = |name: &str, kind| check_replaceable(&root.join(name), kind);
        assert!(replaceable("legacy", DirKind::Run).unwrap());
        assert!(replaceable("marked", DirKind::Predict).unwrap());
        assert!(replaceable("empty", DirKind::Sweep).unwrap());
        assert!(!replaceable("absent", DirKind::Run).unwrap());
        for (name, kind, found) in [
            ("legacy", DirKind::Predict, "is a training run"),
            ("marked", DirKind::Run, "is a predict result directory"),
            (
                "foreign",
                DirKind::Run,
                "is a directory not written by this program",
            ),
            ("file", DirKind::Sweep, "is a file"),
        ] {
            let error = replaceable(name, kind).unwrap_err().to_string();
            assert!(error.contains(found), "{name}: {error}");
        }
        std::fs::remove_dir_all(&root).unwrap();
    }
}
