//! The numbers a sweep summarises per method, by workload: their names (the columns of
//! `sweep.csv` and the keys of `sweep.json`'s method rows), how to read them from a run's metrics,
//! and which one is the quality axis of the Pareto front, with its direction.

use crate::lm::evaluate::BlockRouting;
use crate::lm::metrics::LmMetrics;
use crate::report::RunMetrics;
use crate::workload::{Workload, WorkloadMetrics};

/// A quantity's name and how to read it from a run's metrics `M` (`None`: the run has none).
type Quantity<M> = (&'static str, fn(&M) -> Option<f64>);

/// The task's quantities, in column order.
const TASK: [Quantity<RunMetrics>; 10] = [
    ("test_accuracy", |m| Some(m.test_accuracy)),
    ("accuracy_easy", |m| m.accuracy_easy),
    ("accuracy_hard", |m| m.accuracy_hard),
    ("mean_k", |m| m.routing.as_ref().map(|r| r.mean_k)),
    ("flops_per_token", |m| Some(m.flops_per_token)),
    ("train_wall_time_s", |m| Some(m.train_wall_time_s)),
    ("load_cv", |m| m.routing.as_ref().map(|r| r.load_cv)),
    ("load_gini", |m| m.routing.as_ref().map(|r| r.load_gini)),
    ("dropped_fraction", |m| {
        m.routing.as_ref().map(|r| r.dropped_fraction)
    }),
    ("cluster_expert_mi_bits", |m| {
        m.routing.as_ref().and_then(|r| r.cluster_expert_mi_bits)
    }),
];

/// The language model's quantities, in column order. Routing is read on the validation split
/// (the front's split); the load statistics are means over the MoE blocks.
const LM: [Quantity<LmMetrics>; 12] = [
    ("valid_bits_per_byte", |m| Some(m.valid.bits_per_byte)),
    ("test_bits_per_byte", |m| Some(m.test.bits_per_byte)),
    ("mean_k", |m| m.valid.mean_k),
    ("fraction_k1", |m| m.valid.fraction_k1),
    ("flops_per_token", |m| Some(m.flops_per_token)),
    ("params_active", |m| Some(m.params_active)),
    ("steady_tokens_per_s", |m| m.steady_tokens_per_s),
    ("train_wall_time_s", |m| Some(m.train_wall_time_s)),
    ("load_cv", |m| mean_over_blocks(m, |b| b.load.cv)),
    ("load_gini", |m| mean_over_blocks(m, |b| b.load.gini)),
    ("max_violation", |m| {
        mean_over_blocks(m, |b| b.load.max_violation)
    }),
    ("router_entropy", |m| {
        mean_over_blocks(m, |b| b.router_entropy)
    }),
];

/// The mean of `read` over the MoE blocks of the validation split (`None`: dense).
fn mean_over_blocks(metrics: &LmMetrics, read: fn(&BlockRouting) -> f64) -> Option<f64> {
    let blocks = &metrics.valid.blocks;
    (!blocks.is_empty()).then(|| blocks.iter().map(read).sum::<f64>() / blocks.len() as f64)
}

/// Which way the quality axis improves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Better {
    /// Higher is better (accuracy).
    Higher,
    /// Lower is better (bits per byte).
    Lower,
}

/// The quantity a method's quality is judged by, against its mean k.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quality {
    /// Its name among the workload's quantities.
    pub quantity: &'static str,
    /// Which way it improves.
    pub better: Better,
}

impl Quality {
    /// Whether `a` is at least as good as `b`.
    pub fn at_least_as_good(&self, a: f64, b: f64) -> bool {
        match self.better {
            Better::Higher => a >= b,
            Better::Lower => a <= b,
        }
    }
}

impl Workload {
    /// The names of the quantities summarised per method, in column order.
    pub fn quantity_names(self) -> Vec<&'static str> {
        match self {
            Workload::Task => TASK.iter().map(|(name, _)| *name).collect(),
            Workload::Lm => LM.iter().map(|(name, _)| *name).collect(),
        }
    }

    /// The quality axis of the front: test accuracy (higher is better) for the task, validation
    /// bits per byte (lower is better) for the language model.
    pub fn quality(self) -> Quality {
        match self {
            Workload::Task => Quality {
                quantity: "test_accuracy",
                better: Better::Higher,
            },
            Workload::Lm => Quality {
                quantity: "valid_bits_per_byte",
                better: Better::Lower,
            },
        }
    }
}

impl WorkloadMetrics {
    /// Every quantity of [`Workload::quantity_names`] with this run's value (`None` where the run
    /// has none, e.g. a dense model's mean k).
    pub fn quantities(&self) -> Vec<(&'static str, Option<f64>)> {
        match self {
            WorkloadMetrics::Task(m) => TASK.iter().map(|(name, read)| (*name, read(m))).collect(),
            WorkloadMetrics::Lm(m) => LM.iter().map(|(name, read)| (*name, read(m))).collect(),
        }
    }
}
