//! End-to-end tests that results are never lost: bad run names, `--overwrite`, interrupted and
//! killed runs, concurrent runs, sizes the machine cannot hold, damaged run files, and messages
//! that name the field and who set it.

mod support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use support::{
    BINARY, assert_clean_failure, assert_failure_with_code, experiments, repo_path, scratch_dir,
    snapshot,
};

/// Flags that make the smoke config train in about a second.
const TINY: [&str; 8] = [
    "--set",
    "train.epochs=1",
    "--set",
    "task.train_size=256",
    "--set",
    "task.valid_size=64",
    "--set",
    "task.test_size=64",
];

fn smoke_config() -> String {
    repo_path("configs/smoke.toml")
        .to_str()
        .unwrap()
        .to_string()
}

/// `train --config configs/smoke.toml --results <results>` with the tiny sizes, then `extra`.
fn train_args(results: &Path, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = ["train", "--config", &smoke_config(), "--results"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.push(results.to_str().unwrap().to_string());
    args.extend(TINY.iter().chain(extra).map(|s| s.to_string()));
    args
}

fn train(results: &Path, extra: &[&str]) -> Output {
    let args = train_args(results, extra);
    experiments(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

fn assert_success(output: &Output) {
    assert!(
        output.status.success(),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Names of the hidden (dot-prefixed) entries of `dir`: staging directories left behind.
fn hidden_entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with('.'))
        .collect()
}

/// A results directory inside `base` holding a run `keep` (made-up files) and a file, with a file
/// and a directory beside it: what a bad command must leave byte for byte as it was.
fn precious_files(base: &Path) -> PathBuf {
    let results = base.join("results");
    std::fs::create_dir_all(results.join("keep")).unwrap();
    std::fs::write(results.join("keep/metrics.json"), "{\"run\": \"keep\"}").unwrap();
    std::fs::write(results.join("notes.txt"), "results notes").unwrap();
    std::fs::create_dir_all(base.join("outside")).unwrap();
    std::fs::write(base.join("outside/data.txt"), "outside data").unwrap();
    std::fs::write(base.join("README"), "beside the results").unwrap();
    results
}

#[test]
fn bad_run_names_end_with_one_line_and_touch_nothing() {
    let base = scratch_dir("names");
    let results = precious_files(&base);
    let before = snapshot(&base);
    let outside = base.join("outside");
    let long = "x".repeat(101);
    let names = [
        "..",
        ".",
        "",
        "../x",
        "a/b",
        outside.to_str().unwrap(),
        ".hidden",
        "a b",
        long.as_str(),
    ];
    for name in names {
        for overwrite in [false, true] {
            let mut extra = vec!["--name", name];
            if overwrite {
                extra.push("--overwrite");
            }
            let output = train(&results, &extra);
            assert_clean_failure(&output, &format!("--name {name:?} is not a valid run name"));
        }
    }
    // A default name taken from a config file's name is checked the same way.
    let spaced = base.join("my run.toml");
    std::fs::copy(repo_path("configs/smoke.toml"), &spaced).unwrap();
    let output = experiments(&[
        "train",
        "--config",
        spaced.to_str().unwrap(),
        "--results",
        results.to_str().unwrap(),
    ]);
    assert_clean_failure(
        &output,
        "\"my run\" is not a valid run name: it contains ' '",
    );
    std::fs::remove_file(&spaced).unwrap();
    assert_eq!(snapshot(&base), before);
    std::fs::remove_dir_all(base).unwrap();
}

#[test]
fn overwrite_replaces_the_old_run_only_once_the_new_one_is_complete() {
    let results = scratch_dir("overwrite");
    assert_success(&train(&results, &["--name", "keep"]));
    let before = snapshot(&results);

    // A run that fails before training (here: too large) leaves the old run as it was.
    let failed = train(
        &results,
        &[
            "--name",
            "keep",
            "--overwrite",
            "--set",
            "model.ffn.expert_width=1000000000",
        ],
    );
    assert_clean_failure(&failed, "model.ffn.expert_width = 1000000000 is too large");
    assert_eq!(snapshot(&results), before);

    let refused = train(&results, &["--name", "keep"]);
    assert_clean_failure(&refused, "already exists; pass --overwrite");
    assert_eq!(snapshot(&results), before);

    let metrics = results.join("keep/metrics.json");
    let old_metrics = std::fs::read(&metrics).unwrap();
    let replaced = train(
        &results,
        &["--name", "keep", "--overwrite", "--set", "train.seed=1"],
    );
    assert_success(&replaced);
    assert_ne!(std::fs::read(&metrics).unwrap(), old_metrics);
    assert!(hidden_entries(&results).is_empty());
    std::fs::remove_dir_all(results).unwrap();
}

/// Starts a long run named `keep` over the existing one and returns once it is training; a
/// thread keeps reading its output (a closed pipe would end it).
fn start_long_overwrite(results: &Path) -> (Child, JoinHandle<()>) {
    let args = train_args(
        results,
        &[
            "--name",
            "keep",
            "--overwrite",
            "--set",
            "train.epochs=100000",
        ],
    );
    let mut child = Command::new(BINARY)
        .args(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let (training, started) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            if line.starts_with("epoch ") {
                let _ = training.send(());
            }
        }
    });
    started
        .recv_timeout(Duration::from_secs(120))
        .expect("the run reaches its first epoch");
    (child, reader)
}

#[test]
fn interrupted_or_killed_runs_leave_the_previous_run_intact() {
    let results = scratch_dir("interrupt");
    assert_success(&train(&results, &["--name", "keep"]));
    let before = snapshot(&results);

    let (child, reader) = start_long_overwrite(&results);
    let pid = child.id().to_string();
    let kill = Command::new("kill").args(["-INT", &pid]).status().unwrap();
    assert!(kill.success());
    let output = child.wait_with_output().unwrap();
    reader.join().unwrap();
    assert_failure_with_code(
        &output,
        130,
        "interrupted (Ctrl-C): training stopped, nothing was kept; ",
    );
    assert!(String::from_utf8_lossy(&output.stderr).contains("still holds the earlier run"));
    assert_eq!(snapshot(&results), before);
    assert!(hidden_entries(&results).is_empty());

    let (mut child, reader) = start_long_overwrite(&results);
    child.kill().unwrap();
    child.wait().unwrap();
    reader.join().unwrap();
    let leftovers = hidden_entries(&results);
    assert_eq!(leftovers.len(), 1, "{leftovers:?}");
    assert!(leftovers[0].starts_with(".keep.partial-"), "{leftovers:?}");
    let leftover = results.join(&leftovers[0]);
    std::fs::remove_dir_all(&leftover).unwrap();
    assert_eq!(snapshot(&results), before);

    // What a killed run leaves is skipped with a note, and refused by eval.
    std::fs::create_dir(&leftover).unwrap();
    let compare = experiments(&["compare", "--results", results.to_str().unwrap()]);
    assert_success(&compare);
    assert!(String::from_utf8_lossy(&compare.stdout).contains("keep"));
    let notes = String::from_utf8_lossy(&compare.stderr);
    assert!(
        notes.contains(&leftovers[0]) && notes.contains("an unfinished run"),
        "{notes}"
    );
    let eval = experiments(&["eval", "--run", leftover.to_str().unwrap()]);
    assert_clean_failure(&eval, "not a complete run: an unfinished run");
    std::fs::remove_dir_all(results).unwrap();
}

#[test]
fn runs_started_together_take_distinct_default_names() {
    let results = scratch_dir("concurrent");
    let args = train_args(&results, &[]);
    let children: Vec<Child> = (0..4)
        .map(|_| {
            Command::new(BINARY)
                .args(&args)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        assert_success(&child.wait_with_output().unwrap());
    }
    for name in ["smoke", "smoke-2", "smoke-3", "smoke-4"] {
        let text = std::fs::read_to_string(results.join(name).join("metrics.json")).unwrap();
        let metrics: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(metrics["run"], name);
    }
    assert_eq!(std::fs::read_dir(&results).unwrap().count(), 4);
    std::fs::remove_dir_all(results).unwrap();
}

#[test]
fn sizes_beyond_the_machine_are_refused_before_allocating() {
    let results = scratch_dir("sizes").join("results");
    let cases = [
        (
            "model.ffn.num_experts=100000",
            "model.ffn.num_experts = 100000 is invalid: must be in 1..=65536",
        ),
        (
            "model.ffn.expert_width=1000000000",
            "model.ffn.expert_width = 1000000000 is too large for this machine: the run needs \
             about",
        ),
        (
            "model.d_model=1000000000",
            "model.d_model = 1000000000 is too large",
        ),
        (
            "task.train_size=1000000000000",
            "task.train_size = 1000000000000 is too large",
        ),
    ];
    for (assignment, expected) in cases {
        let started = Instant::now();
        let output = train(&results, &["--set", assignment]);
        assert_clean_failure(&output, &format!("error: --set {assignment}: {expected}"));
        assert!(started.elapsed() < Duration::from_secs(30), "{assignment}");
        assert!(
            !results.exists(),
            "{assignment} created {}",
            results.display()
        );
    }
    std::fs::remove_dir_all(results.parent().unwrap()).unwrap();
}

#[test]
fn compare_lists_readable_runs_and_names_the_unreadable_ones() {
    let results = scratch_dir("compare");
    assert_success(&train(&results, &["--name", "good"]));
    let good_metrics = std::fs::read_to_string(results.join("good/metrics.json")).unwrap();
    let mut diverged: serde_json::Value = serde_json::from_str(&good_metrics).unwrap();
    diverged["run"] = "diverged".into();
    diverged["test_loss"] = serde_json::Value::Null; // how a NaN loss is written
    let diverged = diverged.to_string();
    let broken = [
        ("corrupt", "{ \"run\": \"corr"),
        ("foreign", "{\"hello\": 1}"),
        ("diverged", diverged.as_str()),
    ];
    for (name, text) in broken {
        std::fs::create_dir(results.join(name)).unwrap();
        std::fs::write(results.join(name).join("metrics.json"), text).unwrap();
    }
    std::fs::create_dir(results.join(".late.partial-1")).unwrap();
    std::fs::create_dir(results.join("empty")).unwrap();
    std::fs::create_dir_all(results.join("marked/learner")).unwrap();
    std::fs::write(results.join("marked/.kind"), "run\n").unwrap();
    std::fs::create_dir(results.join("bench-routing-wgpu")).unwrap();
    std::fs::write(results.join("bench-routing-wgpu/routing.csv"), "op\n").unwrap();

    let output = experiments(&["compare", "--results", results.to_str().unwrap()]);
    assert_success(&output);
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(
        table.contains("good") && table.contains("diverged"),
        "{table}"
    );
    let notes = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = notes.lines().collect();
    assert_eq!(lines.len(), 5, "{notes}");
    for (line, expected) in lines.iter().zip([
        ".late.partial-1: an unfinished run",
        "corrupt/metrics.json: damaged or not written by this program (EOF",
        "empty: empty",
        "foreign/metrics.json: damaged or not written by this program (missing field",
        "marked: metrics.json is missing",
    ]) {
        assert!(line.starts_with("note: skipped "), "{line}");
        assert!(line.contains(expected), "{expected:?} in {line}");
    }

    for run in ["good", "diverged"] {
        std::fs::remove_dir_all(results.join(run)).unwrap();
    }
    let none = experiments(&["compare", "--results", results.to_str().unwrap()]);
    assert_eq!(none.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&none.stderr);
    assert!(
        stderr
            .trim_end()
            .ends_with("5 skipped (see the notes above)"),
        "{stderr}"
    );
    std::fs::remove_dir_all(results).unwrap();
}

#[test]
fn eval_refuses_a_run_whose_files_are_damaged() {
    let results = scratch_dir("damaged");
    assert_success(&train(&results, &["--name", "run"]));
    let run = results.join("run");
    let run_arg = run.to_str().unwrap();
    // The file, what replaces it (`None`: its first half), what the error says.
    let damages: [(&str, Option<&[u8]>, &str); 3] = [
        ("metrics.json", None, "damaged"),
        (
            "model.mpk",
            None,
            "damaged or not written by this program (its bytes do not match",
        ),
        ("config.toml", Some(b"[model\n"), "config.toml: line 1"),
    ];
    for (file, replacement, expected) in damages {
        let path = run.join(file);
        let intact = std::fs::read(&path).unwrap();
        let damaged = replacement.unwrap_or(&intact[..intact.len() / 2]);
        std::fs::write(&path, damaged).unwrap();
        let output = experiments(&["eval", "--run", run_arg]);
        assert_clean_failure(&output, &format!("{}", path.display()));
        assert_clean_failure(&output, expected);
        std::fs::write(&path, intact).unwrap();
    }
    // A flipped bit or an appended byte leaves a decodable record: the checksum catches both.
    let model = run.join("model.mpk");
    let intact = std::fs::read(&model).unwrap();
    let mut flipped = intact.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x10;
    let mut appended = intact.clone();
    appended.push(0);
    for damaged in [flipped, appended] {
        std::fs::write(&model, damaged).unwrap();
        assert_clean_failure(
            &experiments(&["eval", "--run", run_arg]),
            "model.mpk: damaged or not written by this program (its bytes do not match",
        );
    }
    std::fs::write(&model, intact).unwrap();
    assert_success(&experiments(&["eval", "--run", run_arg]));
    std::fs::remove_dir_all(results).unwrap();
}

#[test]
fn config_errors_name_the_full_field_and_who_set_it() {
    let dir = scratch_dir("messages");
    let results = dir.join("results");
    let smoke = std::fs::read_to_string(repo_path("configs/smoke.toml")).unwrap();
    let negative = dir.join("negative.toml");
    std::fs::write(
        &negative,
        smoke.replace("expert_width = 32", "expert_width = -5"),
    )
    .unwrap();
    let empty = dir.join("empty.toml");
    std::fs::write(&empty, "# nothing set\n").unwrap();
    let file_cases = [
        (
            &negative,
            format!(
                "error: {}: model.ffn.expert_width: invalid value: integer `-5`",
                negative.display()
            ),
        ),
        (
            &empty,
            format!("error: {}: empty config file", empty.display()),
        ),
    ];
    for (config, expected) in file_cases {
        let output = experiments(&[
            "train",
            "--config",
            config.to_str().unwrap(),
            "--results",
            results.to_str().unwrap(),
        ]);
        assert_clean_failure(&output, &expected);
    }
    let flag_cases = [
        (
            "model.ffn.expert_width=-5",
            "model.ffn.expert_width: invalid value: integer `-5`",
        ),
        (
            "model.ffn.routing.tau=2",
            "model.ffn.routing.tau = 2 is invalid",
        ),
        (
            "model.ffn.routing.tau=\"high\"",
            "model.ffn.routing.tau: invalid type: string",
        ),
        (
            "train=3",
            "train: invalid type: integer `3`, expected a table",
        ),
        ("train.epoch=3", "unknown key `train.epoch`"),
        ("model.ffn.kind=dense", "model.ffn: missing field `width`"),
    ];
    for (assignment, expected) in flag_cases {
        let output = train(&results, &["--set", assignment]);
        assert_clean_failure(&output, &format!("error: --set {assignment}: {expected}"));
        assert!(!String::from_utf8_lossy(&output.stderr).contains("Serde"));
    }
    assert!(!results.exists());
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn bench_checks_its_results_directory_before_timing() {
    let dir = scratch_dir("bench-dir");
    let not_a_dir = dir.join("file");
    std::fs::write(&not_a_dir, "a file where the results directory should be").unwrap();
    let output = experiments(&[
        "bench",
        "--backend",
        "wgpu",
        "--quick",
        "--results",
        not_a_dir.to_str().unwrap(),
    ]);
    assert_clean_failure(&output, not_a_dir.to_str().unwrap());
    assert!(!String::from_utf8_lossy(&output.stdout).contains("bandwidth"));
    std::fs::remove_dir_all(dir).unwrap();
}
