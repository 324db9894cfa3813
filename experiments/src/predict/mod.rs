//! `predict`: how well the experts of later blocks can be predicted from earlier ones, on a
//! trained multi-block MoE run. It fits the predictors of `moe_model::prediction` (Fate with two
//! input forms, a distilled gating head per target block and distance, the frequency baseline) on
//! the run's training split, scores them on its test split at every block distance, and writes a
//! new result directory (`results/<run>-predict`, through [`RunDir`]: it appears only once
//! complete) holding `prediction.json`, `prediction.csv`, `prediction.{png,svg}` and the routing
//! traces `trace-decode.json` and `trace-prefill.json` for the offloading runtime.

mod fit;
mod plot;
mod predictors;
mod records;
mod report;
mod scoring;
mod settings;
mod source;
#[cfg(test)]
mod tests;
pub mod trace;

use std::path::PathBuf;
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::train::Interrupter;
use moe_model::MoeAutodiffBackend;
use moe_model::prediction::{FrequencyBaseline, GatingHeadConfig, HostRouting, layer_cost};

pub use fit::{Heads, fit_heads};
pub use predictors::{FittedPredictors, PREDICTORS};
pub use records::{SplitRecords, collect};
pub use report::{
    CSV_FILE, DistanceReport, HeadTraining, JSON_FILE, LayerCost, ModelSummary, PredictionReport,
    PredictorReport, TargetScore,
};
pub use scoring::{ScoreSetup, mean_k, score_predictors};
pub use settings::{MAX_HIDDEN, PredictSettings};
pub use source::{SourceModel, Split, load_config, unit};
pub use trace::{DECODE_FILE, PREFILL_FILE, TraceSource};

use crate::backend::{BackendJob, BackendKind, max_buffer_bytes, run_on};
use crate::config::ConfigSources;
use crate::error::ExperimentError;
use crate::interrupt::StopOnSignal;
use crate::limits::Purpose;
use crate::run_dir::{
    CONFIG_FILE, DirKind, RunDir, RunName, RunState, check_replaceable, git_commit, run_state,
};
use crate::workload::WorkloadConfig;

/// One `predict` command (its flags).
#[derive(clap::Args)]
pub struct PredictRequest {
    /// The trained run, e.g. results/deep.
    #[arg(long)]
    pub run: PathBuf,
    #[command(flatten)]
    pub settings: PredictSettings,
    /// Backend to fit and score on.
    #[arg(long, value_enum, default_value_t)]
    pub backend: BackendKind,
    /// Directory holding the result directory.
    #[arg(long = "results", default_value = "results")]
    pub results_root: PathBuf,
    /// Name of the result directory (default: <run>-predict, with -2, -3, ... if taken).
    #[arg(long)]
    pub name: Option<String>,
    /// Replace results/<name> if it exists, once the new one is complete.
    #[arg(long)]
    pub overwrite: bool,
}

/// What `predict` wrote.
pub struct PredictOutcome {
    /// The result directory.
    pub dir: PathBuf,
    /// The measured numbers.
    pub report: PredictionReport,
}

/// Checks the run and the settings, fits and scores the predictors, writes the result directory.
/// Nothing is written before the run, the settings and the backend are known to be usable.
pub fn predict(request: PredictRequest) -> Result<PredictOutcome, ExperimentError> {
    let run_label = request.run.display().to_string();
    if let RunState::Incomplete(reason) = run_state(&request.run) {
        return Err(ExperimentError::IncompleteRun {
            path: request.run.clone(),
            reason,
        });
    }
    let sources = ConfigSources {
        file: request.run.join(CONFIG_FILE),
        overrides: Vec::new(),
    };
    if !sources.file.exists() {
        return Err(ExperimentError::BadSetting {
            setting: format!("--run {run_label}"),
            reason: "not a trained run (no config.toml); train one first, e.g. just train deep"
                .into(),
        });
    }
    let config = load_config(&sources)?;
    let max_distance = request
        .settings
        .check(&run_label, config.ffn(), config.num_blocks())?;
    let name = match &request.name {
        Some(name) => RunName::parse(name).map_err(|reason| ExperimentError::BadRunName {
            name: format!("--name {name:?}"),
            reason,
        })?,
        None => {
            let run = request
                .run
                .file_name()
                .map_or_else(|| "run".to_string(), |n| n.to_string_lossy().into_owned());
            RunName::parse(&format!("{run}-predict")).map_err(|reason| {
                ExperimentError::BadRunName {
                    name: format!("the run's name {run:?} with -predict"),
                    reason,
                }
            })?
        }
    };
    if request.name.is_some() && request.overwrite {
        // Refused before the backend starts; the claim checks again.
        check_replaceable(&request.results_root.join(name.as_str()), DirKind::Predict)?;
    }
    run_on(
        request.backend,
        Prediction {
            request,
            sources,
            config,
            name,
            max_distance,
        },
    )
}

/// A checked [`PredictRequest`].
struct Prediction {
    request: PredictRequest,
    sources: ConfigSources,
    config: WorkloadConfig,
    name: RunName,
    max_distance: usize,
}

impl BackendJob for Prediction {
    type Output = PredictOutcome;

    fn run<B: MoeAutodiffBackend>(
        self,
        device: B::Device,
    ) -> Result<PredictOutcome, ExperimentError> {
        let started = Instant::now();
        let Prediction {
            request,
            sources,
            config,
            name,
            max_distance,
        } = self;
        let settings = &request.settings;
        config.check_memory(&sources, Purpose::Eval, max_buffer_bytes(request.backend))?;
        let source = SourceModel::<B::InnerBackend>::load(&request.run, &config, &device)?;
        let model = source.blocks();
        let run_dir = match request.name {
            Some(_) => RunDir::claim(
                &request.results_root,
                &name,
                DirKind::Predict,
                request.overwrite,
            )?,
            None => RunDir::claim_next_free(&request.results_root, &name, DirKind::Predict)?,
        };
        let interrupter = Interrupter::new();
        let stop = StopOnSignal::install(
            interrupter,
            format!("{} is left behind", run_dir.staging().display()),
        )
        .map_err(ExperimentError::io("SIGINT/SIGTERM handler"))?;
        let interrupted = |stop: &StopOnSignal| match stop.cause() {
            Some(cause) => Err(ExperimentError::Interrupted {
                cause,
                left: run_dir.left_as_it_was(),
            }),
            None => Ok(()),
        };

        let blocks = model.num_blocks();
        let layers = model.moe_layers();
        let num_experts = layers[0].num_experts();
        let d_model = config.d_model();
        let unit = unit(config.workload());
        println!(
            "predict: {} ({blocks} blocks, {}) on {}, distances 1..={max_distance} -> {}",
            request.run.display(),
            config.ffn(),
            request.backend.name(),
            run_dir.path().display()
        );

        let step = Instant::now();
        let train = collect(&source, Split::Train, &device, true, |_, _| {});
        println!(
            "  routing and block inputs of {} training {unit} ({:.1} s)",
            train.len(),
            step.elapsed().as_secs_f64()
        );
        interrupted(&stop)?;

        let (heads, training) = fit_heads::<B>(
            &train,
            d_model,
            num_experts,
            max_distance,
            settings,
            &device,
            || stop.cause().is_some(),
        );
        interrupted(&stop)?;
        let predictors = FittedPredictors {
            heads: heads
                .into_iter()
                .map(|row| row.into_iter().map(|h| h.map(|h| h.valid())).collect())
                .collect(),
            frequency: train
                .real
                .iter()
                .map(|real| FrequencyBaseline::fit(real, num_experts))
                .collect(),
            max_distance,
        };
        let train_points = train.len();
        drop(train);

        let step = Instant::now();
        let mut predicted: Vec<Vec<Vec<HostRouting>>> =
            vec![vec![vec![HostRouting::default(); max_distance]; blocks]; PREDICTORS.len()];
        let test = collect(&source, Split::Test, &device, false, |passes, tokens| {
            let batch = predictors.predict(model, passes, tokens);
            for (all, new) in predicted.iter_mut().zip(batch) {
                for (by_target, new_by_target) in all.iter_mut().zip(new) {
                    for (slot, new_slot) in by_target.iter_mut().zip(new_by_target) {
                        slot.extend(new_slot);
                    }
                }
            }
        });
        println!(
            "  predictions for {} test {unit} ({:.1} s)",
            test.len(),
            step.elapsed().as_secs_f64()
        );
        interrupted(&stop)?;

        let mean_k = mean_k(&test);
        let layer = layer_cost(layers[0], mean_k);
        let setup = ScoreSetup {
            max_distance,
            batch_size: settings.prefill_batch,
            d_model,
            num_experts,
            hidden: settings.hidden,
            head_cost: GatingHeadConfig::new(d_model, num_experts)
                .with_hidden(settings.hidden)
                .cost(),
        };
        let report = PredictionReport {
            run: request.run.display().to_string(),
            backend: request.backend.name().to_string(),
            git_commit: git_commit(),
            settings: settings.clone(),
            max_distance,
            model: ModelSummary {
                num_blocks: blocks,
                num_experts,
                slots: test.slots,
                d_model,
                ffn: config.ffn().to_string(),
                train_points,
                test_points: test.len(),
            },
            layer: LayerCost {
                params: layer.params,
                flops_per_token: layer.flops_per_token,
                mean_k,
            },
            predictors: score_predictors(&test, &predicted, &setup),
            training,
            wall_time_s: 0.0,
        };

        let staging = run_dir.staging();
        let source = TraceSource {
            real: &test.real,
            predicted: &predicted,
            predictors: &PREDICTORS,
            num_experts,
            slots: test.slots,
            max_distance,
        };
        for (file, batch) in [(DECODE_FILE, 1), (PREFILL_FILE, settings.prefill_batch)] {
            source
                .trace(settings.trace_tokens, batch)
                .save(&staging.join(file))?;
        }
        plot::plot(&report, staging)?;
        let report = PredictionReport {
            wall_time_s: started.elapsed().as_secs_f64(),
            ..report
        };
        report.save(staging)?;
        interrupted(&stop)?;
        let dir = run_dir.commit()?;
        Ok(PredictOutcome { dir, report })
    }
}
