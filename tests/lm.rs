//! End-to-end tests of the language model through the binary: `configs/lm-smoke.toml` trains on
//! a small generated corpus (what CI trains), is evaluated again and generates text; bad LM
//! configs end with one line and exit code 2 and leave nothing behind; the quick LM routing
//! study trains, tabulates and resumes.

mod support;

use support::corpus::write_corpus;
use support::{
    assert_clean_failure, assert_sweep_files, experiments, repo_path, scratch_dir, snapshot,
};

fn run_ok(args: &[&str]) -> String {
    let output = experiments(args);
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{args:?}\nstdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// The smoke LM trains (its loss falls), writes its run, scores again to the same bits per
/// byte, and generates bytes with timings.
#[test]
fn smoke_lm_trains_evaluates_and_generates() {
    let scratch = scratch_dir("lm-smoke");
    let corpus = scratch.join("corpus");
    write_corpus(&corpus);
    let results = scratch.join("results");
    let config = repo_path("configs/lm-smoke.toml");
    let corpus_dir = format!("corpus.dir={:?}", corpus.display().to_string());
    run_ok(&[
        "train",
        "--config",
        config.to_str().unwrap(),
        "--set",
        &corpus_dir,
        "--results",
        results.to_str().unwrap(),
    ]);
    let run = results.join("lm-smoke");
    for file in ["config.toml", "model.mpk", "metrics.json"] {
        assert!(run.join(file).is_file(), "{file} missing");
    }
    for file in ["trace-prefill.json", "trace-decode.json"] {
        let trace = experiments::routing_trace::RoutingTrace::load(&run.join(file))
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(
            trace.num_blocks, 2,
            "{file}: the smoke LM has two MoE blocks"
        );
        assert!(!trace.batches.is_empty(), "{file} has no batches");
    }
    let metrics: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("metrics.json")).unwrap()).unwrap();
    let curve = metrics["curve"].as_array().unwrap();
    let first = curve.first().unwrap()["train_bits"].as_f64().unwrap();
    let last = curve.last().unwrap()["train_bits"].as_f64().unwrap();
    assert!(last < 0.8 * first, "training loss {first} -> {last}");
    let test_bpb = metrics["test"]["bits_per_byte"].as_f64().unwrap();
    assert!(
        test_bpb > 0.5 && test_bpb < 6.0,
        "test bits per byte {test_bpb}"
    );
    let mean_k = metrics["test"]["mean_k"].as_f64().unwrap();
    assert!((1.0..=2.0).contains(&mean_k), "mean k {mean_k}");

    // The saved weights are 16-bit (Burn's compact recorder): the same bits per byte within 0.01.
    let eval = run_ok(&["eval", "--run", run.to_str().unwrap()]);
    let printed = eval
        .split("test ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|value| value.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no test bits per byte in:\n{eval}"));
    assert!(
        (printed - test_bpb).abs() < 0.01,
        "eval scored {printed}, training saved {test_bpb}"
    );

    let compared = run_ok(&["compare", "--results", results.to_str().unwrap()]);
    assert!(
        compared.contains("LM run") && compared.contains(&format!("{test_bpb:.4}")),
        "compare does not list the LM run:\n{compared}"
    );

    let generate = |prompt: &[&str]| {
        let mut args = vec!["generate", "--run", run.to_str().unwrap()];
        args.extend(prompt);
        args.extend(["--max-tokens", "24", "--seed", "3"]);
        run_ok(&args)
    };
    let generated = generate(&["--prompt", "The whale "]);
    assert!(generated.starts_with("The whale "), "{generated}");
    assert!(generated.contains("time to first token"), "{generated}");
    // The timings are kept beside the model for the report.
    let kept = std::fs::read_to_string(run.join("generation-ndarray-f32.json")).unwrap();
    let record: experiments::lm::generate::GenerationRecord = serde_json::from_str(&kept).unwrap();
    assert_eq!((record.prompt_bytes, record.max_tokens), (10, 24));
    assert!(
        record.decode_steps <= 23 && record.ttft_ms > 0.0,
        "{record:?}"
    );
    // A sample from another prompt leaves the record (the report's timings) as it is.
    let other = generate(&["--prompt", "Call me"]);
    assert!(
        other.contains("timings not kept:") && other.contains("a 10-byte prompt and 24 tokens"),
        "{other}"
    );
    assert_eq!(
        std::fs::read_to_string(run.join("generation-ndarray-f32.json")).unwrap(),
        kept
    );
    // The same prompt from a file, and the same seed: the same bytes.
    let prompt_file = results.join("prompt.txt");
    std::fs::write(&prompt_file, "The whale ").unwrap();
    let again = generate(&["--prompt-file", prompt_file.to_str().unwrap()]);
    let text = |out: &str| out.lines().next().unwrap_or_default().to_string();
    assert_eq!(
        text(&generated),
        text(&again),
        "the same seed drew other bytes"
    );

    // `predict` reads the LM's routing: block 1's experts from block 0, on the first
    // eval_windows (8) windows of 64 tokens of the test split, with traces `offload` replays.
    run_ok(&[
        "predict",
        "--run",
        run.to_str().unwrap(),
        "--epochs",
        "2",
        "--trace-tokens",
        "20",
        "--prefill-batch",
        "8",
        "--results",
        results.to_str().unwrap(),
    ]);
    let predicted = results.join("lm-smoke-predict");
    let report = experiments::predict::PredictionReport::load(&predicted).unwrap();
    assert_eq!(report.max_distance, 1);
    assert_eq!(report.model.test_points, 8 * 64);
    assert_eq!(report.model.train_points, 8 * 64);
    for predictor in &report.predictors {
        let recall = predictor.distances[0].all.recall;
        assert!(
            (0.0..=1.0).contains(&recall),
            "{}: {recall}",
            predictor.name
        );
    }
    for file in ["trace-prefill.json", "trace-decode.json"] {
        let trace = experiments::routing_trace::RoutingTrace::load(&predicted.join(file))
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(trace.num_blocks, 2, "{file}");
    }
    let _ = std::fs::remove_dir_all(&scratch);
}

/// Bad LM settings end with one line naming the field, exit code 2, and no run directory.
#[test]
fn bad_lm_configs_end_with_one_line() {
    let scratch = scratch_dir("lm-bad");
    let results = scratch.join("results");
    let config = repo_path("configs/lm-smoke.toml");
    for (setting, expected) in [
        ("model.context=0", "model.context"),
        ("model.num_heads=3", "model.num_heads"),
        ("corpus.sources=[\"sotu\",\"novels\"]", "corpus.sources"),
        ("train.steps=0", "train.steps"),
        ("train.min_learning_rate=1.0", "train.min_learning_rate"),
    ] {
        let output = experiments(&[
            "train",
            "--config",
            config.to_str().unwrap(),
            "--set",
            setting,
            "--results",
            results.to_str().unwrap(),
        ]);
        assert_clean_failure(&output, expected);
        assert!(!results.exists(), "{setting} left {}", results.display());
    }
    let missing = scratch.join("no-corpus");
    let output = experiments(&[
        "train",
        "--config",
        config.to_str().unwrap(),
        "--set",
        &format!("corpus.dir={:?}", missing.display().to_string()),
        "--results",
        results.to_str().unwrap(),
    ]);
    assert_clean_failure(&output, "just corpus");
    assert!(!results.exists());
    let output = experiments(&["generate", "--run", scratch.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2));
    let _ = std::fs::remove_dir_all(&scratch);
}

/// The language-model routing study's `--quick` sweep (`configs/sweep-lm.toml`) trains every
/// method on a generated corpus, writes its tables and plots, and a second invocation resumes
/// without training any run again.
#[test]
fn quick_lm_sweep_writes_tables_and_plots_and_resumes() {
    let scratch = scratch_dir("lm-sweep");
    let corpus = scratch.join("corpus");
    write_corpus(&corpus);
    let results = scratch.join("results");
    let config = repo_path("configs/sweep-lm.toml");
    let corpus_dir = format!("corpus.dir={:?}", corpus.display().to_string());
    let args = [
        "sweep",
        "--quick",
        "--config",
        config.to_str().unwrap(),
        "--set",
        &corpus_dir,
        "--results",
        results.to_str().unwrap(),
    ];
    let first = run_ok(&args);
    let methods = [
        "dense-active",
        "dense-total",
        "top1",
        "top2",
        "threshold-0.5",
        "budget-1.4",
    ];
    for method in methods {
        assert!(
            first.contains(&format!(" {method}-s0: valid bits per byte ")),
            "no progress line of {method}:\n{first}"
        );
    }
    let dir = results.join("sweep-lm-routing-quick");
    assert_sweep_files(&dir);
    let svg = std::fs::read_to_string(dir.join("pareto.svg")).unwrap();
    assert!(svg.contains("validation bits per byte (lower is better)") && svg.contains("top2"));

    // One row per run, then one per method, every method with its validation bits per byte.
    let csv = std::fs::read_to_string(dir.join("sweep.csv")).unwrap();
    let mut lines = csv.lines();
    assert!(lines.next().unwrap().starts_with(
        "kind,method,family,seed,runs,valid_bits_per_byte,valid_bits_per_byte_std,test_bits_per_byte,"
    ));
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    let method_rows: Vec<&Vec<&str>> = rows.iter().filter(|r| r[0] == "method").collect();
    assert_eq!(rows.len(), 2 * methods.len(), "{csv}");
    assert_eq!(
        method_rows.iter().map(|r| r[1]).collect::<Vec<_>>(),
        methods,
        "{csv}"
    );
    for row in method_rows {
        let bits_per_byte: f64 = row[5].parse().unwrap();
        assert!(bits_per_byte > 0.5 && bits_per_byte < 9.0, "{row:?}");
    }
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("sweep.json")).unwrap()).unwrap();
    let runs = json["runs"].as_array().unwrap();
    assert_eq!(runs.len(), methods.len());
    assert!(runs.iter().all(|run| run["metrics"]["workload"] == "lm"));
    let markdown = std::fs::read_to_string(dir.join("pareto.md")).unwrap();
    for expected in [
        "| budget-1.4 |",
        "Load CV per MoE block",
        "Mean k by the class",
    ] {
        assert!(
            markdown.contains(expected),
            "{expected:?} missing:\n{markdown}"
        );
    }

    // A second invocation finds every run finished, trains none and rewrites only the tables.
    let trained = snapshot(&dir.join("runs"));
    let again = run_ok(&args);
    assert!(again.contains("resuming: 6 of 6 runs"), "{again}");
    assert!(
        !again.contains("[1/6]"),
        "a run was trained again:\n{again}"
    );
    assert_eq!(snapshot(&dir.join("runs")), trained);

    // `report` answers from the quick study: its variable-k method against top-2, with the file
    // named, and names the results it did not find.
    let report = scratch.join("docs/REPORT.md");
    let printed = run_ok(&[
        "report",
        "--results",
        results.to_str().unwrap(),
        "--out",
        report.to_str().unwrap(),
    ]);
    assert!(
        printed.contains("not found: the results of `just sweep`"),
        "{printed}"
    );
    let text = std::fs::read_to_string(&report).unwrap();
    let top2 = method_value(&json, "top2");
    assert!(
        text.contains(&format!("against top2's {top2:.4} ± 0.0000")),
        "top-2's {top2:.4} not quoted:\n{text}"
    );
    assert!(text.contains(&format!(
        "`{}`, written by `just sweep --config configs/sweep-lm.toml --quick`",
        dir.join("sweep.json").display()
    )));
    assert!(
        text.contains("](../results/sweep-lm-routing-quick/pareto.png)"),
        "{text}"
    );

    // With a run gone (a study the device time ran out on), `--tables-only` trains nothing,
    // tabulates the five that finished and names the missing one.
    std::fs::remove_dir_all(dir.join("runs/top1-s0")).unwrap();
    // A run saved by an older binary, before `train.devices` existed, still belongs to the
    // sweep: its config read with the field's default is the planned one.
    let saved_config = dir.join("runs/top2-s0/config.toml");
    let old_text: String = std::fs::read_to_string(&saved_config)
        .unwrap()
        .lines()
        .filter(|line| !line.starts_with("devices ="))
        .map(|line| format!("{line}\n"))
        .collect();
    assert_ne!(old_text, std::fs::read_to_string(&saved_config).unwrap());
    std::fs::write(&saved_config, old_text).unwrap();
    let trained = snapshot(&dir.join("runs"));
    let partial = run_ok(&[&args[..], &["--tables-only"]].concat());
    assert!(
        partial.contains("5 of 6 runs finished; tabulating those (missing: top1-s0)"),
        "{partial}"
    );
    assert_eq!(snapshot(&dir.join("runs")), trained, "a run was trained");
    let markdown = std::fs::read_to_string(dir.join("pareto.md")).unwrap();
    assert!(
        markdown.starts_with("Partial: 5 of 6 runs finished; not run: top1-s0."),
        "{markdown}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("sweep.json")).unwrap()).unwrap();
    assert_eq!(json["missing"], serde_json::json!(["top1-s0"]));
    assert_eq!(json["runs"].as_array().unwrap().len(), 5);
    // A sweep with no finished run has nothing to tabulate: one line, exit code 2.
    let empty = scratch.join("empty");
    let mut empty_args = args.to_vec();
    let empty_results = empty.to_str().unwrap();
    *empty_args.last_mut().unwrap() = empty_results;
    empty_args.push("--tables-only");
    assert_clean_failure(
        &experiments(&empty_args),
        "holds no finished run of this sweep yet",
    );
    let _ = std::fs::remove_dir_all(&scratch);
}

/// The mean validation bits per byte of `method` in a `sweep.json`.
fn method_value(sweep: &serde_json::Value, method: &str) -> f64 {
    let row = sweep["methods"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["method"] == method)
        .unwrap();
    let stats = row["stats"].as_array().unwrap();
    let pair = stats
        .iter()
        .find(|p| p[0] == "valid_bits_per_byte")
        .unwrap();
    pair[1]["mean"].as_f64().unwrap()
}
