//! End-to-end test of `predict`: on a tiny trained two-block run it writes the tables, the plot
//! and both routing traces, which parse; bad settings end with one line and exit code 2.

mod support;

use experiments::predict::{PREDICTORS, PredictionReport};
use experiments::routing_trace::RoutingTrace;
use support::{assert_clean_failure, experiments, repo_path, scratch_dir};

#[test]
fn predict_writes_tables_plot_and_traces_and_refuses_bad_settings_in_one_line() {
    let results = scratch_dir("predict");
    let results_arg = results.to_str().unwrap();
    let config = repo_path("configs/smoke.toml");
    let train = experiments(&[
        "train",
        "--config",
        config.to_str().unwrap(),
        "--set",
        "model.num_blocks=2",
        "--set",
        "train.epochs=1",
        "--name",
        "two",
        "--results",
        results_arg,
    ]);
    assert!(
        train.status.success(),
        "{}",
        String::from_utf8_lossy(&train.stderr)
    );
    let run = results.join("two");
    let run_arg = run.to_str().unwrap();

    let predict = experiments(&[
        "predict",
        "--run",
        run_arg,
        "--epochs",
        "1",
        "--trace-tokens",
        "20",
        "--prefill-batch",
        "8",
        "--results",
        results_arg,
    ]);
    let stdout = String::from_utf8_lossy(&predict.stdout);
    assert!(
        predict.status.success(),
        "{}",
        String::from_utf8_lossy(&predict.stderr)
    );
    assert!(stdout.contains("| gating | 1 |"), "{stdout}");
    let dir = results.join("two-predict");
    let report = PredictionReport::load(&dir).unwrap();
    assert_eq!(report.max_distance, 1);
    assert_eq!(report.predictors.len(), PREDICTORS.len());
    let csv = std::fs::read_to_string(dir.join("prediction.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + PREDICTORS.len() * 2);
    for file in ["prediction.png", "prediction.svg"] {
        assert!(dir.join(file).metadata().unwrap().len() > 0, "{file}");
    }
    let decode = RoutingTrace::load(&dir.join("trace-decode.json")).unwrap();
    let prefill = RoutingTrace::load(&dir.join("trace-prefill.json")).unwrap();
    assert_eq!((decode.batches.len(), prefill.batches.len()), (20, 3));
    assert_eq!((decode.num_blocks, decode.max_distance), (2, 1));

    // A second run takes the next free name; nothing is ever overwritten silently.
    let again = experiments(&[
        "predict",
        "--run",
        run_arg,
        "--epochs",
        "1",
        "--results",
        results_arg,
    ]);
    assert!(again.status.success());
    assert!(
        results
            .join("two-predict-2")
            .join("prediction.json")
            .exists()
    );

    for (args, expected) in [
        (vec!["--distance", "2"], "--distance 2: must be in 1..=1"),
        (vec!["--epochs", "0"], "--epochs 0: must be >= 1"),
        (vec!["--lr=-1"], "--lr -1: must be a finite number > 0"),
        (vec!["--name", "../x"], "is not a valid run name"),
    ] {
        let mut command = vec!["predict", "--run", run_arg, "--results", results_arg];
        command.extend(args);
        assert_clean_failure(&experiments(&command), expected);
    }
    let missing = experiments(&["predict", "--run", "no/such/run"]);
    assert_clean_failure(&missing, "--run no/such/run: not a trained run");

    // A one-block run has no later block to predict.
    let one_block = results.join("one");
    std::fs::create_dir_all(&one_block).unwrap();
    std::fs::copy(&config, one_block.join("config.toml")).unwrap();
    std::fs::write(one_block.join("metrics.json"), "{}").unwrap();
    assert_clean_failure(
        &experiments(&["predict", "--run", one_block.to_str().unwrap()]),
        "the model has one MoE block",
    );
    // Refused settings wrote nothing.
    let mut names: Vec<String> = std::fs::read_dir(&results)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["one", "two", "two-predict", "two-predict-2"]);
    std::fs::remove_dir_all(results).unwrap();
}
