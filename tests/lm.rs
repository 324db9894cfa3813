//! End-to-end tests of the language model through the binary: `configs/lm-smoke.toml` trains on
//! a small generated corpus (what CI trains), is evaluated again and generates text; bad LM
//! configs end with one line and exit code 2 and leave nothing behind.

mod support;

use std::path::Path;

use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{RngExt, SeedableRng};
use sha2::{Digest, Sha256};
use support::{assert_clean_failure, experiments, repo_path, scratch_dir};

/// Writes a corpus laid out as `scripts/corpus` writes it: a few documents per source of
/// seeded pseudo-English sentences, with their sizes and sha256 in `manifest.tsv`.
fn write_corpus(dir: &Path) {
    let words = [
        "the", "of", "and", "to", "in", "a", "that", "he", "shall", "unto", "for", "his", "i",
        "with", "not", "all", "they", "be", "is", "him", "whale", "ship", "sea", "nation",
        "people", "congress", "lord", "king", "love", "night", "day", "upon", "great", "men",
    ];
    let mut rng = StdRng::seed_from_u64(11);
    let mut manifest =
        String::from("source\tpackage\tversion\tlicence\tcredit\tfile\tbytes\tsha256\n");
    for source in ["sotu", "shakespeare", "bible", "moby-dick"] {
        std::fs::create_dir_all(dir.join(source)).unwrap();
        for doc in 0..3 {
            let mut text = String::new();
            while text.len() < 3000 {
                let length = rng.random_range(4..12);
                let sentence: Vec<&str> = (0..length)
                    .map(|_| *words.choose(&mut rng).unwrap())
                    .collect();
                let sentence = sentence.join(" ");
                let mut chars = sentence.chars();
                let first = chars.next().unwrap().to_ascii_uppercase();
                text.push_str(&format!("{first}{}. ", chars.as_str()));
                if rng.random_range(0..5) == 0 {
                    text.push_str(&format!("{}\n", rng.random_range(1..2000)));
                }
            }
            let file = format!("{source}/doc-{doc}.txt");
            std::fs::write(dir.join(&file), &text).unwrap();
            let digest: String = Sha256::digest(text.as_bytes())
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            manifest.push_str(&format!(
                "{source}\tpkg\t1.0\tCC0-1.0\tthe tests\t{file}\t{}\t{digest}\n",
                text.len()
            ));
        }
    }
    std::fs::write(dir.join("manifest.tsv"), manifest).unwrap();
}

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

    let generate = || {
        run_ok(&[
            "generate",
            "--run",
            run.to_str().unwrap(),
            "--prompt",
            "The whale ",
            "--max-tokens",
            "24",
            "--seed",
            "3",
        ])
    };
    let generated = generate();
    assert!(generated.starts_with("The whale "), "{generated}");
    assert!(generated.contains("time to first token"), "{generated}");
    let again = generate();
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
