//! End-to-end tests that `sweep`, `predict`, `offload`, `eval` and `bench` keep what they do not
//! own: the five ways they used to lose data (each now refused or harmless, files byte for byte
//! unchanged), a killed sweep's child, and one bad setting of each kind per command, refused in
//! one line with nothing left behind.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::{BINARY, assert_clean_failure, experiments, repo_path, scratch_dir, snapshot};

/// A one-method, one-seed sweep named `name` whose run trains in about a second (`epochs` more
/// for a longer one), at learning rate `lr`.
fn sweep_config(name: &str, lr: &str, epochs: usize, train_size: usize) -> String {
    format!(
        "[sweep]\nname = \"{name}\"\nseeds = [0]\ntop_k = [1]\n\n\
         [task]\nnum_clusters = 4\ntrain_size = {train_size}\nvalid_size = 64\ntest_size = 64\n\n\
         [model]\nd_model = 16\nnum_blocks = 1\n\n\
         [model.ffn]\nnum_experts = 4\nexpert_width = 16\n\n\
         [train]\nepochs = {epochs}\nbatch_size = 64\nlearning_rate = {lr}\neval_batch_size = 64\n"
    )
}

fn write(path: &Path, text: &str) -> PathBuf {
    std::fs::write(path, text).unwrap();
    path.to_path_buf()
}

fn sweep(config: &Path, results: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "sweep",
        "--config",
        config.to_str().unwrap(),
        "--results",
        results.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    experiments(&args)
}

fn assert_success(output: &Output) {
    assert!(
        output.status.success(),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A made-up training run (config of a 2-block MoE, metrics, no marker: written before markers
/// existed), enough for `predict` to get as far as its output directory.
fn fake_run(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let smoke = std::fs::read_to_string(repo_path("configs/smoke.toml")).unwrap();
    std::fs::write(
        dir.join("config.toml"),
        smoke.replace("num_blocks = 1", "num_blocks = 2"),
    )
    .unwrap();
    std::fs::write(dir.join("metrics.json"), "{\"run\": \"deep\"}").unwrap();
    std::fs::write(dir.join("model.mpk"), b"weights").unwrap();
}

#[test]
fn a_sweep_rerun_from_its_own_record_or_an_edited_config_keeps_the_record() {
    let base = scratch_dir("sweep-record");
    let results = base.join("results");
    let config = write(&base.join("t.toml"), &sweep_config("t", "0.005", 1, 256));
    assert_success(&sweep(&config, &results, &[]));
    let record = results.join("sweep-t/sweep.toml");
    let recorded = std::fs::read(&record).unwrap();
    assert_eq!(recorded, std::fs::read(&config).unwrap());

    // The recorded config as --config: resumed, and with --fresh started over; kept either way.
    let resumed = sweep(&record, &results, &[]);
    assert_success(&resumed);
    assert!(String::from_utf8_lossy(&resumed.stdout).contains("resuming: 1 of 1 runs"));
    assert_eq!(std::fs::read(&record).unwrap(), recorded);
    assert_success(&sweep(&record, &results, &["--fresh"]));
    assert_eq!(std::fs::read(&record).unwrap(), recorded);

    // An edited config is refused before anything in the sweep directory changes.
    let before = snapshot(&base);
    let edited = base.join("t.toml");
    std::fs::write(&edited, sweep_config("t", "0.01", 1, 256)).unwrap();
    let before = {
        let mut before = before;
        before.insert(edited.clone(), std::fs::read(&edited).unwrap());
        before
    };
    assert_clean_failure(
        &sweep(&edited, &results, &[]),
        "was trained with another config than the sweep now plans",
    );
    assert_eq!(snapshot(&base), before, "a refused sweep changes nothing");
    std::fs::remove_dir_all(base).unwrap();
}

#[test]
fn fresh_and_overwrite_replace_only_a_directory_of_their_own_kind() {
    let base = scratch_dir("own-kind");
    let results = base.join("results");
    fake_run(&results.join("deep"));
    fake_run(&results.join("sweep-t"));
    std::fs::write(results.join("sweep-f"), "a user's file named like a sweep").unwrap();
    std::fs::write(results.join("notes"), "a user's file").unwrap();
    std::fs::create_dir_all(results.join("photos")).unwrap();
    std::fs::write(results.join("photos/cat.jpg"), "not a run").unwrap();
    std::fs::create_dir_all(base.join("outside")).unwrap();
    std::fs::write(base.join("outside/data.txt"), "outside the results").unwrap();
    let t = write(&base.join("t.toml"), &sweep_config("t", "0.005", 1, 256));
    let f = write(&base.join("f.toml"), &sweep_config("f", "0.005", 1, 256));
    let before = snapshot(&base);
    let results_arg = results.to_str().unwrap();
    let deep = results.join("deep");
    let smoke = repo_path("configs/smoke.toml");
    let train = |name: &str| {
        experiments(&[
            "train",
            "--config",
            smoke.to_str().unwrap(),
            "--name",
            name,
            "--overwrite",
            "--results",
            results_arg,
        ])
    };

    let cases: [(Output, &str); 7] = [
        (
            sweep(&t, &results, &["--fresh"]),
            "sweep-t is a training run, not a sweep directory; refusing to replace it",
        ),
        (sweep(&t, &results, &[]), "sweep-t is a training run"),
        (sweep(&f, &results, &["--fresh"]), "sweep-f is a file"),
        (
            experiments(&[
                "predict",
                "--run",
                deep.to_str().unwrap(),
                "--name",
                "deep",
                "--overwrite",
                "--results",
                results_arg,
            ]),
            "deep is a training run, not a predict result directory",
        ),
        (train("notes"), "notes is a file, not a training run"),
        (
            train("photos"),
            "photos is a directory not written by this program",
        ),
        (train("sweep-f"), "sweep-f is a file"),
    ];
    for (output, expected) in cases {
        assert_clean_failure(&output, expected);
    }
    assert_eq!(snapshot(&base), before, "refused commands change nothing");
    std::fs::remove_dir_all(base).unwrap();
}

#[test]
fn a_failed_sweep_run_is_one_line_and_keeps_what_it_could_not_replace() {
    let base = scratch_dir("sweep-child-error");
    let results = base.join("results");
    let runs = results.join("sweep-n/runs");
    std::fs::create_dir_all(&runs).unwrap();
    std::fs::write(results.join("sweep-n/.kind"), "sweep\n").unwrap();
    // A user's file where the sweep's run goes: the child refuses to replace it.
    std::fs::write(runs.join("top1-s0"), "a user's file").unwrap();
    let config = write(&base.join("n.toml"), &sweep_config("n", "0.005", 1, 256));
    let output = sweep(&config, &results, &[]);
    assert_clean_failure(&output, "sweep run `top1-s0` failed: ");
    assert_clean_failure(&output, "top1-s0 is a file, not a training run");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.matches("error:").count(), 1, "{stderr}");
    assert_eq!(
        std::fs::read_to_string(runs.join("top1-s0")).unwrap(),
        "a user's file"
    );
    std::fs::remove_dir_all(base).unwrap();
}

#[test]
fn killing_a_sweep_stops_its_child_and_the_resume_cleans_up() {
    let base = scratch_dir("sweep-kill");
    let results = base.join("results");
    let long = write(&base.join("k.toml"), &sweep_config("k", "0.005", 200, 2048));
    let mut parent = Command::new(BINARY)
        .args(["sweep", "--config", long.to_str().unwrap(), "--results"])
        .arg(&results)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let runs = results.join("sweep-k/runs");
    let staging = |runs: &Path| -> Vec<String> {
        std::fs::read_dir(runs).map_or(Vec::new(), |entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.contains(".partial-"))
                .collect()
        })
    };
    let started = Instant::now();
    while staging(&runs).is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no child started"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    parent.kill().unwrap();
    parent.wait().unwrap();
    // The child gets SIGHUP from the kernel, stops at its next batch and removes its staging.
    let killed = Instant::now();
    while !staging(&runs).is_empty() {
        assert!(
            killed.elapsed() < Duration::from_secs(60),
            "the child of a killed sweep is still training: {:?}",
            staging(&runs)
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // What a child killed outright leaves (its process is gone) is removed by the resume.
    std::fs::create_dir_all(runs.join(".top1-s0.partial-999999999")).unwrap();
    let short = write(&base.join("k.toml"), &sweep_config("k", "0.005", 1, 256));
    assert_success(&sweep(&short, &results, &[]));
    assert!(staging(&runs).is_empty(), "{:?}", staging(&runs));
    std::fs::remove_dir_all(base).unwrap();
}

#[test]
fn every_command_refuses_bad_settings_in_one_line_and_leaves_nothing() {
    let base = scratch_dir("bad-settings");
    let results = base.join("results");
    let results_arg = results.to_str().unwrap();
    let smoke = repo_path("configs/smoke.toml");
    let offload_toml = std::fs::read_to_string(repo_path("configs/offload.toml")).unwrap();
    let offload_file = |name: &str, from: &str, to: &str| {
        assert!(offload_toml.contains(from), "{from}");
        write(&base.join(name), &offload_toml.replacen(from, to, 1))
    };
    let accuracy = offload_file("accuracy.toml", "accuracy = 0.9", "accuracy = 2.0");
    let locality = offload_file("locality.toml", "locality = 0.5", "locality = nan");
    let top_k = offload_file("top-k.toml", "top_k = 2\nslots = 3", "top_k = 0\nslots = 3");
    let width = offload_file("width.toml", "expert_width = 48", "expert_width = 0");
    let default = repo_path("configs/offload.toml");
    let empty_batch = write(
        &base.join("empty-batch.json"),
        &format!(
            "{{\"num_experts\":8,\"num_blocks\":2,\"slots\":2,\"predictors\":[],\
             \"max_distance\":1,\"batches\":[{{\"blocks\":[{0},{0}]}}]}}",
            "{\"expert_ids\":[],\"predicted\":[]}"
        ),
    );
    let offload = |config: &Path, extra: &[&str]| {
        let mut args = vec![
            "offload",
            "--quick",
            "--config",
            config.to_str().unwrap(),
            "--results",
            results_arg,
        ];
        args.extend_from_slice(extra);
        experiments(&args)
    };
    let sizes = write(
        &base.join("sizes.toml"),
        &sweep_config("s", "0.005", 1, 256).replace("d_model = 16", "d_model = 4000000000"),
    );

    let cases: Vec<(Output, &str)> = vec![
        (
            experiments(&[
                "train",
                "--config",
                smoke.to_str().unwrap(),
                "--set",
                "model.ffn.shared_experts=4294967296",
                "--set",
                "model.ffn.shared_expert_width=4294967296",
                "--results",
                results_arg,
            ]),
            "model.ffn.shared_expert_width = 4294967296 is invalid",
        ),
        (offload(&accuracy, &[]), "synthetic.accuracy = 2 is invalid"),
        (
            offload(&locality, &[]),
            "synthetic.locality = NaN is invalid",
        ),
        (offload(&top_k, &[]), "top_k = 0 is invalid"),
        (offload(&width, &[]), "expert_width = 0 is invalid"),
        (
            offload(&default, &["--decode-tokens", "0"]),
            "--decode-tokens 0: decode_tokens = 0 is invalid",
        ),
        (
            offload(&default, &["--set", "run.decode_tokens=0"]),
            "--set run.decode_tokens=0: decode_tokens = 0 is invalid",
        ),
        (
            offload(&default, &["--set", "run.distanse=2"]),
            "unknown field `distanse`",
        ),
        (
            offload(&default, &["--cache-gb", "NaN"]),
            "cache_gb = NaN is invalid",
        ),
        (
            offload(&default, &["--prefill-tokens", "100000000000000"]),
            "of host memory",
        ),
        (
            offload(
                &default,
                &[
                    "--decode-steps",
                    "18446744073709551615",
                    "--decode-tokens",
                    "2",
                ],
            ),
            "of host memory",
        ),
        (
            offload(&default, &["--trace", empty_batch.to_str().unwrap()]),
            "batch 0 holds no token",
        ),
        (sweep(&sizes, &results, &[]), "model.d_model"),
        (
            experiments(&["offload", "--slots", "many"]),
            "invalid value 'many' for '--slots <SLOTS>'",
        ),
    ];
    for (output, expected) in cases {
        assert_clean_failure(&output, expected);
    }
    assert!(
        !results.exists() || std::fs::read_dir(&results).unwrap().next().is_none(),
        "a refused command leaves nothing behind"
    );
    std::fs::remove_dir_all(base).unwrap();
}

/// bf16 on wgpu (lavapipe has no bf16): refused in one line, not every row failed and exit 0.
#[cfg(feature = "wgpu")]
#[test]
fn bench_with_a_float_type_the_device_lacks_is_an_error() {
    let results = scratch_dir("bench-bf16");
    let output = experiments(&[
        "bench",
        "--backend",
        "wgpu",
        "--dtype",
        "bf16",
        "--quick",
        "--case",
        "gemm",
        "--results",
        results.to_str().unwrap(),
    ]);
    if output.status.success() {
        // A device with bf16: the rows must then be there.
        let dir = results.join("bench-wgpu-bf16");
        assert!(
            std::fs::read_to_string(dir.join("experts.csv"))
                .unwrap()
                .lines()
                .count()
                > 1
        );
    } else {
        assert_clean_failure(&output, "bf16");
        assert!(std::fs::read_dir(&results).unwrap().next().is_none());
    }
    std::fs::remove_dir_all(results).unwrap();
}
