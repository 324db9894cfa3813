//! `predict` on a small trained run of the task: the gating heads learn and beat the frequency
//! baseline, the files hold what they should; settings are checked against the run.

use std::path::{Path, PathBuf};

use super::*;
use crate::config::{ConfigSources, RunConfig};
use crate::routing_trace::RoutingTrace;
use crate::train::{TrainRequest, train};

/// A fresh directory for one test.
fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("moe-predict-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn smoke_config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/smoke.toml")
}

/// Trains the smoke config with 3 blocks into `root/deep-smoke` (a few seconds).
fn train_three_blocks(root: &Path) -> PathBuf {
    train(TrainRequest {
        sources: ConfigSources {
            file: smoke_config(),
            overrides: vec!["model.num_blocks=3".into(), "train.epochs=3".into()],
        },
        results_root: root.to_path_buf(),
        name: Some("deep-smoke".into()),
        overwrite: false,
        backend: BackendKind::Ndarray,
    })
    .unwrap_or_else(|e| panic!("{e}"));
    root.join("deep-smoke")
}

#[test]
fn gating_heads_learn_and_beat_the_frequency_baseline_on_the_task() {
    let root = scratch("task");
    let run = train_three_blocks(&root);
    let settings = PredictSettings {
        epochs: 3,
        hidden: 16,
        prefill_batch: 16,
        trace_tokens: 40,
        ..PredictSettings::default()
    };
    let outcome = predict(PredictRequest {
        run,
        settings,
        backend: BackendKind::Ndarray,
        results_root: root.clone(),
        name: None,
        overwrite: false,
    })
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(outcome.dir, root.join("deep-smoke-predict"));
    // What was written is what was returned (up to the last digit of a float in JSON).
    let report = PredictionReport::load(&outcome.dir).unwrap();
    assert_eq!(report.model, outcome.report.model);
    assert_eq!(report.max_distance, 2);

    // Three heads (block 1 from 0, block 2 from 1, block 2 from 0), each lowering its loss.
    assert_eq!(report.training.len(), 3);
    for head in &report.training {
        let losses = &head.report.losses;
        assert_eq!(losses.len(), 4);
        assert!(
            losses[3] < 0.9 * losses[0],
            "block {} j={}: {losses:?}",
            head.target_block,
            head.distance
        );
    }
    let scores = |name: &str| {
        let predictor = report.predictors.iter().find(|p| p.name == name).unwrap();
        predictor.distances.clone()
    };
    for (gating, frequency) in scores("gating").iter().zip(scores("frequency")) {
        let (g, f) = (&gating.all, &frequency.all);
        assert!(
            g.recall > f.recall + 0.1 && g.top_k_hit[0] > f.top_k_hit[0] + 0.1,
            "j={}: gating recall {:.3} top-1 {:.3}, frequency recall {:.3} top-1 {:.3}",
            gating.distance,
            g.recall,
            g.top_k_hit[0],
            f.recall,
            f.top_k_hit[0]
        );
        assert!(g.easy.is_some() && g.hard.is_some());
    }
    // Distance 1 targets blocks 1 and 2; distance 2 only block 2 (from block 0).
    let fate = scores("fate");
    assert_eq!(fate[0].targets.len(), 2);
    assert_eq!(
        (
            fate[1].targets[0].target_block,
            fate[1].targets[0].source_block
        ),
        (2, 0)
    );

    // The CSV has a row per predictor, distance and target (plus `all`).
    let csv = std::fs::read_to_string(outcome.dir.join(CSV_FILE)).unwrap();
    assert_eq!(csv.lines().count(), 1 + PREDICTORS.len() * (3 + 2));

    // Traces: 40 decode steps of one token, 3 prefill batches (16, 16, 8 tokens).
    let decode = RoutingTrace::load(&outcome.dir.join(DECODE_FILE)).unwrap();
    let prefill = RoutingTrace::load(&outcome.dir.join(PREFILL_FILE)).unwrap();
    assert_eq!(decode.batches.len(), 40);
    assert_eq!(prefill.batches.len(), 3);
    assert_eq!(prefill.batches[2].blocks[0].expert_ids.len(), 8);
    assert_eq!(decode.predictors, PREDICTORS);
    let block0 = &decode.batches[0].blocks[0];
    assert!(block0.predicted.iter().flatten().all(Vec::is_empty));
    let block2 = &prefill.batches[0].blocks[2];
    assert!(block2.predicted.iter().flatten().all(|set| !set.is_empty()));
    for name in ["prediction.png", "prediction.svg"] {
        assert!(outcome.dir.join(name).exists(), "{name}");
    }
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn settings_are_checked_against_the_run() {
    let path = smoke_config();
    let one_block = RunConfig::load(&path, &[]).unwrap();
    let four_blocks = RunConfig::load(&path, &["model.num_blocks=4".into()]).unwrap();
    let dense = RunConfig::load(
        &path.with_file_name("dense.toml"),
        &["model.num_blocks=3".into()],
    )
    .unwrap();
    let defaults = PredictSettings::default();
    let check = |settings: &PredictSettings, config: &RunConfig| {
        settings.check("results/r", &config.model.ffn, config.model.num_blocks)
    };
    assert_eq!(check(&defaults, &four_blocks).unwrap(), 3);
    let with = |f: fn(&mut PredictSettings)| {
        let mut settings = PredictSettings::default();
        f(&mut settings);
        settings
    };
    assert_eq!(
        check(&with(|s| s.max_distance = Some(2)), &four_blocks).unwrap(),
        2
    );
    let error = |settings: PredictSettings, config: &RunConfig| {
        check(&settings, config).unwrap_err().to_string()
    };
    assert_eq!(
        error(with(|s| s.max_distance = Some(4)), &four_blocks),
        "--distance 4: must be in 1..=3 (results/r has 4 MoE blocks)"
    );
    assert_eq!(
        error(with(|s| s.max_distance = Some(0)), &four_blocks),
        "--distance 0: must be in 1..=3 (results/r has 4 MoE blocks)"
    );
    assert_eq!(
        error(with(|s| s.epochs = 0), &four_blocks),
        "--epochs 0: must be >= 1"
    );
    assert!(error(with(|s| s.learning_rate = f64::NAN), &four_blocks).starts_with("--lr NaN"));
    assert!(error(defaults.clone(), &one_block).contains("the model has one MoE block"));
    assert!(error(defaults, &dense).contains("the model has dense blocks"));
}
