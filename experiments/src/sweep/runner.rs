//! Trains the planned runs, each as a `train` child process of this binary (its own seed and
//! global state; its output in `logs/<run>.log`), `jobs` at a time, skipping runs that already
//! finished: an interrupted sweep resumes where it stopped. Progress is a bar in a terminal and
//! one line per finished run otherwise.

use std::collections::VecDeque;
use std::fs::File;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};

use super::plan::PlannedRun;
use crate::backend::BackendKind;
use crate::error::ExperimentError;
use crate::run_dir::{CONFIG_FILE, METRICS_FILE, remove_abandoned_staging};
use crate::workload::{WorkloadConfig, WorkloadMetrics};

/// Where a sweep keeps its runs.
#[derive(Clone, Debug)]
pub struct SweepDirs {
    /// `results/sweep-<name>/`.
    pub root: PathBuf,
}

impl SweepDirs {
    /// The run directories' parent.
    pub fn runs(&self) -> PathBuf {
        self.root.join("runs")
    }

    /// The config file each run is trained from.
    pub fn config_of(&self, run: &str) -> PathBuf {
        self.root.join("configs").join(format!("{run}.toml"))
    }

    /// A run's training output.
    pub fn log_of(&self, run: &str) -> PathBuf {
        self.root.join("logs").join(format!("{run}.log"))
    }
}

/// Refuses a sweep directory holding a finished run whose saved config differs from the plan
/// (the sweep file changed): resuming would mix two sweeps. A config saved before a field was
/// added (so without it) is the same when this binary reads it with the field's default. Reads
/// only.
pub fn check_finished(plan: &[PlannedRun], dirs: &SweepDirs) -> Result<(), ExperimentError> {
    for run in plan {
        let run_dir = dirs.runs().join(&run.name);
        if run_dir.join(METRICS_FILE).exists() {
            let path = run_dir.join(CONFIG_FILE);
            let saved = std::fs::read_to_string(&path).unwrap_or_default();
            let planned = run.config.to_toml();
            let same = saved == planned
                || WorkloadConfig::parse(&saved, &path, &[])
                    .is_ok_and(|config| config.to_toml() == planned);
            if !same {
                return Err(ExperimentError::SweepChanged(run_dir));
            }
        }
    }
    Ok(())
}

/// Trains every run of `plan` that has no results yet and returns all runs' metrics, in plan
/// order (every one `Some`); removes what killed runs left behind first.
pub fn run_all(
    plan: &[PlannedRun],
    dirs: &SweepDirs,
    jobs: usize,
    backend: BackendKind,
) -> Result<Vec<Option<WorkloadMetrics>>, ExperimentError> {
    check_finished(plan, dirs)?;
    for sub in ["configs", "runs", "logs"] {
        let path = dirs.root.join(sub);
        std::fs::create_dir_all(&path).map_err(ExperimentError::io(&path))?;
    }
    remove_abandoned_staging(&dirs.runs());
    let mut pending = VecDeque::new();
    for run in plan {
        if dirs.runs().join(&run.name).join(METRICS_FILE).exists() {
            continue;
        }
        let config_path = dirs.config_of(&run.name);
        std::fs::write(&config_path, run.config.to_toml())
            .map_err(ExperimentError::io(&config_path))?;
        pending.push_back(run);
    }

    let done = plan.len() - pending.len();
    if done > 0 {
        println!(
            "resuming: {done} of {} runs already finished in {}",
            plan.len(),
            dirs.root.display()
        );
    }
    let progress = Progress::new(plan.len(), done);
    let queue = Mutex::new(pending);
    let failure: Mutex<Option<ExperimentError>> = Mutex::new(None);
    std::thread::scope(|scope| {
        for _ in 0..jobs.max(1) {
            scope.spawn(|| {
                loop {
                    if failure.lock().is_ok_and(|f| f.is_some()) {
                        return;
                    }
                    let Some(run) = queue.lock().ok().and_then(|mut q| q.pop_front()) else {
                        return;
                    };
                    progress.started(&run.name);
                    let started = Instant::now();
                    match train_in_child(run, dirs, backend) {
                        Ok(metrics) => progress.finished(&run.name, &metrics, started),
                        Err(error) => {
                            if let Ok(mut slot) = failure.lock() {
                                slot.get_or_insert(error);
                            }
                            return;
                        }
                    }
                }
            });
        }
    });
    progress.close();
    if let Some(error) = failure.into_inner().unwrap_or_else(|e| e.into_inner()) {
        return Err(error);
    }
    finished_metrics(plan, dirs)
}

/// The metrics of every run of `plan` that finished, in plan order (`None` for the others);
/// trains nothing and writes nothing. Call [`check_finished`] before.
pub fn finished_metrics(
    plan: &[PlannedRun],
    dirs: &SweepDirs,
) -> Result<Vec<Option<WorkloadMetrics>>, ExperimentError> {
    plan.iter()
        .map(|run| {
            let run_dir = dirs.runs().join(&run.name);
            match run_dir.join(METRICS_FILE).exists() {
                true => run.config.workload().load_metrics(&run_dir).map(Some),
                false => Ok(None),
            }
        })
        .collect()
}

/// Runs `experiments train` for one planned run and reads back its metrics.
fn train_in_child(
    run: &PlannedRun,
    dirs: &SweepDirs,
    backend: BackendKind,
) -> Result<WorkloadMetrics, ExperimentError> {
    let log_path = dirs.log_of(&run.name);
    let log = File::create(&log_path).map_err(ExperimentError::io(&log_path))?;
    let err_log = log.try_clone().map_err(ExperimentError::io(&log_path))?;
    let exe = std::env::current_exe().map_err(ExperimentError::io("the experiments binary"))?;
    let mut command = Command::new(&exe);
    stop_with_parent(&mut command);
    let status = command
        .arg("train")
        .arg("--config")
        .arg(dirs.config_of(&run.name))
        .args([
            "--name",
            &run.name,
            "--overwrite",
            "--backend",
            backend.name(),
        ])
        .arg("--results")
        .arg(dirs.runs())
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err_log)
        .status()
        .map_err(ExperimentError::io(&exe))?;
    if !status.success() {
        return Err(ExperimentError::SweepRunFailed {
            run: run.name.clone(),
            reason: last_error_line(&log_path),
            log: log_path,
        });
    }
    run.config
        .workload()
        .load_metrics(&dirs.runs().join(&run.name))
}

/// The child's one-line error without its `error: ` prefix, or its last line.
fn last_error_line(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    match lines.iter().rev().find_map(|l| l.strip_prefix("error: ")) {
        Some(error) => error.trim().to_string(),
        None => lines
            .last()
            .map_or_else(|| "no output".into(), |l| l.trim().to_string()),
    }
}

/// Asks the kernel to send the child SIGHUP when this process dies (Linux), so a killed sweep
/// does not leave a run training; the child then removes its staging directory itself. (The
/// kernel sends one per exiting thread of this process; the child ignores the repeats.)
#[cfg(target_os = "linux")]
fn stop_with_parent(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: prctl, getppid and raise are async-signal-safe; nothing is allocated.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGHUP) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died before the prctl.
            if libc::getppid() != parent {
                libc::raise(libc::SIGHUP);
            }
            Ok(())
        });
    }
}

/// Elsewhere the child of a killed sweep runs to its end (its result is kept for a resume).
#[cfg(not(target_os = "linux"))]
fn stop_with_parent(_: &mut Command) {}

/// A progress bar in a terminal, plain lines otherwise.
struct Progress {
    bar: Option<ProgressBar>,
    total: usize,
    finished: Mutex<usize>,
}

impl Progress {
    fn new(total: usize, done: usize) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(total as u64).with_position(done as u64);
            if let Ok(style) = ProgressStyle::with_template(
                "{bar:30} {pos}/{len} runs [{elapsed_precise}, {eta} left] {msg}",
            ) {
                bar.set_style(style);
            }
            bar
        });
        Self {
            bar,
            total,
            finished: Mutex::new(done),
        }
    }

    fn started(&self, run: &str) {
        if let Some(bar) = &self.bar {
            bar.set_message(format!("training {run}"));
        }
    }

    fn finished(&self, run: &str, metrics: &WorkloadMetrics, started: Instant) {
        let count = self.finished.lock().map_or(0, |mut n| {
            *n += 1;
            *n
        });
        let line = format!(
            "[{count}/{}] {run}: {} ({:.1} s)",
            self.total,
            metrics.progress(),
            started.elapsed().as_secs_f64()
        );
        match &self.bar {
            Some(bar) => {
                bar.println(line);
                bar.inc(1);
            }
            None => println!("{line}"),
        }
    }

    fn close(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
