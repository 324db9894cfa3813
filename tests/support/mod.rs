//! Helpers shared by the end-to-end test files: run the binary, check how it failed.
#![allow(dead_code)] // each test file uses its own part

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub mod corpus;

/// The `experiments` binary under test.
pub const BINARY: &str = env!("CARGO_BIN_EXE_experiments");

/// A path inside the repository.
pub fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(relative)
}

/// A fresh, empty directory for one test.
pub fn scratch_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("moe-e2e-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs the binary with `args` to completion.
pub fn experiments(args: &[&str]) -> Output {
    let mut command = Command::new(BINARY);
    // Mesa's Vulkan drivers print a line about XDG_RUNTIME_DIR on stderr where it is unset (CI,
    // containers); the one-line error checks are about the binary's own lines.
    if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
        command.env("XDG_RUNTIME_DIR", std::env::temp_dir());
    }
    command.args(args).output().expect("the binary runs")
}

/// Asserts the process failed the way users are promised: exit code 2, one line on stderr that
/// starts with `error:` and mentions `expected`, no panic.
pub fn assert_clean_failure(output: &Output, expected: &str) {
    assert_failure_with_code(output, 2, expected);
}

/// Like [`assert_clean_failure`], with exit code `code`.
pub fn assert_failure_with_code(output: &Output, code: i32, expected: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(code), "stderr: {stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "stderr: {stderr}");
    assert!(stderr.starts_with("error: "), "stderr: {stderr}");
    assert!(
        stderr.contains(expected),
        "expected {expected:?} in: {stderr}"
    );
}

/// Every file under `dir` with its bytes (directories with none): a tree compared before and
/// after a command.
pub fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(path) = pending.pop() {
        if path.is_dir() {
            files.insert(path.clone(), Vec::new());
            pending.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        } else {
            files.insert(path.clone(), std::fs::read(&path).unwrap());
        }
    }
    files
}

/// Asserts that a sweep directory holds its tables (each more than 200 bytes) and its plots as
/// SVG and PNG.
pub fn assert_sweep_files(dir: &Path) {
    for file in [
        "sweep.json",
        "sweep.csv",
        "pareto.md",
        "pareto.svg",
        "load_cv.svg",
    ] {
        let size = std::fs::metadata(dir.join(file)).map_or(0, |m| m.len());
        assert!(size > 200, "{file}: {size} bytes");
    }
    for png in ["pareto.png", "load_cv.png"] {
        let bytes = std::fs::read(dir.join(png)).unwrap();
        assert!(
            bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
            "{png} is not a PNG"
        );
    }
}
