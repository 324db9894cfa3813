//! Property-style test of every command's settings: random values (NaN, negative, zero, huge,
//! overflowing products, not a number at all) for the flags and size fields of `train`,
//! `offload`, `sweep` and `predict`, seeded. Whatever the values, the binary succeeds or fails with exit
//! code 2 and one `error:` line: never a panic (101), an abort or a signal, never a hang.

mod support;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::{BINARY, repo_path, scratch_dir};

/// Cases per command: the whole test stays well under a minute on 2 cores.
const CASES: usize = 10;
/// Longer than any refused or tiny run takes; a command past it is a hang.
const TIME_BOUND: Duration = Duration::from_secs(90);

/// Integers a user may type: zero, small, 2^32 (products overflow 64 bits), the largest and
/// one past, negative, and things that are not integers.
const COUNTS: [&str; 10] = [
    "0",
    "1",
    "3",
    "4294967296",
    "18446744073709551615",
    "18446744073709551616",
    "-1",
    "nan",
    "1e9",
    "x",
];
/// Floats a user may type.
const FLOATS: [&str; 9] = ["nan", "inf", "-inf", "-1", "0", "0.5", "1", "2", "1e308"];

/// A seeded xorshift generator: the same cases on every run.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }

    fn pick<'a>(&mut self, values: &[&'a str]) -> &'a str {
        values[self.below(values.len())]
    }
}

/// Runs the binary, killing it past [`TIME_BOUND`].
fn run_bounded(args: &[String]) -> Output {
    let mut child = Command::new(BINARY)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > TIME_BOUND {
            let _ = child.kill();
            panic!("hang: {args:?} ran past {TIME_BOUND:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

/// Success (`true`), or exit code 2 with one `error:` line (`false`).
fn assert_success_or_one_line(args: &[String]) -> bool {
    let output = run_bounded(args);
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprintln!(
        "DEBUG {args:?} -> {:?} {}",
        output.status.code(),
        stderr.trim()
    );
    if output.status.success() {
        return true;
    }
    assert_eq!(output.status.code(), Some(2), "{args:?}\nstderr: {stderr}");
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.starts_with("note: "))
        .collect();
    assert_eq!(lines.len(), 1, "{args:?}\nstderr: {stderr}");
    assert!(
        lines[0].starts_with("error: "),
        "{args:?}\nstderr: {stderr}"
    );
    false
}

/// The cases of one command reached both outcomes: the values test more than the parser.
fn assert_both_outcomes(command: &str, outcomes: &[bool]) {
    let successes = outcomes.iter().filter(|&&ok| ok).count();
    assert!(
        successes > 0 && successes < outcomes.len(),
        "{command}: {successes} of {} cases succeeded; change the seed or the values",
        outcomes.len()
    );
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

#[test]
fn random_settings_end_in_success_or_one_line() {
    let base = scratch_dir("fuzz");
    let results = base.join("results");
    let results_arg = results.to_str().unwrap();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);

    // train: size fields of the smoke config (not epochs: a huge count is a long run, not a bug).
    let smoke = repo_path("configs/smoke.toml");
    let fields = [
        "task.input_dim",
        "task.num_clusters",
        "task.train_size",
        "model.d_model",
        "model.num_blocks",
        "model.ffn.num_experts",
        "model.ffn.expert_width",
        "model.ffn.shared_experts",
        "model.ffn.shared_expert_width",
        "train.batch_size",
    ];
    let mut outcomes = Vec::new();
    for _ in 0..CASES {
        let mut args = strings(&["train", "--config", smoke.to_str().unwrap()]);
        args.extend(strings(&[
            "--results",
            results_arg,
            "--set",
            "train.epochs=1",
        ]));
        args.extend(strings(&[
            "--set",
            "task.train_size=256",
            "--set",
            "task.test_size=64",
        ]));
        // One field anywhere in the pool, one small: both outcomes occur.
        for values in [&COUNTS[..], &["1", "2", "4", "8"]] {
            let field = rng.pick(&fields);
            args.extend(["--set".into(), format!("{field}={}", rng.pick(values))]);
        }
        if rng.below(3) == 0 {
            args.extend([
                "--set".into(),
                format!("train.learning_rate={}", rng.pick(&FLOATS)),
            ]);
        }
        outcomes.push(assert_success_or_one_line(&args));
    }
    assert_both_outcomes("train", &outcomes);

    // offload --quick: its flags (a file's fields go through the same checks).
    let offload = repo_path("configs/offload.toml");
    let count_flags = [
        "--prefill-tokens",
        "--decode-steps",
        "--decode-tokens",
        "--slots",
        "--distance",
    ];
    let mut outcomes = Vec::new();
    for _ in 0..CASES {
        let mut args = strings(&["offload", "--quick", "--config", offload.to_str().unwrap()]);
        args.extend(strings(&["--results", results_arg]));
        // One flag from the whole pool, one from values valid for the quick shapes.
        let flag = rng.pick(&count_flags);
        let value = match flag {
            // Valid huge step counts are long runs: keep those small.
            "--decode-steps" | "--prefill-tokens" => rng.pick(&["0", "1", "2", "-1", "x"]),
            _ => rng.pick(&COUNTS),
        };
        args.extend(strings(&[flag, value]));
        let valid: Vec<_> = [
            ("--decode-tokens", "2"),
            ("--distance", "2"),
            ("--slots", "6"),
        ]
        .into_iter()
        .filter(|(other, _)| *other != flag)
        .collect();
        let (flag, value) = valid[rng.below(valid.len())];
        args.extend(strings(&[flag, value]));
        match rng.below(4) {
            0 => args.extend(strings(&["--cache-gb", rng.pick(&FLOATS)])),
            1 => args.extend(["--accuracies".into(), format!("0.5,{}", rng.pick(&FLOATS))]),
            _ => {}
        }
        outcomes.push(assert_success_or_one_line(&args));
    }
    assert_both_outcomes("offload", &outcomes);

    // sweep: list entries and counts of the [sweep] section over a one-second run config.
    let mut outcomes = Vec::new();
    for case in 0..CASES / 2 {
        let thresholds = format!("[{}]", rng.pick(&FLOATS));
        let top_k = rng.pick(&["0", "1", "2", "4294967296", "-1"]);
        let jobs = rng.pick(&["0", "1", "2", "18446744073709551615", "-1"]);
        let text = format!(
            "[sweep]\nname = \"f{case}\"\nseeds = [0]\njobs = {jobs}\ntop_k = [{top_k}]\n\
             thresholds = {thresholds}\n\n[task]\ntrain_size = 256\nvalid_size = 64\n\
             test_size = 64\n\n[model]\nd_model = 16\n\n[model.ffn]\nnum_experts = 4\n\
             expert_width = 16\n\n[train]\nepochs = 1\n"
        );
        let config = base.join(format!("sweep-{case}.toml"));
        std::fs::write(&config, text).unwrap();
        let config = config.to_str().unwrap();
        let args = strings(&["sweep", "--config", config, "--results", results_arg]);
        outcomes.push(assert_success_or_one_line(&args));
    }
    assert_both_outcomes("sweep", &outcomes);

    // predict on a two-block run: its flags (not epochs' huge values: long runs).
    let run = train_two_block_run(&base);
    let mut outcomes = Vec::new();
    for _ in 0..CASES {
        let mut args = strings(&["predict", "--run", run.to_str().unwrap()]);
        args.extend(strings(&["--results", results_arg, "--trace-tokens", "16"]));
        // One epoch and mostly valid rates, so that the random flag is what gets tested.
        args.extend(strings(&["--epochs", "1"]));
        let flag = rng.pick(&["--distance", "--hidden", "--batch-size", "--prefill-batch"]);
        args.extend(strings(&[flag, rng.pick(&COUNTS)]));
        let lr = rng.pick(&["0.01", "0.01", "0.01", "nan", "1e308", "-1"]);
        args.extend(strings(&["--lr", lr]));
        outcomes.push(assert_success_or_one_line(&args));
    }
    assert_both_outcomes("predict", &outcomes);
    std::fs::remove_dir_all(base).unwrap();
}

/// A tiny trained run of two MoE blocks under `base`.
fn train_two_block_run(base: &Path) -> std::path::PathBuf {
    let smoke = repo_path("configs/smoke.toml");
    let output = run_bounded(&strings(&[
        "train",
        "--config",
        smoke.to_str().unwrap(),
        "--set",
        "model.num_blocks=2",
        "--set",
        "train.epochs=1",
        "--set",
        "task.train_size=256",
        "--set",
        "task.test_size=64",
        "--name",
        "two",
        "--results",
        base.join("runs").to_str().unwrap(),
    ]));
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    base.join("runs/two")
}
