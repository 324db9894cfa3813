//! Plain-text training progress for logs and pipes, where the terminal dashboard cannot draw.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use burn::data::dataloader::Progress;
use burn::train::metric::{MetricDefinition, MetricId, NumericEntry};
use burn::train::renderer::{
    EvaluationName, EvaluationProgress, MetricState, MetricsRenderer, MetricsRendererEvaluation,
    MetricsRendererTraining, ProgressType, TrainingProgress,
};

/// How often a line is printed in the middle of a long training epoch.
const MID_EPOCH_INTERVAL: Duration = Duration::from_secs(10);

/// Prints one line per epoch (training and validation means of every metric) and a line every
/// few seconds during long epochs.
pub struct PlainTextProgress {
    names: HashMap<MetricId, String>,
    train: EpochMeans,
    valid: EpochMeans,
    started: Instant,
    last_line: Instant,
}

impl PlainTextProgress {
    /// A renderer whose clock starts now.
    pub fn new() -> Self {
        Self {
            names: HashMap::new(),
            train: EpochMeans::default(),
            valid: EpochMeans::default(),
            started: Instant::now(),
            last_line: Instant::now(),
        }
    }

    fn line(&self, epoch: &Progress, part: String) {
        let elapsed = self.started.elapsed().as_secs_f64();
        println!(
            "epoch {}/{} {part} [{elapsed:.1} s]",
            epoch.items_processed, epoch.items_total
        );
    }
}

impl Default for PlainTextProgress {
    fn default() -> Self {
        Self::new()
    }
}

/// Batch-size-weighted means of the numeric metrics seen in the current epoch.
#[derive(Default)]
struct EpochMeans {
    sums: BTreeMap<String, (f64, usize)>,
}

impl EpochMeans {
    fn add(&mut self, name: &str, entry: &NumericEntry) {
        let (value, count) = match *entry {
            NumericEntry::Value(value) => (value, 1),
            NumericEntry::Aggregated {
                aggregated_value,
                count,
            } => (aggregated_value, count),
        };
        let sum = self.sums.entry(name.to_string()).or_insert((0.0, 0));
        sum.0 += value * count as f64;
        sum.1 += count;
    }

    fn summary(&self) -> String {
        self.sums
            .iter()
            .map(|(name, (sum, count))| format!("{name} {:.3}", sum / (*count).max(1) as f64))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl PlainTextProgress {
    fn record(&self, means: &mut EpochMeans, state: MetricState) {
        if let MetricState::Numeric(entry, value) = state {
            let name = self
                .names
                .get(&entry.metric_id)
                .map_or("metric", String::as_str);
            means.add(name, &value);
        }
    }
}

fn is_done(progress: &Option<Progress>) -> bool {
    progress
        .as_ref()
        .is_some_and(|p| p.items_total > 0 && p.items_processed >= p.items_total)
}

impl MetricsRendererTraining for PlainTextProgress {
    fn update_train(&mut self, state: MetricState) {
        let mut means = std::mem::take(&mut self.train);
        self.record(&mut means, state);
        self.train = means;
    }

    fn update_valid(&mut self, state: MetricState) {
        let mut means = std::mem::take(&mut self.valid);
        self.record(&mut means, state);
        self.valid = means;
    }

    fn render_train(&mut self, item: TrainingProgress, _: Vec<ProgressType>) {
        if self.last_line.elapsed() >= MID_EPOCH_INTERVAL
            && let Some(progress) = &item.progress
        {
            let percent = 100 * progress.items_processed / progress.items_total.max(1);
            self.line(
                &item.global_progress,
                format!("{percent:>3}% train: {}", self.train.summary()),
            );
            self.last_line = Instant::now();
        }
    }

    fn render_valid(&mut self, item: TrainingProgress, _: Vec<ProgressType>) {
        if is_done(&item.progress) {
            let part = format!(
                "train: {} | valid: {}",
                self.train.summary(),
                self.valid.summary()
            );
            self.line(&item.global_progress, part);
            self.train = EpochMeans::default();
            self.valid = EpochMeans::default();
            self.last_line = Instant::now();
        }
    }
}

impl MetricsRendererEvaluation for PlainTextProgress {
    fn update_test(&mut self, _: EvaluationName, _: MetricState) {}

    fn render_test(&mut self, _: EvaluationProgress, _: Vec<ProgressType>) {}
}

impl MetricsRenderer for PlainTextProgress {
    fn manual_close(&mut self) {}

    fn register_metric(&mut self, definition: MetricDefinition) {
        self.names.insert(definition.metric_id, definition.name);
    }
}
