//! `report` on hand-made result files: the answers quote the numbers with their sources, the
//! links climb out of `docs/`, missing results are named with their commands, and a damaged file
//! is refused by name.

use std::path::{Path, PathBuf};

use serde_json::json;

use super::*;

fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("moe-report-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write(path: &Path, value: &serde_json::Value) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, serde_json::to_string_pretty(value).unwrap()).unwrap();
}

/// A method row of `sweep.json`: `(quantity, mean, std)` stats.
fn method(name: &str, family: &str, stats: &[(&str, f64, f64)]) -> serde_json::Value {
    let stats: Vec<_> = stats
        .iter()
        .map(|(q, mean, std)| json!([q, {"mean": mean, "std": std}]))
        .collect();
    json!({"method": name, "family": family, "ffn": "", "runs": 3, "stats": stats, "on_front": false})
}

fn lm_sweep() -> serde_json::Value {
    let by_class = |k: f64| {
        json!({"by_class": [{"class": "letter", "share": 0.75, "bits_per_byte": 2.0, "mean_k": k}],
               "by_word_position": [{"class": "word-start", "share": 0.2, "bits_per_byte": 3.0, "mean_k": k + 0.2}]})
    };
    json!({
        "backend": "cuda",
        "seeds": [0, 1, 2],
        "jobs": 3,
        "missing": ["budget-1.6-s0", "budget-1.6-s1"],
        "methods": [
            method("dense-active", "dense", &[("valid_bits_per_byte", 2.10, 0.01), ("flops_per_token", 1.0e7, 0.0), ("steady_tokens_per_s", 380000.0, 1000.0)]),
            method("top2", "top_k", &[("valid_bits_per_byte", 2.05, 0.01), ("mean_k", 2.0, 0.0), ("flops_per_token", 1.0e7, 0.0), ("load_cv", 0.20, 0.02)]),
            method("budget-1.2", "budget", &[("valid_bits_per_byte", 2.09, 0.01), ("mean_k", 1.2, 0.0)]),
            method("budget-1.4", "budget", &[("valid_bits_per_byte", 2.055, 0.01), ("mean_k", 1.4, 0.01), ("fraction_k1", 0.6, 0.01), ("flops_per_token", 8.0e6, 0.0), ("steady_tokens_per_s", 342000.0, 1000.0), ("load_cv", 0.30, 0.02)]),
            method("balance-bias", "balance", &[("valid_bits_per_byte", 2.06, 0.02), ("mean_k", 1.45, 0.01), ("load_cv", 0.06, 0.01)]),
        ],
        "runs": [
            {"method": "budget-1.4", "metrics": {"valid": by_class(1.5)}},
            {"method": "budget-1.4", "metrics": {"valid": by_class(1.3)}},
            {"method": "top2", "metrics": {"valid": by_class(2.0)}},
        ],
    })
}

#[test]
fn the_answers_quote_the_numbers_with_their_files_and_name_what_is_missing() {
    let root = scratch("answers");
    let results = root.join("results");
    write(&results.join("sweep-lm-routing/sweep.json"), &lm_sweep());
    write(
        &results.join("bench-cuda-bf16/bench.json"),
        &json!({"device": "H100", "experts": [
            {"op": "layer", "case": "layer mixtral T=4096 mean-k 1.3", "time_us": [700.0, 0, 0],
             "cublas_us": {"Ok": 910.0}, "dense_total_us": {"Ok": 2800.0}, "mean_k": 1.3},
            {"op": "layer", "case": "layer mixtral T=4096 top-2", "time_us": [980.0, 0, 0],
             "cublas_us": {"Ok": 910.0}, "dense_total_us": null, "mean_k": 2.0}
        ]}),
    );
    // Generation timings kept in the study's runs: decode 3.0 and 4.0 ms for dense-active's two
    // seeds, 2.0 ms for budget-1.4's one (and a foreign file the report skips).
    let runs = results.join("sweep-lm-routing/runs");
    for (run, ttft, decode) in [
        ("dense-active-s0", 5.0, 3.0),
        ("dense-active-s1", 7.0, 4.0),
        ("budget-1.4-s0", 4.0, 2.0),
    ] {
        write(
            &runs.join(run).join("generation-cuda-f32.json"),
            &json!({"model": "m", "backend": "cuda", "dtype": "f32", "prompt_bytes": 512,
                    "max_tokens": 128, "temperature": 0.0, "ttft_ms": ttft,
                    "decode_ms_per_token": decode, "decode_steps": 127}),
        );
    }
    std::fs::write(runs.join("budget-1.4-s0/generation-notes.json"), "not json").unwrap();
    let out = root.join("docs/REPORT.md");
    let outcome = report(ReportRequest {
        roots: vec![results.clone(), root.join("docs/results")],
        out: out.clone(),
    })
    .unwrap();
    assert_eq!(outcome.read.len(), 3);
    assert!(
        outcome.missing.contains(&"just sweep"),
        "{:?}",
        outcome.missing
    );
    let text = std::fs::read_to_string(&out).unwrap();
    let sweep_file = results.join("sweep-lm-routing/sweep.json");
    // The variable-k method is the budget nearest 1.4, compared with top-2: 2.055 against 2.05,
    // +0.24%, inside the 0.01 spread.
    assert!(
        text.contains(
            "budget-1.4 (mean k 1.40, one expert for 60% of tokens) reaches validation bits per \
             byte (lower is better) 2.0550 ± 0.0100 against top2's 2.0500 ± 0.0100 (+0.2%, \
             within the seed spread)"
        ),
        "{text}"
    );
    // Bias balancing: load CV 0.06 against budget-1.4's 0.30 (-80%), quality 2.06 against top-2's
    // 2.05 (+0.5%, inside the spread).
    assert!(
        text.contains(
            "Bias balancing without an auxiliary loss (balance-bias) brings the load CV to 0.060 \
             ± 0.010 against budget-1.4's 0.300 ± 0.020 (-80.0%, more than the seed spread) at \
             validation bits per byte (lower is better) 2.0600 ± 0.0200 against top2's 2.0500 ± \
             0.0100 (+0.5%, within the seed spread)"
        ),
        "{text}"
    );
    assert!(text.contains(&format!("(source: `{}`", sweep_file.display())));
    // Layer speed: 910 / 700 = 1.30x the dense MLP with top-2's active parameters, 2800 / 700 =
    // 4.00x the one with all parameters, 980 / 700 = 1.40x top-2.
    for ratio in [
        "1.30x the speed",
        "4.00x that of",
        "1.40x faster than top-2",
    ] {
        assert!(text.contains(ratio), "{ratio} missing:\n{text}");
    }
    // 342000 / 380000 = 0.90x; 8e6 / 1e7 = 80% of top-2's FLOPs.
    assert!(text.contains("(0.90x; source:"), "{text}");
    assert!(text.contains("spends 80% of top-2's FLOPs"), "{text}");
    // Mean k by byte class, averaged over the two budget-1.4 runs: (1.5 + 1.3) / 2 = 1.400.
    assert!(text.contains("| letter | 75.0 | 2.000 | 1.400 |"), "{text}");
    assert!(
        text.contains("| word-start | 20.0 | 3.000 | 1.600 |"),
        "{text}"
    );
    assert!(
        text.contains("](../results/sweep-lm-routing/pareto.png)"),
        "{text}"
    );
    // Generation: budget-1.4 at 2.0 ms per token against dense-active's (3.0 + 4.0) / 2 = 3.5.
    assert!(
        text.contains(
            "budget-1.4 takes 4.00 ms to the first token and 2.000 ms per further token; the \
             dense model with top-2's active parameters takes 6.00 and 3.500 ms, so variable-k \
             decodes at 1.75x its speed"
        ),
        "{text}"
    );
    assert!(
        text.contains("| dense-active | cuda f32 | 2 | 512 | 6.00 ± 1.41 | 3.500 ± 0.707 | 1.00 |"),
        "{text}"
    );
    assert!(text.contains("just time-generation lm-routing"), "{text}");
    assert!(
        text.contains("`just predict sweep-lm-routing/runs/budget-1.4-s0 --backend cuda --name lm-moe-predict` writes it"),
        "{text}"
    );
    assert!(text.contains("variable-k against top-2 at decode is not measured"));
    // The study is partial (5 methods x 3 runs finished, 2 missing) and its runs shared the
    // device three at a time: both are said.
    assert!(
        text.contains("Partial: 15 of 17 runs finished; not run: budget-1.6-s0, budget-1.6-s1."),
        "{text}"
    );
    assert!(
        text.contains("trained 3 runs at a time on one device"),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn generation_timings_come_from_another_study_when_the_best_one_has_none() {
    let root = scratch("timings");
    let results = root.join("results");
    write(&results.join("sweep-lm-routing/sweep.json"), &lm_sweep());
    write(&results.join("sweep-lm-cpu/sweep.json"), &lm_sweep());
    for (run, decode) in [("dense-active-s0", 0.25), ("budget-1.4-s0", 0.3125)] {
        write(
            &results
                .join("sweep-lm-cpu/runs")
                .join(run)
                .join("generation-ndarray-f32.json"),
            &json!({"model": "m", "backend": "ndarray", "dtype": "f32", "prompt_bytes": 128,
                    "max_tokens": 64, "temperature": 0.0, "ttft_ms": 3.0,
                    "decode_ms_per_token": decode, "decode_steps": 63}),
        );
    }
    let out = root.join("REPORT.md");
    let outcome = report(ReportRequest {
        roots: vec![results.clone()],
        out: out.clone(),
    })
    .unwrap();
    let text = std::fs::read_to_string(&out).unwrap();
    // The quality table is the H100 study's; the timings are the CPU study's, named as such:
    // 0.25 / 0.3125 = 0.80x.
    assert!(
        outcome
            .read
            .contains(&results.join("sweep-lm-routing/sweep.json"))
    );
    assert!(
        outcome.read.contains(&results.join("sweep-lm-cpu/runs")),
        "{:?}",
        outcome.read
    );
    assert!(text.contains("decodes at 0.80x its speed"), "{text}");
    assert!(text.contains("`just time-generation lm-cpu`"), "{text}");
    assert!(!text.contains("Generation was not timed"), "{text}");
    // The CPU-sized study gets its own section after the one the answers use.
    let cpu = text
        .find("## The language model at the CPU size")
        .expect("CPU section");
    assert!(text[..cpu].contains("sweep-lm-routing/sweep.json"));
    assert!(text[cpu..].contains("sweep-lm-cpu/sweep.json"));
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn committed_copies_are_read_when_results_lack_them_and_damage_is_refused() {
    let root = scratch("copies");
    let committed = root.join("docs/results");
    write(&committed.join("sweep-lm-cpu/sweep.json"), &lm_sweep());
    let request = || ReportRequest {
        roots: vec![root.join("results"), committed.clone()],
        out: root.join("docs/REPORT.md"),
    };
    let outcome = report(request()).unwrap();
    assert_eq!(outcome.read, [committed.join("sweep-lm-cpu/sweep.json")]);
    let text = std::fs::read_to_string(root.join("docs/REPORT.md")).unwrap();
    assert!(
        text.contains("](results/sweep-lm-cpu/pareto.png)"),
        "{text}"
    );
    assert!(text.contains("not the H100-sized one"), "{text}");
    assert!(text.contains("Generation was not timed"), "{text}");

    std::fs::write(committed.join("sweep-lm-cpu/sweep.json"), "{ cut short").unwrap();
    let error = report(request()).err().unwrap().to_string();
    assert!(error.contains("sweep-lm-cpu/sweep.json"), "{error}");
    // The earlier report is kept.
    assert_eq!(
        std::fs::read_to_string(root.join("docs/REPORT.md")).unwrap(),
        text
    );
    let _ = std::fs::remove_dir_all(&root);
}
