//! Generation speed on the language model, method against method: the timings `generate` keeps
//! in each run of the study (`runs/<method>-s<seed>/generation-<backend>-<dtype>.json`, written
//! by `just time-generation <study>`), averaged over seeds.

use std::path::{Path, PathBuf};

use crate::lm::generate::GenerationRecord;
use crate::markdown::{pm, table};
use crate::sweep::Spread;

/// The command that writes the timings, for a study directory named `sweep-<name>`.
pub fn command(study_dir: &Path) -> String {
    let name = study_dir
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("sweep-"))
        .unwrap_or("<study>");
    format!("just time-generation {name}")
}

/// One method's generation timings on one backend and type.
#[derive(Clone, Debug, PartialEq)]
pub struct GenerationRow {
    /// Method, e.g. `budget-1.4`.
    pub method: String,
    /// `<backend> <dtype>`, e.g. `ndarray f32`.
    pub device: String,
    /// Runs (seeds) timed.
    pub runs: usize,
    /// Prompt bytes the model saw.
    pub prompt_bytes: usize,
    /// Time to first token, milliseconds.
    pub ttft_ms: Spread,
    /// Milliseconds per token after the first.
    pub decode_ms: Spread,
}

/// The timings of a study: its rows, in the order of `methods`, and where they were read.
#[derive(Clone, Debug)]
pub struct GenerationTimings {
    /// One row per method and device.
    pub rows: Vec<GenerationRow>,
    /// The runs folder they come from.
    pub dir: PathBuf,
    /// The command that writes them.
    pub command: String,
}

impl GenerationTimings {
    /// The timings kept in the runs of the study whose `sweep.json` is `sweep_json`, methods in
    /// the order of `methods`; `None` when no run has any. A damaged file is skipped with a note.
    pub fn read(sweep_json: &Path, methods: &[String]) -> Option<Self> {
        let study_dir = sweep_json.parent()?;
        let dir = study_dir.join("runs");
        let mut records: Vec<(String, GenerationRecord)> = Vec::new();
        for run in std::fs::read_dir(&dir).ok()?.flatten() {
            let Some(method) = method_of(&run.file_name().to_string_lossy()) else {
                continue;
            };
            for file in std::fs::read_dir(run.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                let name = file.file_name().to_string_lossy().into_owned();
                if !(name.starts_with("generation-") && name.ends_with(".json")) {
                    continue;
                }
                let parsed = std::fs::read_to_string(file.path())
                    .map_err(|e| e.to_string())
                    .and_then(|text| serde_json::from_str(&text).map_err(|e| e.to_string()));
                match parsed {
                    Ok(record) => records.push((method.clone(), record)),
                    Err(reason) => eprintln!("note: {} skipped ({reason})", file.path().display()),
                }
            }
        }
        let rows = rows(methods, &records);
        (!rows.is_empty()).then(|| Self {
            rows,
            dir,
            command: command(study_dir),
        })
    }

    /// The row of `method` on `device`.
    pub fn row(&self, method: &str, device: &str) -> Option<&GenerationRow> {
        self.rows
            .iter()
            .find(|r| r.method == method && r.device == device)
    }

    /// The devices timed, in the order first seen.
    pub fn devices(&self) -> Vec<&str> {
        let mut devices: Vec<&str> = Vec::new();
        for row in &self.rows {
            if !devices.contains(&row.device.as_str()) {
                devices.push(&row.device);
            }
        }
        devices
    }

    /// The table: per device and method, time to first token and decode latency, mean ± sd over
    /// seeds, and the decode latency against `dense-active`'s.
    pub fn section(&self) -> String {
        let mut rows = Vec::new();
        for device in self.devices() {
            let dense = self.row("dense-active", device).map(|r| r.decode_ms.mean);
            for row in self.rows.iter().filter(|r| r.device == device) {
                rows.push(vec![
                    row.method.clone(),
                    row.device.clone(),
                    row.runs.to_string(),
                    row.prompt_bytes.to_string(),
                    pm(Some(row.ttft_ms), 1.0, 2),
                    pm(Some(row.decode_ms), 1.0, 3),
                    dense.map_or("-".into(), |d| format!("{:.2}", row.decode_ms.mean / d)),
                ]);
            }
        }
        format!(
            "Generation, one sequence, greedy (source: `{}/*/generation-*.json`, written by `{}`):\n\n{}",
            self.dir.display(),
            self.command,
            table(
                &[
                    "method",
                    "device",
                    "runs",
                    "prompt bytes",
                    "time to first token (ms)",
                    "decode (ms per token)",
                    "decode vs dense-active",
                ],
                &rows,
            )
        )
    }
}

/// The method of a run directory named `<method>-s<seed>`.
fn method_of(run: &str) -> Option<String> {
    let (method, seed) = run.rsplit_once("-s")?;
    seed.parse::<u64>().ok().map(|_| method.to_string())
}

/// Rows per device and method, methods in the order of `methods` (others after them).
fn rows(methods: &[String], records: &[(String, GenerationRecord)]) -> Vec<GenerationRow> {
    // One group per (device, method), in the order first seen.
    let mut groups: Vec<((String, String), Vec<&GenerationRecord>)> = Vec::new();
    for (method, record) in records {
        let key = (
            format!("{} {}", record.backend, record.dtype),
            method.clone(),
        );
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, group)) => group.push(record),
            None => groups.push((key, vec![record])),
        }
    }
    let position = |m: &str| methods.iter().position(|n| n == m).unwrap_or(usize::MAX);
    groups.sort_by(|(a, _), (b, _)| {
        (a.0.cmp(&b.0))
            .then(position(&a.1).cmp(&position(&b.1)))
            .then(a.1.cmp(&b.1))
    });
    groups
        .into_iter()
        .filter_map(|((device, method), mine)| {
            let values = |f: fn(&GenerationRecord) -> f64| -> Vec<f64> {
                mine.iter().map(|r| f(r)).collect()
            };
            Some(GenerationRow {
                runs: mine.len(),
                prompt_bytes: mine.first()?.prompt_bytes,
                ttft_ms: Spread::of(&values(|r| r.ttft_ms))?,
                decode_ms: Spread::of(&values(|r| r.decode_ms_per_token))?,
                method,
                device,
            })
        })
        .collect()
}
