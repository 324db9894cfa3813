//! End-to-end tests of `experiments offload`: the CI-sized run writes every table and plot with
//! consistent accounting, a trace file replays, and bad settings end with one line and exit
//! code 2. Behaviour only, never timings.

mod support;

use std::path::Path;

use experiments::offload::synthetic::SyntheticRouting;
use support::{assert_clean_failure, experiments, repo_path, scratch_dir};

/// The rows of `policies.csv` as (header -> value) maps.
fn csv_rows(path: &Path) -> Vec<std::collections::HashMap<String, String>> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    let header: Vec<String> = lines.next().unwrap().split(',').map(String::from).collect();
    lines
        .map(|line| {
            header
                .iter()
                .cloned()
                .zip(line.split(',').map(String::from))
                .collect()
        })
        .collect()
}

fn number(row: &std::collections::HashMap<String, String>, column: &str) -> f64 {
    row[column]
        .parse()
        .unwrap_or_else(|_| panic!("{column} = {:?}", row[column]))
}

fn run_quick(backend: &str, extra: &[&str], test: &str) -> std::path::PathBuf {
    let results = scratch_dir(test);
    let config = repo_path("configs/offload.toml");
    let mut args = vec![
        "offload",
        "--quick",
        "--backend",
        backend,
        "--config",
        config.to_str().unwrap(),
        "--results",
        results.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let output = experiments(&args);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("| policy |"), "{stdout}");
    results.join(format!("offload-{backend}-f32"))
}

/// The accounting every run must satisfy, whatever the timings.
fn check_rows(dir: &Path, shapes: &[&str], accuracies: usize) {
    let rows = csv_rows(&dir.join("policies.csv"));
    for shape in shapes {
        let of = |policy: &str, accuracy: &str| {
            rows.iter()
                .find(|r| {
                    r["shape"] == *shape && r["policy"] == policy && r["accuracy"] == accuracy
                })
                .unwrap_or_else(|| panic!("{shape}: no row {policy} {accuracy}"))
        };
        let resident = of("resident", "");
        assert_eq!(
            number(resident, "hit_rate"),
            1.0,
            "{shape}: resident always hits"
        );
        assert_eq!(
            number(resident, "bytes_copied"),
            0.0,
            "{shape}: resident copies nothing"
        );
        assert_eq!(
            number(resident, "routing_syncs"),
            0.0,
            "{shape}: resident routes on the device"
        );
        let on_demand = of("on-demand", "");
        assert_eq!(number(on_demand, "prefetch_copies"), 0.0, "{shape}");
        assert!(
            number(on_demand, "misses") > 0.0,
            "{shape}: a cold cache misses"
        );
        assert!(number(on_demand, "hit_rate") < 1.0, "{shape}");
        assert_eq!(
            number(on_demand, "speedup_decode"),
            1.0,
            "{shape}: the reference"
        );
        let oracle = of("oracle", "");
        assert_eq!(
            number(oracle, "wasted_prefetches"),
            0.0,
            "{shape}: the oracle is never wrong"
        );
        assert!(
            number(oracle, "hit_rate") > number(on_demand, "hit_rate"),
            "{shape}"
        );
        // Perfect predictions prefetch exactly the oracle's sets: same hits.
        let perfect = of("prefetch:injected", "1");
        assert_eq!(perfect["hits"], oracle["hits"], "{shape}");
        assert_eq!(perfect["wasted_prefetches"], "0", "{shape}");
        let curve = rows
            .iter()
            .filter(|r| r["shape"] == *shape && !r["accuracy"].is_empty())
            .count();
        assert_eq!(curve, accuracies, "{shape}: one row per accuracy");
        for row in rows.iter().filter(|r| r["shape"] == *shape) {
            let uses = number(row, "expert_uses");
            assert_eq!(number(row, "hits") + number(row, "misses"), uses, "{row:?}");
            let copies = number(row, "misses") + number(row, "prefetch_copies");
            let hidden = &row["hidden_share"];
            if !hidden.is_empty() {
                let share: f64 = hidden.parse().unwrap();
                assert!((0.0..=1.0).contains(&share), "{row:?}");
            }
            if row["policy"] != "resident" {
                assert!(copies > 0.0 && number(row, "bytes_copied") > 0.0, "{row:?}");
            }
        }
    }
}

#[test]
fn offload_quick_on_wgpu_writes_its_tables_and_plot() {
    let dir = run_quick("wgpu", &[], "offload-wgpu");
    for file in [
        "offload.json",
        "policies.csv",
        "offload.md",
        "settings.toml",
        "speedup_vs_accuracy.png",
        "speedup_vs_accuracy.svg",
        "trace-tiny.json",
        "trace-tiny-fine.json",
    ] {
        assert!(dir.join(file).exists(), "{file} missing");
    }
    check_rows(&dir, &["tiny", "tiny-fine"], 4);
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("offload.json")).unwrap()).unwrap();
    assert_eq!(json["backend"], "wgpu");
    assert_eq!(json["shapes"].as_array().unwrap().len(), 2);
}

#[test]
fn offload_quick_on_ndarray_honours_flags() {
    let dir = run_quick(
        "ndarray",
        &[
            "--shape",
            "tiny",
            "--slots",
            "2",
            "--accuracies",
            "0.2,1.0",
            "--policies",
            "oracle",
        ],
        "offload-ndarray",
    );
    check_rows(&dir, &["tiny"], 2);
    let settings = std::fs::read_to_string(dir.join("settings.toml")).unwrap();
    assert!(settings.contains("accuracies = [0.2, 1.0]"), "{settings}");
    let rows = csv_rows(&dir.join("policies.csv"));
    assert!(
        rows.iter()
            .all(|r| r["slots"] == "2" || r["policy"] == "resident")
    );
}

#[test]
fn offload_replays_a_trace_file_with_its_predictors() {
    let results = scratch_dir("offload-trace");
    let mut trace = SyntheticRouting {
        blocks: 3,
        num_experts: 8,
        top_k: 2,
        single_expert_share: 0.3,
        skew: 1.0,
        locality: 0.5,
        prefill_tokens: 16,
        decode_steps: 3,
        decode_tokens: 1,
        accuracy: 0.8,
        max_distance: 1,
        seed: 7,
    }
    .generate();
    trace.predictors = vec!["fate".into()];
    let path = results.join("trace.json");
    trace.save(&path).unwrap();
    let config = repo_path("configs/offload.toml");
    let output = experiments(&[
        "offload",
        "--quick",
        "--backend",
        "ndarray",
        "--config",
        config.to_str().unwrap(),
        "--results",
        results.to_str().unwrap(),
        "--trace",
        path.to_str().unwrap(),
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let dir = results.join("offload-ndarray-f32");
    let rows = csv_rows(&dir.join("policies.csv"));
    assert!(
        rows.iter().all(|r| r["shape"] == "tiny"),
        "only the shape with 8 experts"
    );
    assert!(rows.iter().any(|r| r["policy"] == "prefetch:fate"));
    check_rows(&dir, &["tiny"], 4);

    let mut other = trace.clone();
    other.num_experts = 5;
    for batch in &mut other.batches {
        for block in &mut batch.blocks {
            for token in &mut block.expert_ids {
                token.iter_mut().for_each(|e| *e = (*e).min(4));
            }
            block.predicted = vec![vec![vec![]]];
        }
    }
    other.save(&path).unwrap();
    let output = experiments(&[
        "offload",
        "--quick",
        "--config",
        config.to_str().unwrap(),
        "--results",
        results.to_str().unwrap(),
        "--trace",
        path.to_str().unwrap(),
    ]);
    assert_clean_failure(&output, "the trace has 5 experts per block");
}

#[test]
fn offload_refuses_bad_settings_in_one_line() {
    let results = scratch_dir("offload-bad");
    let config = repo_path("configs/offload.toml");
    let base = [
        "offload",
        "--quick",
        "--config",
        config.to_str().unwrap(),
        "--results",
        results.to_str().unwrap(),
    ];
    let cases: [(&[&str], &str); 6] = [
        (
            &["--slots", "1"],
            "--slots 1: slots of shape tiny = 1 is invalid: the cache must hold one block's top-k",
        ),
        (&["--slots", "9"], "2..=8"),
        (
            &["--policies", "resident,lru"],
            "unknown offload policy `lru`",
        ),
        (
            &["--policies", "prefetch:nobody"],
            "the routing has predictors synthetic",
        ),
        (
            &["--accuracies", "0.5,1.5"],
            "every accuracy must be in 0..=1",
        ),
        (&["--distance", "4"], "distance = 4 is invalid"),
    ];
    for (flags, expected) in cases {
        let mut args = base.to_vec();
        args.extend_from_slice(flags);
        assert_clean_failure(&experiments(&args), expected);
    }
    assert!(
        std::fs::read_dir(&results).unwrap().next().is_none(),
        "a refused run leaves nothing behind"
    );
}
