//! Training a configured model with `burn-train`, then evaluating it on the test split.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Instant;

use burn::data::dataloader::DataLoaderBuilder;
use burn::module::Module;
use burn::optim::AdamConfig;
use burn::record::CompactRecorder;
use burn::train::metric::{AccuracyMetric, LossMetric};
use burn::train::{Learner, SupervisedTraining};
use moe_model::{FfnConfig, MoeAutodiffBackend};

use crate::backend::{BackendJob, BackendKind, MetricsBackend, run_on};
use crate::classifier::Classifier;
use crate::config::RunConfig;
use crate::data::{TaskBatcher, TaskSplits, items};
use crate::error::ExperimentError;
use crate::eval::evaluate;
use crate::learner_metrics::{RoutingMetric, RoutingStatistic};
use crate::progress::PlainTextProgress;
use crate::report::RunMetrics;
use crate::run_dir::{CONFIG_FILE, MODEL_FILE, RunDir};
use crate::task::chance_accuracy;

/// One training run: what to train, where to write, on which backend.
pub struct TrainRequest {
    /// The validated configuration.
    pub config: RunConfig,
    /// Directory holding the run directories (`results`).
    pub results_root: PathBuf,
    /// Run name asked for; `None` takes `default_name` (suffixed if taken).
    pub name: Option<String>,
    /// Run name when none is asked for, usually the config file's name.
    pub default_name: String,
    /// Replace an existing run directory of the requested name.
    pub overwrite: bool,
    /// Backend to train on.
    pub backend: BackendKind,
}

/// Trains, evaluates on the test split and writes `config.toml`, `model.mpk` and `metrics.json`
/// into `results/<run>/`, created once the backend is known to work.
pub fn train(request: TrainRequest) -> Result<RunMetrics, ExperimentError> {
    run_on(request.backend, request)
}

impl BackendJob for TrainRequest {
    type Output = RunMetrics;

    fn run<B: MoeAutodiffBackend>(self, device: B::Device) -> Result<RunMetrics, ExperimentError> {
        let TrainRequest {
            config, backend, ..
        } = &self;
        let run_dir = RunDir::create(
            &self.results_root,
            self.name.as_deref(),
            &self.default_name,
            self.overwrite,
        )?;
        println!(
            "training {} on {} -> {}",
            config.model.ffn,
            backend.name(),
            run_dir.path.display()
        );
        let config_path = run_dir.path.join(CONFIG_FILE);
        std::fs::write(&config_path, config.to_toml()).map_err(ExperimentError::io(config_path))?;

        B::seed(&device, config.train.seed);
        let splits = TaskSplits::generate(&config.task);
        let chance = chance_accuracy(&items(&splits.test), config.task.num_classes);
        let classifier = Classifier {
            model: config
                .model
                .init::<B>(config.task.input_dim, config.task.num_classes, &device),
        };

        let train_loader = DataLoaderBuilder::<B, _, _>::new(TaskBatcher)
            .batch_size(config.train.batch_size)
            .shuffle(config.train.seed)
            .set_device(device.clone())
            .build(splits.train);
        let valid_loader = DataLoaderBuilder::<B::InnerBackend, _, _>::new(TaskBatcher)
            .batch_size(config.train.eval_batch_size)
            .set_device(device.clone())
            .build(splits.valid);
        let mut training =
            SupervisedTraining::new(run_dir.path.join("learner"), train_loader, valid_loader)
                .metrics((
                    AccuracyMetric::<MetricsBackend>::new(),
                    LossMetric::<MetricsBackend>::new(),
                ))
                .num_epochs(config.train.epochs)
                .with_application_logger(None);
        if matches!(config.model.ffn, FfnConfig::Moe(_)) {
            for statistic in [RoutingStatistic::MeanK, RoutingStatistic::LoadCv] {
                training = training
                    .metric_train_numeric(RoutingMetric::new(statistic))
                    .metric_valid_numeric(RoutingMetric::new(statistic));
            }
        }
        if !std::io::stdout().is_terminal() {
            training = training.renderer(PlainTextProgress::new());
        }
        let learner = Learner::new(
            classifier,
            AdamConfig::new().init(),
            config.train.learning_rate,
        );

        let started = Instant::now();
        let trained = training.launch(learner).model;
        let train_seconds = started.elapsed().as_secs_f64();

        let model_path = run_dir.path.join(MODEL_FILE);
        trained
            .clone()
            .save_file(&model_path, &CompactRecorder::new())
            .map_err(|e| ExperimentError::ModelFile {
                path: model_path,
                action: "save",
                reason: e.to_string(),
            })?;
        let test = evaluate(
            &trained,
            &splits.test,
            config.train.eval_batch_size,
            &device,
        );
        let metrics = RunMetrics::from_test(
            &run_dir.name,
            *backend,
            config,
            &trained,
            test,
            chance,
            train_seconds,
        );
        metrics.save(&run_dir.path)?;
        Ok(metrics)
    }
}
