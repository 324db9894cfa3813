//! Command line: `train`, `eval`, `quantize`, `generate`, `compare`, `bench`, `sweep`, `predict`, `offload`
//! and `report` of the variable-k MoE experiments.
//!
//! Exit codes: 0 success, 2 an error (one line on stderr), 130 training stopped by Ctrl-C
//! (143 by SIGTERM, 129 by SIGHUP), nothing kept.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::error::ErrorKind;
use clap::{Parser, Subcommand};
use experiments::backend::FloatType;
use experiments::config::ConfigSources;
use experiments::lm::config::is_lm_config;
use experiments::lm::generate::{GenerateRequest, generate};
use experiments::lm::sample::Sampling;
use experiments::predict::{PredictRequest, PredictSettings, predict};
use experiments::quantize::{QuantizeRequest, quantize};
use experiments::sweep::{SweepRequest, sweep};
use experiments::train::{TrainRequest, train};
use experiments::{BackendKind, ExperimentError, eval, report, study};
use moe_kernels::quantized::QuantFormat;

#[derive(Parser)]
#[command(
    version,
    about = "Train, evaluate and compare variable-k MoE and dense models"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a model from a config file and write results/<run>/ (a config with a [corpus]
    /// table trains a byte-level language model).
    Train {
        /// Config file, e.g. configs/moe.toml.
        #[arg(long)]
        config: PathBuf,
        /// Backend to train on.
        #[arg(long, value_enum, default_value_t)]
        backend: BackendKind,
        /// Run name: one directory name of letters, digits and . _ - + = (default: the config
        /// file's name, with -2, -3, ... if taken).
        #[arg(long)]
        name: Option<String>,
        /// Replace results/<name> if it exists, once the new run is complete.
        #[arg(long)]
        overwrite: bool,
        /// Override one config field, e.g. --set train.epochs=3 (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
        /// Directory holding the run directories.
        #[arg(long, default_value = "results")]
        results: PathBuf,
    },
    /// Re-evaluate the saved model of a run on its test split.
    Eval {
        /// The run directory, e.g. results/moe.
        #[arg(long)]
        run: PathBuf,
        /// Backend to evaluate on.
        #[arg(long, value_enum, default_value_t)]
        backend: BackendKind,
        /// Float type of the weights and activations (bf16 and f16 need a CubeCL backend whose
        /// device has the type).
        #[arg(long, value_enum, default_value_t)]
        dtype: FloatType,
    },
    /// Quantize a trained run's experts to int8 or FP8 e4m3 (weights as bytes, f32 scales);
    /// `eval` and `generate` then serve from them (results/<run>/quantized-experts.bin).
    Quantize {
        /// The run directory, e.g. results/moe.
        #[arg(long)]
        run: PathBuf,
        /// int8 (per output channel), fp8 (e4m3, per output channel) or fp8-block (e4m3, per
        /// 128 x 128 block).
        #[arg(long, value_parser = QuantFormat::parse)]
        format: QuantFormat,
        /// Backend to load the model on (quantization runs on the host).
        #[arg(long, value_enum, default_value_t)]
        backend: BackendKind,
    },
    /// Continue a prompt with a trained language model; print the text, the time to first token
    /// and the decode latency per token.
    Generate {
        /// The run directory of a language model, e.g. results/lm-moe.
        #[arg(long)]
        run: PathBuf,
        /// Text to continue.
        #[arg(long, default_value = "", conflicts_with = "prompt_file")]
        prompt: String,
        /// A file whose text to continue (e.g. configs/prompt-512.txt, the prompt the report's
        /// generation timings use).
        #[arg(long)]
        prompt_file: Option<PathBuf>,
        /// Bytes to generate at most (generation also ends at a document boundary).
        #[arg(long, default_value_t = 200)]
        max_tokens: usize,
        /// Softmax temperature (0: always the most likely byte).
        #[arg(long, default_value_t = 0.8)]
        temperature: f64,
        /// Draw only among the k most likely bytes (0: all).
        #[arg(long, default_value_t = 40)]
        top_k: usize,
        /// Seed of the draws.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Backend to run on.
        #[arg(long, value_enum, default_value_t)]
        backend: BackendKind,
        /// Float type of the weights and activations (bf16 and f16 need a CubeCL backend whose
        /// device has the type).
        #[arg(long, value_enum, default_value_t)]
        dtype: FloatType,
    },
    /// Time the MoE kernels (routing, grouped GEMMs, the whole layer) against Burn, cuBLAS,
    /// dense MLPs and the memory floor.
    #[cfg(any(feature = "wgpu", feature = "cuda"))]
    Bench {
        /// CubeCL backend to run on (default: CUDA when a device answers, else wgpu).
        #[arg(long, value_enum)]
        backend: Option<BackendKind>,
        /// Float type of the expert rows (default: bf16 on cuda, f32 on wgpu).
        #[arg(long, value_enum)]
        dtype: Option<FloatType>,
        /// Fewer, smaller cases of every kind (CI, CPU-emulated devices).
        #[arg(long)]
        quick: bool,
        /// Only the cases whose label contains this text, e.g. `--case T=65536` or `--case layer`.
        #[arg(long)]
        case: Option<String>,
        /// Also time Burn's matmul on each grouped GEMM's FLOPs (autotunes each new shape first).
        #[arg(long)]
        burn_matmul: bool,
        /// Directory holding the run directories.
        #[arg(long, default_value = "results")]
        results: PathBuf,
    },
    /// Train every method of a sweep config with every seed; write tables and plots.
    Sweep {
        /// Sweep config file.
        #[arg(long, default_value = "configs/sweep.toml")]
        config: PathBuf,
        /// The [sweep.quick] settings: a small task, fewer methods and seeds (CI).
        #[arg(long)]
        quick: bool,
        /// Backend every run trains on.
        #[arg(long, value_enum, default_value_t)]
        backend: BackendKind,
        /// Start over instead of resuming an earlier, interrupted sweep of the same name.
        #[arg(long)]
        fresh: bool,
        /// Override one field of every run's config, after [sweep.quick]'s, e.g.
        /// --set model.ffn.compute_type="bf16" (repeatable; a resume needs the same ones).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
        /// Directory holding the sweep directory.
        #[arg(long, default_value = "results")]
        results: PathBuf,
    },
    /// Fit routing predictors on a trained multi-block MoE run and score how well they predict
    /// later blocks' experts; write results/<run>-predict/ (tables, plot, routing traces).
    Predict {
        /// The trained run, e.g. results/deep.
        #[arg(long)]
        run: PathBuf,
        /// Backend to fit and score on.
        #[arg(long, value_enum, default_value_t)]
        backend: BackendKind,
        #[command(flatten)]
        settings: PredictSettings,
        /// Name of the result directory (default: <run>-predict, with -2, -3, ... if taken).
        #[arg(long)]
        name: Option<String>,
        /// Replace results/<name> if it exists, once the new one is complete.
        #[arg(long)]
        overwrite: bool,
        /// Directory holding the result directory.
        #[arg(long, default_value = "results")]
        results: PathBuf,
    },
    /// Expert offloading: replay a routing under resident, on-demand, prefetch and oracle
    /// policies (TTFT, decode latency, copies, hit rate, hidden copy time) and the speed-up of
    /// prefetching against prediction accuracy.
    Offload {
        /// Settings file.
        #[arg(long, default_value = "configs/offload.toml")]
        config: PathBuf,
        /// Backend (cuda for the measurement; ndarray and wgpu copy without overlap).
        #[arg(long, value_enum, default_value_t)]
        backend: BackendKind,
        /// Float type of weights and activations (bf16 and f16 on cuda).
        #[arg(long, value_enum, default_value_t)]
        dtype: FloatType,
        /// The [quick] settings: small shapes, few steps (CI).
        #[arg(long)]
        quick: bool,
        #[command(flatten)]
        flags: experiments::offload::OffloadFlags,
        /// Run name (default offload-<backend>-<dtype>).
        #[arg(long)]
        name: Option<String>,
        /// On cuda: copy with tensor ops on the compute path (no overlap) instead of the copy
        /// stream; the fallback the other backends use.
        #[arg(long)]
        tensor_copies: bool,
        /// Directory holding the run directories.
        #[arg(long, default_value = "results")]
        results: PathBuf,
    },
    /// Print every run's metrics side by side.
    Compare {
        /// Directory holding the run directories.
        #[arg(long, default_value = "results")]
        results: PathBuf,
    },
    /// Write docs/REPORT.md: the project's three questions answered from the result files
    /// found (the routing studies, bench, predict, offload), each number naming its file.
    Report {
        /// Directories searched for result files, in order (repeatable).
        #[arg(long, default_values = ["results", "docs/results"])]
        results: Vec<PathBuf>,
        /// The report to write.
        #[arg(long, default_value = "docs/REPORT.md")]
        out: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // --help, --version, and the help shown for a missing subcommand.
        Err(error)
            if !error.use_stderr()
                || error.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand =>
        {
            error.exit()
        }
        Err(error) => {
            // clap's own text adds a usage paragraph; its first line names the flag and value.
            let text = error.to_string();
            eprintln!("{}", text.lines().next().unwrap_or("error: bad arguments"));
            return ExitCode::from(2);
        }
    };
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::from(error.exit_code())
        }
    }
}

fn run(command: Command) -> Result<(), ExperimentError> {
    match command {
        Command::Train {
            config,
            backend,
            name,
            overwrite,
            overrides,
            results,
        } => {
            let is_lm = is_lm_config(&config);
            let request = TrainRequest {
                sources: ConfigSources {
                    file: config,
                    overrides,
                },
                results_root: results,
                name,
                overwrite,
                backend,
            };
            let summary = match is_lm {
                true => experiments::lm::train::train_lm(request)?.summary(),
                false => train(request)?.summary(),
            };
            println!("{summary}");
        }
        Command::Eval {
            run,
            backend,
            dtype,
        } => {
            let summary = match is_lm_config(&run.join(experiments::run_dir::CONFIG_FILE)) {
                true => experiments::lm::eval::eval_lm(&run, backend, dtype)?.summary(),
                false => eval::eval_saved(&run, backend, dtype)?.summary(),
            };
            println!("{summary}");
        }
        Command::Quantize {
            run,
            format,
            backend,
        } => {
            let request = QuantizeRequest {
                run,
                format,
                backend,
            };
            println!("{}", quantize(request)?.summary());
        }
        Command::Generate {
            run,
            prompt,
            prompt_file,
            max_tokens,
            temperature,
            top_k,
            seed,
            backend,
            dtype,
        } => {
            let prompt = match prompt_file {
                Some(path) => std::fs::read_to_string(&path).map_err(ExperimentError::io(&path))?,
                None => prompt,
            };
            let generated = generate(GenerateRequest {
                run,
                prompt: prompt.clone(),
                max_tokens,
                sampling: Sampling { temperature, top_k },
                seed,
                backend,
                dtype,
            })?;
            println!(
                "{prompt}{}",
                String::from_utf8_lossy(&generated.generation.continuation)
            );
            println!("{}", generated.generation.summary(&generated.model));
            println!("timings kept in {}", generated.record.display());
        }
        #[cfg(any(feature = "wgpu", feature = "cuda"))]
        Command::Bench {
            backend,
            dtype,
            quick,
            case,
            burn_matmul,
            results,
        } => {
            let run_dir = experiments::bench::bench(experiments::bench::BenchRequest {
                backend,
                dtype,
                quick,
                case_filter: case,
                burn_matmul,
                results_root: results,
            })?;
            println!("tables written to {}", run_dir.display());
        }
        Command::Sweep {
            config,
            quick,
            backend,
            fresh,
            overrides,
            results,
        } => {
            let outcome = sweep(SweepRequest {
                config,
                quick,
                backend,
                results_root: results,
                fresh,
                overrides,
            })?;
            println!("{}", outcome.table.markdown());
            println!(
                "sweep written to {} ({:.0} s)",
                outcome.dir.display(),
                outcome.table.wall_time_s
            );
        }
        Command::Predict {
            run,
            backend,
            settings,
            name,
            overwrite,
            results,
        } => {
            let outcome = predict(PredictRequest {
                run,
                settings,
                backend,
                results_root: results,
                name,
                overwrite,
            })?;
            println!("{}", outcome.report.markdown());
            println!(
                "prediction written to {} ({:.0} s)",
                outcome.dir.display(),
                outcome.report.wall_time_s
            );
        }
        Command::Offload {
            config,
            backend,
            dtype,
            quick,
            flags,
            name,
            tensor_copies,
            results,
        } => {
            let dir = experiments::offload::offload(experiments::offload::OffloadRequest {
                config,
                backend,
                dtype,
                quick,
                flags,
                results_root: results,
                name,
                tensor_copies,
            })?;
            println!("offload results written to {}", dir.display());
        }
        Command::Compare { results } => {
            let comparison = report::compare(&results)?;
            for skipped in &comparison.skipped {
                eprintln!("note: skipped {skipped}");
            }
            println!("{}", comparison.table()?);
        }
        Command::Report { results, out } => {
            let outcome = study::report(study::ReportRequest {
                roots: results,
                out,
            })?;
            for path in &outcome.read {
                println!("read {}", path.display());
            }
            for command in &outcome.missing {
                println!("not found: the results of `{command}`");
            }
            println!("report written to {}", outcome.path.display());
        }
    }
    Ok(())
}
