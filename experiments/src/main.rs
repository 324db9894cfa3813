//! Command line: `train`, `eval` and `compare` runs of the variable-k MoE experiments.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use experiments::sweep::{SweepRequest, sweep};
use experiments::train::{TrainRequest, train};
use experiments::{BackendKind, ExperimentError, RunConfig, eval, report};

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
    /// Train a model from a config file and write results/<run>/.
    Train {
        /// Config file, e.g. configs/moe.toml.
        #[arg(long)]
        config: PathBuf,
        /// Backend to train on.
        #[arg(long, value_enum, default_value_t)]
        backend: BackendKind,
        /// Run name (default: the config file's name, with -2, -3, ... if taken).
        #[arg(long)]
        name: Option<String>,
        /// Replace results/<name> if it exists.
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
    },
    /// Time the routing kernels (route, dispatch, combine) against Burn tensor ops.
    #[cfg(any(feature = "wgpu", feature = "cuda"))]
    Bench {
        /// CubeCL backend to run on.
        #[arg(long, value_enum, default_value_t = BackendKind::Cuda)]
        backend: BackendKind,
        /// Fewer, smaller cases (CI, CPU-emulated devices).
        #[arg(long)]
        quick: bool,
        /// Only the cases whose label contains this text, e.g. `--case T=65536`.
        #[arg(long)]
        case: Option<String>,
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
        /// Directory holding the sweep directory.
        #[arg(long, default_value = "results")]
        results: PathBuf,
    },
    /// Print every run's metrics side by side.
    Compare {
        /// Directory holding the run directories.
        #[arg(long, default_value = "results")]
        results: PathBuf,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse().command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::from(2)
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
            let metrics = train(TrainRequest {
                config: RunConfig::load(&config, &overrides)?,
                results_root: results,
                name,
                default_name: file_stem(&config),
                overwrite,
                backend,
            })?;
            println!("{}", metrics.summary());
        }
        Command::Eval { run, backend } => {
            println!("{}", eval::eval_saved(&run, backend)?.summary());
        }
        #[cfg(any(feature = "wgpu", feature = "cuda"))]
        Command::Bench {
            backend,
            quick,
            case,
            results,
        } => {
            let csv = experiments::bench::bench(experiments::bench::BenchRequest {
                backend,
                quick,
                case_filter: case,
                results_root: results,
            })?;
            println!("table written to {}", csv.display());
        }
        Command::Sweep {
            config,
            quick,
            backend,
            fresh,
            results,
        } => {
            let outcome = sweep(SweepRequest {
                config,
                quick,
                backend,
                results_root: results,
                fresh,
            })?;
            println!("{}", outcome.table.markdown());
            println!(
                "sweep written to {} ({:.0} s)",
                outcome.dir.display(),
                outcome.table.wall_time_s
            );
        }
        Command::Compare { results } => println!("{}", report::compare(&results)?),
    }
    Ok(())
}

fn file_stem(path: &Path) -> String {
    path.file_stem()
        .map_or_else(|| "run".into(), |s| s.to_string_lossy().into_owned())
}
