//! Training a byte-level language model: random windows of the training split, AdamW with warm-up
//! and cosine decay, then bits per byte on the validation and test splits. A straight loop (no
//! burn-train; data parallel over `train.devices` through [`DataParallel`]), written through
//! [`RunDir`] like the task model's runs, so the run appears under its name only once complete
//! and Ctrl-C or a kill keeps an earlier run.

use std::time::Instant;

use burn::grad_clipping::GradientClippingConfig;
use burn::module::{AutodiffModule, Module};
use burn::optim::AdamWConfig;
use burn::tensor::ElementConversion;
use burn::train::Interrupter;
use moe_model::MoeAutodiffBackend;
use moe_model::lm::Lm;
use rand::SeedableRng;
use rand::rngs::StdRng;

use crate::backend::{BackendJob, check_compute_type, max_buffer_bytes, run_on};
use crate::data_parallel::training_devices;
use crate::error::{ExperimentError, catch_panic};
use crate::interrupt::StopOnSignal;
use crate::limits::check_free_disk;
use crate::lm::config::{LmRunConfig, describe};
use crate::lm::data::TokenSplits;
use crate::lm::data_parallel::DataParallel;
use crate::lm::evaluate::score_split;
use crate::lm::memory::{LmMemory, check_lm_memory};
use crate::lm::metrics::{CurvePoint, LmMetrics};
use crate::lm::schedule::LrSchedule;
use crate::lm::trace::write_traces;
use crate::lm::windows::window_batch;
use crate::model_file::save_model;
use crate::run_dir::{
    CONFIG_FILE, DirKind, MODEL_FILE, RunDir, RunName, check_replaceable, git_commit,
};
use crate::train::{TrainRequest, run_name};

/// Checks the run name, the config and the corpus, then trains, scores the validation and test
/// splits and writes `config.toml`, `model.mpk` and `metrics.json` into `results/<run>/`, which
/// appears once the run is complete. Nothing is written before the corpus is read, the backend
/// is known to work and the sizes fit.
pub fn train_lm(request: TrainRequest) -> Result<LmMetrics, ExperimentError> {
    let name = run_name(&request)?;
    let config = LmRunConfig::load(&request.sources.file, &request.sources.overrides)?;
    let splits = TokenSplits::load(&config.corpus)?;
    if request.name.is_some() && request.overwrite {
        // Refused before the backend starts; the claim checks again.
        check_replaceable(&request.results_root.join(name.as_str()), DirKind::Run)?;
    }
    run_on(
        request.backend,
        LmTraining {
            request,
            name,
            config,
            splits,
        },
    )
}

/// A checked language-model training request.
struct LmTraining {
    request: TrainRequest,
    name: RunName,
    config: LmRunConfig,
    splits: TokenSplits,
}

impl BackendJob for LmTraining {
    type Output = LmMetrics;

    fn run<B: MoeAutodiffBackend>(self, device: B::Device) -> Result<LmMetrics, ExperimentError> {
        let LmTraining {
            request,
            name,
            config,
            splits,
        } = self;
        let backend = request.backend;
        check_compute_type::<B>(&config.model.ffn, &device)?;
        let devices =
            training_devices::<B>(backend, &device, config.train.devices, &request.sources)?;
        check_lm_memory(&config, &request.sources, max_buffer_bytes(backend))?;
        // The model file, written twice over by the recorder's buffer at most, and the traces.
        check_free_disk(
            &request.results_root,
            2.0 * LmMemory::of(&config).weights + 1e7,
        )?;
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
        let train = &config.train;
        let context = config.model.context;
        println!(
            "training a byte-level LM ({}) on {} -> {}: {} steps of {} tokens, {:.1} MB of training text",
            describe(&config.model),
            backend.name(),
            run_dir.path().display(),
            train.steps,
            config.tokens_per_step(),
            splits.train.len() as f64 / 1e6
        );
        let staging = run_dir.staging();
        let config_path = staging.join(CONFIG_FILE);
        std::fs::write(&config_path, config.to_toml()).map_err(ExperimentError::io(config_path))?;

        B::seed(&device, train.seed);
        // Forked: every parameter drawn now, in module order, so the weights a seed gives do not
        // depend on `train.devices` (Burn draws a lazily initialised parameter when first read,
        // which on one device is the first forward's order).
        let model = config.model.init::<B>(&device).fork(&device);
        let mut optimizer = AdamWConfig::new()
            .with_weight_decay(train.weight_decay as f32)
            .with_grad_clipping(
                (train.grad_clip > 0.0)
                    .then_some(GradientClippingConfig::Norm(train.grad_clip as f32)),
            )
            .init();
        let schedule = LrSchedule {
            peak: train.learning_rate,
            floor: train.min_learning_rate,
            warmup_steps: train.warmup_steps,
            total_steps: train.steps,
        };
        let mut rng = StdRng::seed_from_u64(train.seed);
        let mut curve = Vec::new();
        let mut train_seconds = 0.0;
        // Training time at the last progress line and at the half-way step: the progress line
        // shows the rate since the previous one, the metrics the second half's (kernel
        // compilation and Burn's autotuning happen in the first steps).
        let (mut seconds_at_log, mut steps_at_log) = (0.0, 0);
        let mut seconds_at_half = None;
        let mut steps_done = 0;
        let estimate_tokens = train.eval_windows * context;
        // A panic inside Burn or CubeCL (e.g. a kernel this device cannot run) becomes one line;
        // the staging directory is removed as for an interruption.
        let trained = catch_panic(|| -> Result<Lm<B>, ExperimentError> {
            let mut model = model;
            let step = DataParallel::new(&devices, context);
            while steps_done < train.steps && !interrupter.should_stop() {
                let started = Instant::now();
                let (inputs, targets) =
                    window_batch(&splits.train, context, train.batch_size, &mut rng)?;
                let n = targets.len();
                let (trained, loss) = step.step(
                    model,
                    &mut optimizer,
                    schedule.rate(steps_done),
                    &inputs,
                    &targets,
                );
                model = trained;
                steps_done += 1;
                let last = steps_done == train.steps;
                if steps_done == train.steps / 2 {
                    seconds_at_half = Some(train_seconds + started.elapsed().as_secs_f64());
                }
                let log = steps_done % train.log_interval == 0 || last;
                let estimate =
                    train.eval_interval > 0 && steps_done % train.eval_interval == 0 || last;
                if !(log || estimate) {
                    train_seconds += started.elapsed().as_secs_f64();
                    continue;
                }
                let train_bits = loss.into_scalar().elem::<f64>() / std::f64::consts::LN_2;
                train_seconds += started.elapsed().as_secs_f64();
                let valid_bits_per_byte = estimate.then(|| {
                    score_split(
                        &model.valid(),
                        &splits.valid,
                        train.eval_batch_size,
                        estimate_tokens,
                        &device,
                    )
                    .bits_per_byte
                });
                let tokens_per_s =
                    ((steps_done - steps_at_log) * n) as f64 / (train_seconds - seconds_at_log);
                (seconds_at_log, steps_at_log) = (train_seconds, steps_done);
                let valid = valid_bits_per_byte
                    .map_or(String::new(), |v| format!(", valid {v:.4} bits/byte"));
                println!(
                    "step {steps_done}/{}: train {train_bits:.4} bits/token{valid}, lr {:.2e}, {tokens_per_s:.0} tokens/s",
                    train.steps,
                    schedule.rate(steps_done - 1),
                );
                curve.push(CurvePoint {
                    step: steps_done,
                    train_bits,
                    valid_bits_per_byte,
                });
            }
            Ok(model)
        });
        let model = trained
            .map_err(|reason| ExperimentError::TrainingFailed {
                reason,
                left: run_dir.left_as_it_was(),
            })
            .and_then(|model| model)?;
        interrupted(&stop)?;

        save_model(model.clone(), &staging.join(MODEL_FILE))?;
        let inference = model.valid();
        let score = |stream: &[u16]| {
            score_split(
                &inference,
                stream,
                train.eval_batch_size,
                train.final_eval_bytes,
                &device,
            )
        };
        let valid = score(&splits.valid);
        interrupted(&stop)?;
        let test = score(&splits.test);
        write_traces(&inference, &splits.test, staging, &device)?;
        let train_tokens = steps_done * config.tokens_per_step();
        let mean_ks: Vec<f64> = test.blocks.iter().map(|b| b.mean_k).collect();
        let params = inference.param_counts(&mean_ks);
        let metrics = LmMetrics {
            workload: "lm".into(),
            run: run_dir.name().to_string(),
            backend: backend.name().to_string(),
            git_commit: git_commit(),
            model: describe(&config.model),
            sources: splits.sources.clone(),
            steps: steps_done,
            train_tokens,
            train_wall_time_s: train_seconds,
            train_tokens_per_s: train_tokens as f64 / train_seconds,
            steady_tokens_per_s: seconds_at_half.map(|half| {
                ((steps_done - train.steps / 2) * config.tokens_per_step()) as f64
                    / (train_seconds - half)
            }),
            params_total: params.total,
            params_active: params.active,
            flops_per_token: inference.flops_per_token(&mean_ks),
            valid,
            test,
            routing_limits: inference.routing_limits(),
            curve,
        };
        metrics.save(staging)?;
        interrupted(&stop)?;
        run_dir.commit()?;
        Ok(metrics)
    }
}
