//! Training a configured model with `burn-train`, then evaluating it on the test split; the run
//! is written through [`RunDir`], so it appears under its name only once complete.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::data::dataloader::DataLoaderBuilder;
use burn::optim::AdamConfig;
use burn::train::metric::{AccuracyMetric, LossMetric};
use burn::train::{Interrupter, Learner, SupervisedTraining};
use moe_model::{FfnConfig, MoeAutodiffBackend};

use crate::backend::{
    BackendJob, BackendKind, MetricsBackend, check_compute_type, max_buffer_bytes, run_on,
};
use crate::classifier::Classifier;
use crate::config::{ConfigSources, RunConfig};
use crate::data::{TaskBatcher, TaskDataset, TaskSplits, items};
use crate::data_parallel::{multi_device, training_devices};
use crate::error::{ExperimentError, catch_panic};
use crate::eval::evaluate;
use crate::interrupt::StopOnSignal;
use crate::learner_metrics::{RoutingMetric, RoutingStatistic};
use crate::limits::{MemoryEstimate, Purpose, bytes, check_disk, check_memory};
use crate::model_file::save_model;
use crate::progress::PlainTextProgress;
use crate::report::RunMetrics;
use crate::run_dir::{
    CONFIG_FILE, DirKind, LEARNER_DIR, MODEL_FILE, RunDir, RunName, check_replaceable,
};
use crate::task::chance_accuracy;

/// One training run: what to train, where to write, on which backend (`train`'s flags).
#[derive(clap::Args)]
pub struct TrainRequest {
    #[command(flatten)]
    pub sources: ConfigSources,
    /// Directory holding the run directories.
    #[arg(long = "results", default_value = "results")]
    pub results_root: PathBuf,
    /// Run name: one directory name of letters, digits and . _ - + = (default: the config
    /// file's name, with -2, -3, ... if taken).
    #[arg(long)]
    pub name: Option<String>,
    /// Replace results/<name> if it exists, once the new run is complete.
    #[arg(long)]
    pub overwrite: bool,
    /// Backend to train on.
    #[arg(long, value_enum, default_value_t)]
    pub backend: BackendKind,
}

/// Checks the run name and the config, then trains, evaluates on the test split and writes
/// `config.toml`, `model.mpk` and `metrics.json` into `results/<run>/`, which appears once the
/// run is complete. Nothing is written before the backend is known to work and the sizes fit.
pub fn train(request: TrainRequest) -> Result<RunMetrics, ExperimentError> {
    let name = run_name(&request)?;
    let config = request.sources.load()?;
    if request.name.is_some() && request.overwrite {
        // Refused before the backend starts; the claim checks again.
        check_replaceable(&request.results_root.join(name.as_str()), DirKind::Run)?;
    }
    run_on(
        request.backend,
        Training {
            request,
            name,
            config,
        },
    )
}

/// The run name asked for with `--name`, else the config file's name.
pub fn run_name(request: &TrainRequest) -> Result<RunName, ExperimentError> {
    match &request.name {
        Some(name) => RunName::parse(name).map_err(|reason| ExperimentError::BadRunName {
            name: format!("--name {name:?}"),
            reason,
        }),
        None => default_name(&request.sources),
    }
}

/// The run name taken from the config file's name (`configs/moe.toml` -> `moe`).
fn default_name(sources: &ConfigSources) -> Result<RunName, ExperimentError> {
    let stem = sources
        .file
        .file_stem()
        .map_or_else(String::new, |s| s.to_string_lossy().into_owned());
    RunName::parse(&stem).map_err(|reason| ExperimentError::BadRunName {
        name: format!("the config file's name {stem:?}"),
        reason,
    })
}

/// A checked [`TrainRequest`].
struct Training {
    request: TrainRequest,
    name: RunName,
    config: RunConfig,
}

impl BackendJob for Training {
    type Output = RunMetrics;

    fn run<B: MoeAutodiffBackend>(self, device: B::Device) -> Result<RunMetrics, ExperimentError> {
        let Training {
            request,
            name,
            config,
        } = self;
        let backend = request.backend;
        check_compute_type::<B>(&config.model.ffn, &device)?;
        let devices =
            training_devices::<B>(backend, &device, config.train.devices, &request.sources)?;
        check_memory(
            &config,
            &request.sources,
            Purpose::Train,
            max_buffer_bytes(backend),
        )?;
        check_disk(&request.results_root, &config)?;
        let run_dir = match request.name {
            Some(_) => RunDir::claim(
                &request.results_root,
                &name,
                DirKind::Run,
                request.overwrite,
            )?,
            None => RunDir::claim_next_free(&request.results_root, &name, DirKind::Run)?,
        };
        let interrupter = Interrupter::new();
        let left_behind = format!(
            "{} is left behind (compare and eval skip it)",
            run_dir.staging().display()
        );
        let stop = StopOnSignal::install(interrupter.clone(), left_behind)
            .map_err(ExperimentError::io("SIGINT/SIGTERM handler"))?;
        let interrupted = |stop: &StopOnSignal| match stop.cause() {
            Some(cause) => Err(ExperimentError::Interrupted {
                cause,
                left: run_dir.left_as_it_was(),
            }),
            None => Ok(()),
        };
        println!(
            "training {} on {} -> {} (model, optimizer and data: about {})",
            config.model.ffn,
            backend.name(),
            run_dir.path().display(),
            bytes(MemoryEstimate::of(&config, Purpose::Train).total)
        );
        let staging = run_dir.staging();
        let config_path = staging.join(CONFIG_FILE);
        std::fs::write(&config_path, config.to_toml()).map_err(ExperimentError::io(config_path))?;

        B::seed(&device, config.train.seed);
        let splits = TaskSplits::generate(&config.task);
        let chance = chance_accuracy(&items(&splits.test), config.task.num_classes);
        let classifier = Classifier {
            model: config
                .model
                .init::<B>(config.task.input_dim, config.task.num_classes, &device),
            devices: devices.len(),
        };

        let started = Instant::now();
        // burn-train panics on some I/O failures (its file logger on a full disk): one line, and
        // the staging directory is removed.
        let trained = catch_panic(|| {
            fit(
                classifier,
                splits.train,
                splits.valid,
                &config,
                devices,
                &staging.join(LEARNER_DIR),
                interrupter,
            )
        })
        .map_err(|reason| ExperimentError::TrainingFailed {
            reason,
            left: run_dir.left_as_it_was(),
        })?;
        let train_seconds = started.elapsed().as_secs_f64();
        interrupted(&stop)?;

        let model_path = staging.join(MODEL_FILE);
        save_model(trained.clone(), &model_path)?;
        let test = evaluate(
            &trained,
            &splits.test,
            config.train.eval_batch_size,
            &device,
        );
        let metrics = RunMetrics::from_test(
            run_dir.name(),
            backend,
            &config,
            &trained,
            test,
            chance,
            train_seconds,
        );
        metrics.save(staging)?;
        interrupted(&stop)?;
        run_dir.commit()?;
        Ok(metrics)
    }
}

/// Trains `classifier` with burn-train on `train` for the configured epochs, validating on
/// `valid` after each, and returns the trained model. Several `devices`: data parallel, each
/// device taking an equal share of every batch (`crate::data_parallel`); the learner's files
/// go to `learner_dir`.
pub fn fit<B: MoeAutodiffBackend>(
    classifier: Classifier<B>,
    train: TaskDataset,
    valid: TaskDataset,
    config: &RunConfig,
    devices: Vec<B::Device>,
    learner_dir: &Path,
    interrupter: Interrupter,
) -> Classifier<B::InnerBackend> {
    let device = devices[0].clone();
    let train_loader = DataLoaderBuilder::<B, _, _>::new(TaskBatcher)
        .batch_size(config.train.batch_size / devices.len())
        .shuffle(config.train.seed)
        .set_device(device.clone())
        .build(train);
    let valid_loader = DataLoaderBuilder::<B::InnerBackend, _, _>::new(TaskBatcher)
        .batch_size(config.train.eval_batch_size)
        .set_device(device)
        .build(valid);
    let mut training = SupervisedTraining::new(learner_dir, train_loader, valid_loader)
        .metrics((
            AccuracyMetric::<MetricsBackend>::new(),
            LossMetric::<MetricsBackend>::new(),
        ))
        .num_epochs(config.train.epochs)
        .with_interrupter(interrupter)
        .with_application_logger(None);
    if devices.len() > 1 {
        training = training.with_training_strategy(multi_device::<B>(devices).into());
    }
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
    training.launch(learner).model
}
