//! End-to-end tests of the `experiments` binary: every shipped config parses, a smoke run trains,
//! saves, reloads and compares, and bad input ends with one line and exit code 2.

mod support;

use experiments::lm::config::LmRunConfig;
use experiments::sweep::{SweepFile, plan};
use experiments::{RunConfig, RunMetrics};
use support::{assert_clean_failure, assert_sweep_files, experiments, repo_path, scratch_dir};

#[test]
fn every_shipped_config_parses_and_validates() {
    let mut checked = 0;
    for entry in std::fs::read_dir(repo_path("configs")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("sweep") && name.ends_with(".toml") {
            // A sweep config: its [sweep] section and every run it plans, full and (where it has
            // [sweep.quick]) quick.
            let text = std::fs::read_to_string(&path).unwrap();
            for quick in [false, true] {
                if quick && !text.contains("[sweep.quick]") {
                    continue;
                }
                let file = SweepFile::load(&path, quick).unwrap_or_else(|e| panic!("{e}"));
                plan(&file, &path).unwrap_or_else(|e| panic!("{name}: {e}"));
            }
            checked += 1;
        } else if path.file_name().is_some_and(|name| name == "offload.toml") {
            // The offloading settings: every shape's plan, full and quick.
            for quick in [false, true] {
                let flags = experiments::offload::OffloadFlags::default();
                let dtype = experiments::backend::FloatType::Bf16;
                experiments::offload::OffloadPlan::load(&path, quick, &flags, dtype)
                    .unwrap_or_else(|e| panic!("{e}"));
            }
            checked += 1;
        } else if experiments::lm::config::is_lm_config(&path) {
            LmRunConfig::load(&path, &[]).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            checked += 1;
        } else if path.extension().is_some_and(|ext| ext == "toml") {
            RunConfig::load(&path, &[]).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            checked += 1;
        }
    }
    assert!(checked >= 6, "only {checked} configs found");
}

/// The language-model studies plan 10 methods x 3 seeds of language-model runs, every run on the
/// same number of training tokens; the H100 one at the size of `configs/lm-moe.toml`.
#[test]
fn lm_sweep_configs_plan_thirty_runs_of_equal_tokens() {
    for (config, tokens, d_model) in [
        ("configs/sweep-lm.toml", 1000 * 16 * 512, 256),
        ("configs/sweep-lm-cpu.toml", 1000 * 16 * 128, 64),
    ] {
        let path = repo_path(config);
        let runs = plan(&SweepFile::load(&path, false).unwrap(), &path).unwrap();
        assert_eq!(runs.len(), 30, "{config}");
        for run in &runs {
            let experiments::workload::WorkloadConfig::Lm(lm) = &run.config else {
                panic!("{config}: {} is not a language-model run", run.name)
            };
            assert_eq!(
                lm.train.steps * lm.tokens_per_step(),
                tokens,
                "{}",
                run.name
            );
            assert_eq!(lm.model.d_model, d_model, "{}", run.name);
            assert_eq!(lm.train.eval_interval, lm.train.steps, "{}", run.name);
        }
    }
}

/// `configs/lm-moe.toml` lists the language model's defaults, and adds the mean-k budget.
#[test]
fn lm_moe_config_is_the_defaults_with_a_budget() {
    let mut lm = LmRunConfig::load(&repo_path("configs/lm-moe.toml"), &[]).unwrap();
    match &mut lm.model.ffn {
        moe_model::FfnConfig::Moe(moe) => {
            assert_eq!(moe.target_mean_k, Some(1.4));
            moe.target_mean_k = None;
        }
        moe_model::FfnConfig::Dense(_) => panic!("lm-moe.toml has a dense feed-forward"),
    }
    assert_eq!(lm.to_toml(), LmRunConfig::new().to_toml());
}

#[test]
fn moe_config_lists_exactly_the_defaults() {
    let moe = RunConfig::load(&repo_path("configs/moe.toml"), &[]).unwrap();
    assert_eq!(moe.to_toml(), RunConfig::new().to_toml());
}

#[test]
fn smoke_run_beats_chance_uses_variable_k_and_reloads() {
    let results = scratch_dir("smoke");
    let results_arg = results.to_str().unwrap();
    let config = repo_path("configs/smoke.toml");
    let train = experiments(&[
        "train",
        "--config",
        config.to_str().unwrap(),
        "--results",
        results_arg,
    ]);
    assert!(
        train.status.success(),
        "{}",
        String::from_utf8_lossy(&train.stderr)
    );

    let run = results.join("smoke");
    for file in ["config.toml", "model.mpk", "metrics.json"] {
        assert!(run.join(file).exists(), "{file} missing");
    }
    let metrics = RunMetrics::load(&run).unwrap();
    assert!(
        metrics.test_accuracy > metrics.chance_accuracy + 0.15,
        "accuracy {} vs chance {}",
        metrics.test_accuracy,
        metrics.chance_accuracy
    );
    let routing = metrics.routing.expect("an MoE run reports routing");
    assert!(
        routing.mean_k > 1.0 && routing.mean_k < 2.0,
        "mean k {}",
        routing.mean_k
    );

    // The saved model evaluates to the same accuracy.
    let eval = experiments(&["eval", "--run", run.to_str().unwrap()]);
    assert!(
        eval.status.success(),
        "{}",
        String::from_utf8_lossy(&eval.stderr)
    );
    let accuracy_line = format!("{:.1}%", 100.0 * metrics.test_accuracy);
    assert!(String::from_utf8_lossy(&eval.stdout).contains(&accuracy_line));

    // In f16 (on wgpu, where the device has it) the saved model keeps its accuracy within two
    // points; bf16 on the CPU backend is refused in one line.
    let run_arg = run.to_str().unwrap();
    let half = experiments(&[
        "eval",
        "--run",
        run_arg,
        "--backend",
        "wgpu",
        "--dtype",
        "f16",
    ]);
    let half_stderr = String::from_utf8_lossy(&half.stderr);
    if half_stderr.contains("cannot run it here") {
        println!("this wgpu device has no f16: {half_stderr}");
    } else {
        assert!(half.status.success(), "{half_stderr}");
        let stdout = String::from_utf8_lossy(&half.stdout);
        let accuracy: f64 = stdout
            .lines()
            .find_map(|line| line.trim_start().strip_prefix("test accuracy"))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|value| value.trim_end_matches('%').parse().ok())
            .expect("a test accuracy line");
        assert!(
            (accuracy - 100.0 * metrics.test_accuracy).abs() <= 2.0,
            "f16 accuracy {accuracy}% vs f32 {accuracy_line}"
        );
    }
    assert_clean_failure(
        &experiments(&[
            "eval",
            "--run",
            run_arg,
            "--backend",
            "ndarray",
            "--dtype",
            "bf16",
        ]),
        "--dtype bf16: backend `ndarray` cannot run it here",
    );

    let compare = experiments(&["compare", "--results", results_arg]);
    assert!(String::from_utf8_lossy(&compare.stdout).contains("smoke"));

    // An explicit name that exists is never overwritten without --overwrite.
    let again = experiments(&[
        "train",
        "--config",
        config.to_str().unwrap(),
        "--results",
        results_arg,
        "--name",
        "smoke",
    ]);
    assert_clean_failure(&again, "already exists");

    // A config edited after training no longer fits the saved weights.
    let config_file = run.join("config.toml");
    let edited = std::fs::read_to_string(&config_file)
        .unwrap()
        .replace("d_model = 32", "d_model = 16");
    std::fs::write(&config_file, edited).unwrap();
    assert_clean_failure(
        &experiments(&["eval", "--run", run.to_str().unwrap()]),
        "shape",
    );
    std::fs::remove_dir_all(results).unwrap();
}

#[test]
fn bad_configs_end_with_one_line_naming_the_field_and_exit_code_2() {
    let dir = scratch_dir("bad-configs");
    let base = std::fs::read_to_string(repo_path("configs/moe.toml")).unwrap();
    let threshold = "policy = \"threshold\"\ntau = 0.5";
    let cases = [
        (
            "num_experts = 8",
            "num_experts = 0",
            "model.ffn.num_experts = 0",
        ),
        (
            "num_experts = 8",
            "num_expert = 8",
            "unknown key `model.ffn.num_expert`",
        ),
        (
            threshold,
            "policy = \"top_k\"\nk = 9",
            "model.ffn.routing.k = 9",
        ),
        (
            "tau = 0.5",
            "tau = 1.5",
            "model.ffn.routing.tau = 1.5 is invalid: must be in [0, 1]",
        ),
        (
            threshold,
            "policy = \"top_p\"\np = 0.0\nmax_k = 2",
            "(0, 1]",
        ),
        (
            threshold,
            "policy = \"top_p\"\np = 0.9\nmax_k = 9",
            "max_k = 9",
        ),
        ("epochs = 10", "epochs = \"many\"", "train.epochs"),
        (
            "hard_fraction = 0.3",
            "hard_fraction = -0.1",
            "task.hard_fraction",
        ),
        (
            "kind = \"moe\"",
            "kind = \"sparse\"",
            "unknown variant `sparse`",
        ),
        ("d_model = 64", "d_model = 64 64", "line"),
    ];
    for (i, (original, replacement, expected)) in cases.iter().enumerate() {
        assert!(base.contains(original), "moe.toml lacks {original:?}");
        let path = dir.join(format!("bad-{i}.toml"));
        std::fs::write(&path, base.replacen(original, replacement, 1)).unwrap();
        let output = experiments(&[
            "train",
            "--config",
            path.to_str().unwrap(),
            "--results",
            dir.to_str().unwrap(),
        ]);
        assert_clean_failure(&output, expected);
    }
    let missing = experiments(&["train", "--config", "no/such/config.toml"]);
    assert_clean_failure(&missing, "no/such/config.toml");
    let bad_override = experiments(&[
        "train",
        "--config",
        repo_path("configs/smoke.toml").to_str().unwrap(),
        "--set",
        "train.epochs",
    ]);
    assert_clean_failure(&bad_override, "key=value");
    // Mixed precision on a device without the 16-bit type (NdArray has no bf16).
    let no_bf16 = experiments(&[
        "train",
        "--config",
        repo_path("configs/smoke.toml").to_str().unwrap(),
        "--set",
        "model.ffn.compute_type=\"bf16\"",
        "--results",
        dir.to_str().unwrap(),
    ]);
    assert_clean_failure(&no_bf16, "model.ffn.compute_type = \"bf16\": the device");
    // Nothing was written for runs that never started.
    assert!(
        std::fs::read_dir(&dir)
            .unwrap()
            .all(|e| e.unwrap().path().extension().is_some())
    );
    std::fs::remove_dir_all(dir).unwrap();
}

/// A short run of the default task (its data, model and routing; 8192 training points, two
/// epochs) on wgpu, whose MoE layers run the CubeCL kernels forward and backward, reaches the
/// accuracy of the same run (same seed) on NdArray's tensor ops within one point, with no
/// kernel falling back to tensor ops.
#[test]
fn kernel_path_training_matches_tensor_op_path_accuracy() {
    let results = scratch_dir("kernel-path-training");
    let config = repo_path("configs/moe.toml");
    let train = |backend: &str| {
        let output = experiments(&[
            "train",
            "--config",
            config.to_str().unwrap(),
            "--backend",
            backend,
            "--set",
            "train.epochs=2",
            "--set",
            "task.train_size=8192",
            "--results",
            results.to_str().unwrap(),
            "--name",
            backend,
        ]);
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(output.status.success(), "{backend}: {stderr}");
        (RunMetrics::load(&results.join(backend)).unwrap(), stderr)
    };
    let (tensor_ops, _) = train("ndarray");
    let (kernels, kernel_stderr) = train("wgpu");
    assert!(
        !kernel_stderr.contains("runs on tensor ops"),
        "a kernel fell back: {kernel_stderr}"
    );
    assert!(
        tensor_ops.test_accuracy > tensor_ops.chance_accuracy + 0.15,
        "the short run learns: {} vs chance {}",
        tensor_ops.test_accuracy,
        tensor_ops.chance_accuracy
    );
    assert!(
        (kernels.test_accuracy - tensor_ops.test_accuracy).abs() <= 0.01,
        "kernel path {:.1}% vs tensor-op path {:.1}%",
        100.0 * kernels.test_accuracy,
        100.0 * tensor_ops.test_accuracy
    );
    std::fs::remove_dir_all(results).unwrap();
}

#[test]
fn cuda_backend_either_trains_or_explains_in_one_line() {
    let results = scratch_dir("cuda");
    let output = experiments(&[
        "train",
        "--config",
        repo_path("configs/smoke.toml").to_str().unwrap(),
        "--backend",
        "cuda",
        "--results",
        results.to_str().unwrap(),
    ]);
    if !output.status.success() {
        assert_clean_failure(&output, "backend `cuda`");
        assert!(
            !results.join("smoke").exists(),
            "no results directory for a run that never started"
        );
    }
    std::fs::remove_dir_all(results).unwrap();
}

#[test]
fn quick_benchmark_writes_its_tables_on_wgpu() {
    let results = scratch_dir("bench");
    let output = experiments(&[
        "bench",
        "--backend",
        "wgpu",
        "--quick",
        "--results",
        results.to_str().unwrap(),
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let run = results.join("bench-wgpu-f32");
    let csv = std::fs::read_to_string(run.join("routing.csv")).unwrap();
    let mut lines = csv.lines();
    assert!(
        lines
            .next()
            .unwrap()
            .starts_with("op,case,wall_us,device_us")
    );
    let ops: Vec<&str> = lines.map(|line| line.split(',').next().unwrap()).collect();
    for op in ["route", "dispatch", "route+dispatch", "combine"] {
        assert_eq!(
            ops.iter().filter(|o| **o == op).count(),
            3,
            "{op} rows in {csv}"
        );
    }
    let experts = std::fs::read_to_string(run.join("experts.csv")).unwrap();
    let mut lines = experts.lines();
    assert!(
        lines
            .next()
            .unwrap()
            .starts_with("op,case,tiles,routed_rows,median_us")
    );
    let ops: Vec<&str> = lines.map(|line| line.split(',').next().unwrap()).collect();
    for (op, count) in [("gemm1", 3), ("gemm2", 3), ("layer", 2), ("train", 1)] {
        assert_eq!(
            ops.iter().filter(|o| **o == op).count(),
            count,
            "{op} rows in {experts}"
        );
    }
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("bench.json")).unwrap()).unwrap();
    assert_eq!(json["dtype"], "f32");
    assert_eq!(json["experts"].as_array().unwrap().len(), 9);
    for bandwidth in ["copy_bandwidth_gb_s", "read_bandwidth_gb_s"] {
        let measured = json[bandwidth].as_f64().unwrap_or(0.0);
        assert!(measured > 0.0, "{bandwidth}: {}", json[bandwidth]);
    }
    assert_eq!(json["floor_bandwidth"], "read_bandwidth_gb_s");
    assert_eq!(json["l2_flush_bytes"], 4 << 20);
    std::fs::remove_dir_all(results).unwrap();
}

#[test]
fn bench_case_filter_that_matches_nothing_lists_the_cases() {
    let output = experiments(&["bench", "--backend", "wgpu", "--quick", "--case", "T=3 "]);
    assert_clean_failure(
        &output,
        "no benchmark case contains `T=3 `; the cases are: T=32 E=8 threshold(tau=0.5), ",
    );
}

#[test]
fn quick_sweep_writes_tables_and_plots_and_resumes() {
    let results = scratch_dir("sweep");
    let results_arg = results.to_str().unwrap();
    let config = repo_path("configs/sweep.toml");
    let args = [
        "sweep",
        "--quick",
        "--config",
        config.to_str().unwrap(),
        "--results",
        results_arg,
    ];
    let first = experiments(&args);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let dir = results.join("sweep-routing-quick");
    assert_sweep_files(&dir);
    let svg = std::fs::read_to_string(dir.join("pareto.svg")).unwrap();
    assert!(svg.contains("mean k") && svg.contains("dense-active"));

    // One row per run (9 methods x 2 seeds), then one per method with mean and std.
    let csv = std::fs::read_to_string(dir.join("sweep.csv")).unwrap();
    let mut lines = csv.lines();
    assert!(
        lines
            .next()
            .unwrap()
            .starts_with("kind,method,family,seed,runs,test_accuracy,test_accuracy_std,")
    );
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.iter().filter(|r| r[0] == "run").count(), 18, "{csv}");
    let methods: Vec<&Vec<&str>> = rows.iter().filter(|r| r[0] == "method").collect();
    assert_eq!(methods.len(), 9, "{csv}");
    for row in &methods {
        let accuracy: f64 = row[5].parse().unwrap();
        assert!(accuracy > 0.4 && row[4] == "2", "{row:?}");
    }

    // Expert choice gives every expert exactly its capacity in every test batch: no spread.
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("sweep.json")).unwrap()).unwrap();
    let runs = json["runs"].as_array().unwrap();
    let expert_choice: Vec<&serde_json::Value> = runs
        .iter()
        .filter(|r| r["family"] == "expert_choice")
        .collect();
    assert_eq!(expert_choice.len(), 2);
    for run in expert_choice {
        let cv = run["metrics"]["routing"]["load_cv"].as_f64().unwrap();
        assert!(cv < 1e-9, "expert choice load CV {cv}");
    }

    // A second invocation finds every run finished and only rewrites the tables.
    let again = experiments(&args);
    assert!(again.status.success());
    assert!(String::from_utf8_lossy(&again.stdout).contains("resuming: 18 of 18 runs"));
    std::fs::remove_dir_all(results).unwrap();
}

#[test]
fn bad_sweep_configs_end_with_one_line_naming_the_field_and_exit_code_2() {
    let dir = scratch_dir("bad-sweeps");
    let base = std::fs::read_to_string(repo_path("configs/sweep.toml")).unwrap();
    let cases = [
        (
            "thresholds = [0.3,",
            "thresholds = [1.3,",
            "sweep.thresholds = 1.3",
        ),
        (
            "top_k = [1, 2]",
            "top_k = [1, 12]",
            "sweep.top_k = 12 is invalid",
        ),
        (
            "top_k = [1, 2]",
            "top_kk = [1, 2]",
            "unknown field `top_kk`",
        ),
        ("seeds = [0, 1, 2]", "seeds = []", "sweep.seeds"),
        (
            "target_mean_k = [1.2,",
            "target_mean_k = [2.2,",
            "sweep.target_mean_k = 2.2",
        ),
        (
            "[train]\nepochs = 5",
            "[train]\nepoch = 5",
            "unknown key `train.epoch`",
        ),
        (
            "[sweep]\nname",
            "[sweeps]\nname",
            "sweep: missing field `name`",
        ),
        ("jobs = 2 ", "jobs = \"two\" ", "sweep.jobs"),
    ];
    for (i, (original, replacement, expected)) in cases.iter().enumerate() {
        assert!(base.contains(original), "sweep.toml lacks {original:?}");
        let path = dir.join(format!("bad-{i}.toml"));
        std::fs::write(&path, base.replacen(original, replacement, 1)).unwrap();
        let output = experiments(&[
            "sweep",
            "--config",
            path.to_str().unwrap(),
            "--results",
            dir.to_str().unwrap(),
        ]);
        assert_clean_failure(&output, expected);
    }
    assert_clean_failure(
        &experiments(&["sweep", "--config", "no/such/sweep.toml"]),
        "no/such/sweep.toml",
    );
    // Nothing was written for sweeps that never started.
    assert!(
        std::fs::read_dir(&dir)
            .unwrap()
            .all(|e| e.unwrap().path().extension().is_some())
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn budget_controller_meets_its_mean_k_target_on_the_default_task() {
    let results = scratch_dir("budget");
    let train = experiments(&[
        "train",
        "--config",
        repo_path("configs/moe.toml").to_str().unwrap(),
        "--set",
        "model.ffn.target_mean_k=1.3",
        "--set",
        "train.epochs=2",
        "--results",
        results.to_str().unwrap(),
    ]);
    assert!(
        train.status.success(),
        "{}",
        String::from_utf8_lossy(&train.stderr)
    );
    let metrics = RunMetrics::load(&results.join("moe")).unwrap();
    let routing = metrics.routing.expect("an MoE run reports routing");
    assert!(
        (routing.mean_k - 1.3).abs() <= 0.05,
        "mean k {} for a target of 1.3",
        routing.mean_k
    );
    // The threshold it froze is stored with the model and differs from the configured 0.5.
    assert_eq!(routing.routing_limits.len(), 2);
    assert!(
        routing
            .routing_limits
            .iter()
            .all(|&tau| (tau - 0.5).abs() > 0.01)
    );
    std::fs::remove_dir_all(results).unwrap();
}

/// Data-parallel settings a run cannot take: one line, exit code 2, nothing written.
#[test]
fn bad_device_counts_are_refused() {
    let dir = scratch_dir("devices");
    let config = repo_path("configs/smoke.toml");
    for (sets, expected) in [
        (
            &["train.devices=4096", "train.batch_size=4096"][..],
            "train.devices = 4096 is invalid: must be <=",
        ),
        (&["train.devices=0"], "train.devices = 0 is invalid"),
        (
            &["train.devices=3"],
            "train.batch_size = 64 is invalid: must be a multiple of devices (3)",
        ),
    ] {
        let mut args = vec![
            "train",
            "--config",
            config.to_str().unwrap(),
            "--results",
            dir.to_str().unwrap(),
        ];
        for set in sets {
            args.extend(["--set", set]);
        }
        assert_clean_failure(&experiments(&args), expected);
    }
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        0,
        "nothing written"
    );
}
