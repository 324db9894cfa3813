//! Test-set evaluation: accuracy (all, easy, hard points), loss, routing and inference speed.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::data::dataloader::batcher::Batcher;
use burn::train::metric::ItemLazy;
use moe_model::{MoeAutodiffBackend, MoeBackend};

use crate::backend::{
    BackendJob, BackendKind, FloatType, check_compute_type, max_buffer_bytes, run_on,
    use_float_type,
};
use crate::classifier::Classifier;
use crate::config::{ConfigSources, RunConfig};
use crate::data::{TaskBatch, TaskBatcher, TaskDataset, TaskSplits, items};
use crate::error::ExperimentError;
use crate::host::host_usizes;
use crate::limits::{Purpose, check_memory};
use crate::model_file::load_model;
use crate::quantized_file::attach_quantized;
use crate::report::RunMetrics;
use crate::routing_metrics::{BatchPoints, LayerDecisions, RoutingReport, RoutingTally, ratio};
use crate::run_dir::{CONFIG_FILE, MODEL_FILE, RunState, git_commit, run_state};
use crate::task::chance_accuracy;

/// Everything measured on the test split.
#[derive(Clone, Debug)]
pub struct TestReport {
    /// Fraction of test points classified correctly.
    pub accuracy: f64,
    /// Accuracy on the points inside one cluster (`None` if there are none).
    pub accuracy_easy: Option<f64>,
    /// Accuracy on the points between two clusters (`None` if there are none).
    pub accuracy_hard: Option<f64>,
    /// Mean cross-entropy.
    pub loss: f64,
    /// Routing statistics (`None` for a dense model).
    pub routing: Option<RoutingReport>,
    /// Test points classified per second (forward pass and reading the results back).
    pub tokens_per_second: f64,
}

/// Evaluates `classifier` on `test` in batches of `batch_size`.
pub fn evaluate<B: MoeBackend>(
    classifier: &Classifier<B>,
    test: &TaskDataset,
    batch_size: usize,
    device: &B::Device,
) -> TestReport {
    let test_items = items(test);
    let batches: Vec<TaskBatch<B>> = test_items
        .chunks(batch_size)
        .map(|chunk| TaskBatcher.batch(chunk.to_vec(), device))
        .collect();
    // Warm-up: kernel compilation and autotuning are not part of inference speed.
    drop(classifier.forward_batch(batches[0].clone()).sync());

    let start = Instant::now();
    let outputs: Vec<_> = batches
        .into_iter()
        .map(|batch| classifier.forward_batch(batch).sync())
        .collect();
    let seconds = start.elapsed().as_secs_f64();

    let (mut correct, mut correct_easy, mut correct_hard, mut hard_points) = (0, 0, 0, 0);
    let mut loss_sum = 0.0;
    let mut tally = RoutingTally::default();
    for output in &outputs {
        let predictions = host_usizes(output.logits.clone().argmax(1).flatten(0, 1));
        let targets = host_usizes(output.targets.clone());
        for ((prediction, target), &hard) in predictions.iter().zip(&targets).zip(&output.hard) {
            let hit = usize::from(prediction == target);
            correct += hit;
            hard_points += usize::from(hard);
            if hard {
                correct_hard += hit;
            } else {
                correct_easy += hit;
            }
        }
        loss_sum += output.loss.clone().into_scalar() as f64 * targets.len() as f64;
        for (layer, stats) in output.routing.iter().enumerate() {
            let points = BatchPoints {
                hard: &output.hard,
                clusters: &output.clusters,
            };
            tally.add_decisions(layer, &LayerDecisions::from_stats(stats), points);
        }
    }
    let total = test_items.len();
    TestReport {
        accuracy: correct as f64 / total as f64,
        accuracy_easy: ratio(correct_easy, total - hard_points),
        accuracy_hard: ratio(correct_hard, hard_points),
        loss: loss_sum / total as f64,
        routing: tally.report().map(|report| RoutingReport {
            routing_limits: classifier.model.routing_limits(),
            ..report
        }),
        tokens_per_second: total as f64 / seconds,
    }
}

impl RunMetrics {
    /// Puts a test report together with what the run was and what its model costs.
    pub fn from_test<B: MoeBackend>(
        run: &str,
        backend: BackendKind,
        config: &RunConfig,
        classifier: &Classifier<B>,
        test: TestReport,
        chance_accuracy: f64,
        train_wall_time_s: f64,
    ) -> Self {
        let mean_k = test.routing.as_ref().map_or(1.0, |r| r.mean_k);
        let params = classifier.model.param_counts(mean_k);
        RunMetrics {
            run: run.to_string(),
            backend: backend.name().to_string(),
            git_commit: git_commit(),
            ffn: config.model.ffn.to_string(),
            test_accuracy: test.accuracy,
            accuracy_easy: test.accuracy_easy,
            accuracy_hard: test.accuracy_hard,
            chance_accuracy,
            test_loss: test.loss,
            train_wall_time_s,
            inference_tokens_per_s: test.tokens_per_second,
            params_total: params.total,
            params_active: params.active,
            flops_per_token: 2.0 * params.active,
            routing: test.routing,
        }
    }
}

/// Re-evaluates the model saved in a run directory on the test split of its task, with weights
/// and activations in `dtype`. An unfinished run, or one whose `metrics.json` or `config.toml` is
/// damaged, is refused before the backend starts.
pub fn eval_saved(
    run_path: &Path,
    backend: BackendKind,
    dtype: FloatType,
) -> Result<RunMetrics, ExperimentError> {
    if let RunState::Incomplete(reason) = run_state(run_path) {
        return Err(ExperimentError::IncompleteRun {
            path: run_path.to_path_buf(),
            reason,
        });
    }
    let saved = RunMetrics::load(run_path)?;
    let sources = ConfigSources {
        file: run_path.join(CONFIG_FILE),
        overrides: Vec::new(),
    };
    let config = sources.load()?;
    run_on(
        backend,
        SavedRun {
            path: run_path.to_path_buf(),
            backend,
            dtype,
            sources,
            config,
            train_seconds: saved.train_wall_time_s,
        },
    )
}

/// A run directory whose metrics and config have been read.
struct SavedRun {
    path: PathBuf,
    backend: BackendKind,
    dtype: FloatType,
    sources: ConfigSources,
    config: RunConfig,
    train_seconds: f64,
}

impl BackendJob for SavedRun {
    type Output = RunMetrics;

    fn run<B: MoeAutodiffBackend>(self, device: B::Device) -> Result<RunMetrics, ExperimentError> {
        if self.dtype != FloatType::F32 {
            use_float_type::<B::InnerBackend>(&device, self.dtype, self.backend)?;
        }
        let config = &self.config;
        check_memory(
            config,
            &self.sources,
            Purpose::Eval,
            max_buffer_bytes(self.backend),
        )?;
        let mut classifier = load_classifier::<B::InnerBackend>(&self.path, config, &device)?;
        attach_quantized(classifier.model.moe_experts_mut(), &self.path, &device)?;
        let splits = TaskSplits::generate(&config.task);
        let chance = chance_accuracy(&items(&splits.test), config.task.num_classes);
        let test = evaluate(
            &classifier,
            &splits.test,
            config.train.eval_batch_size,
            &device,
        );
        let name = self
            .path
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        Ok(RunMetrics::from_test(
            &name,
            self.backend,
            config,
            &classifier,
            test,
            chance,
            self.train_seconds,
        ))
    }
}

/// Loads the classifier saved in `run_path` into the model `config` describes, on `device`. A
/// missing or damaged `model.mpk`, or one whose weights do not fit the config, is an error naming
/// the file.
pub fn load_classifier<B: MoeBackend>(
    run_path: &Path,
    config: &RunConfig,
    device: &B::Device,
) -> Result<Classifier<B>, ExperimentError> {
    check_compute_type::<B>(&config.model.ffn, device)?;
    let fresh: Classifier<B> = Classifier {
        model: config
            .model
            .init(config.task.input_dim, config.task.num_classes, device),
        devices: 1,
    };
    load_model(fresh, &run_path.join(MODEL_FILE), device)
}
