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
use experiments::lm::config::is_lm_config;
use experiments::lm::generate::{GenerateRequest, generate};
use experiments::predict::{PredictRequest, predict};
use experiments::quantize::{QuantizeRequest, quantize};
use experiments::sweep::{SweepRequest, sweep};
use experiments::train::{TrainRequest, train};
use experiments::{BackendKind, ExperimentError, eval, report, study};

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
    Train(TrainRequest),
    /// Re-evaluate the saved model of a run on its test split.
    Eval(EvalArgs),
    /// Quantize a trained run's experts to int8 or FP8 e4m3 (weights as bytes, f32 scales);
    /// `eval` and `generate` then serve from them (results/<run>/quantized-experts.bin).
    Quantize(QuantizeRequest),
    /// Continue a prompt with a trained language model; print the text, the time to first token
    /// and the decode latency per token.
    Generate(GenerateArgs),
    /// Time the MoE kernels (routing, grouped GEMMs, the whole layer) against Burn, cuBLAS,
    /// dense MLPs and the memory floor.
    #[cfg(any(feature = "wgpu", feature = "cuda"))]
    Bench(experiments::bench::BenchRequest),
    /// Train every method of a sweep config with every seed; write tables and plots.
    Sweep(SweepRequest),
    /// Fit routing predictors on a trained multi-block MoE run and score how well they predict
    /// later blocks' experts; write results/<run>-predict/ (tables, plot, routing traces).
    Predict(PredictRequest),
    /// Expert offloading: replay a routing under resident, on-demand, prefetch and oracle
    /// policies (TTFT, decode latency, copies, hit rate, hidden copy time) and the speed-up of
    /// prefetching against prediction accuracy.
    Offload(experiments::offload::OffloadRequest),
    /// Print every run's metrics side by side.
    Compare {
        /// Directory holding the run directories.
        #[arg(long, default_value = "results")]
        results: PathBuf,
    },
    /// Write docs/REPORT.md: the project's three questions answered from the result files
    /// found (the routing studies, bench, predict, offload), each number naming its file.
    Report(study::ReportRequest),
}

/// `eval`'s flags: a task model's or a language model's run, found by its config.
#[derive(clap::Args)]
struct EvalArgs {
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
}

/// `generate`'s flags: the request, or its prompt read from a file.
#[derive(clap::Args)]
struct GenerateArgs {
    #[command(flatten)]
    request: GenerateRequest,
    /// A file whose text to continue (e.g. configs/prompt-512.txt, the prompt the report's
    /// generation timings use).
    #[arg(long, conflicts_with = "prompt")]
    prompt_file: Option<PathBuf>,
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
        Command::Train(request) => {
            let summary = match is_lm_config(&request.sources.file) {
                true => experiments::lm::train::train_lm(request)?.summary(),
                false => train(request)?.summary(),
            };
            println!("{summary}");
        }
        Command::Eval(EvalArgs {
            run,
            backend,
            dtype,
        }) => {
            let summary = match is_lm_config(&run.join(experiments::run_dir::CONFIG_FILE)) {
                true => experiments::lm::eval::eval_lm(&run, backend, dtype)?.summary(),
                false => eval::eval_saved(&run, backend, dtype)?.summary(),
            };
            println!("{summary}");
        }
        Command::Quantize(request) => println!("{}", quantize(request)?.summary()),
        Command::Generate(GenerateArgs {
            mut request,
            prompt_file,
        }) => {
            if let Some(path) = prompt_file {
                request.prompt =
                    std::fs::read_to_string(&path).map_err(ExperimentError::io(&path))?;
            }
            let prompt = request.prompt.clone();
            let generated = generate(request)?;
            println!(
                "{prompt}{}",
                String::from_utf8_lossy(&generated.generation.continuation)
            );
            println!("{}", generated.generation.summary(&generated.model));
            println!("{}", generated.record.summary());
        }
        #[cfg(any(feature = "wgpu", feature = "cuda"))]
        Command::Bench(request) => {
            let run_dir = experiments::bench::bench(request)?;
            println!("tables written to {}", run_dir.display());
        }
        Command::Sweep(request) => {
            let outcome = sweep(request)?;
            println!("{}", outcome.table.markdown());
            println!(
                "sweep written to {} ({:.0} s)",
                outcome.dir.display(),
                outcome.table.wall_time_s
            );
        }
        Command::Predict(request) => {
            let outcome = predict(request)?;
            println!("{}", outcome.report.markdown());
            println!(
                "prediction written to {} ({:.0} s)",
                outcome.dir.display(),
                outcome.report.wall_time_s
            );
        }
        Command::Offload(request) => {
            let dir = experiments::offload::offload(request)?;
            println!("offload results written to {}", dir.display());
        }
        Command::Compare { results } => {
            let comparison = report::compare(&results)?;
            for skipped in &comparison.skipped {
                eprintln!("note: skipped {skipped}");
            }
            println!("{}", comparison.table()?);
        }
        Command::Report(request) => {
            let outcome = study::report(request)?;
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
