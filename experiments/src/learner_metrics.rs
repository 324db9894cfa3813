//! Routing metrics shown by `burn-train` while training: mean k and load balance per batch.

use std::sync::Arc;

use burn::tensor::backend::Backend;
use burn::train::metric::state::{FormatOptions, NumericMetricState};
use burn::train::metric::{
    Metric, MetricAttributes, MetricMetadata, MetricName, Numeric, NumericAttributes, NumericEntry,
    SerializedEntry,
};
use moe_model::RoutingStats;

use crate::routing_metrics::{BatchPoints, LayerDecisions, RoutingTally};

/// Routing numbers of one batch, read from the model output.
pub struct RoutingMetricInput {
    mean_k: f64,
    load_cv: f64,
    tokens: usize,
}

impl RoutingMetricInput {
    /// Summarises the routing of every MoE block of a batch.
    pub fn from_stats<B: Backend>(routing: &[RoutingStats<B>]) -> Self {
        let mut tally = RoutingTally::default();
        let mut tokens = 0;
        for (layer, stats) in routing.iter().enumerate() {
            let decisions = LayerDecisions::from_stats(stats);
            tokens = decisions.token_k.len();
            let hard = vec![false; tokens];
            let points = BatchPoints {
                hard: &hard,
                clusters: &[],
            };
            tally.add_decisions(layer, &decisions, points);
        }
        let report = tally.report();
        Self {
            mean_k: report.as_ref().map_or(f64::NAN, |r| r.mean_k),
            load_cv: report.as_ref().map_or(f64::NAN, |r| r.load_cv),
            tokens,
        }
    }
}

/// Which routing number a [`RoutingMetric`] shows.
#[derive(Clone, Copy, Debug)]
pub enum RoutingStatistic {
    /// Mean experts per token.
    MeanK,
    /// Coefficient of variation of the expert loads within a batch.
    LoadCv,
}

/// A numeric `burn-train` metric over the routing of each batch.
#[derive(Clone)]
pub struct RoutingMetric {
    statistic: RoutingStatistic,
    name: MetricName,
    state: NumericMetricState,
}

impl RoutingMetric {
    /// A metric showing `statistic`.
    pub fn new(statistic: RoutingStatistic) -> Self {
        let name = match statistic {
            RoutingStatistic::MeanK => "Mean k",
            RoutingStatistic::LoadCv => "Load CV",
        };
        Self {
            statistic,
            name: Arc::new(name.to_string()),
            state: NumericMetricState::default(),
        }
    }
}

impl Metric for RoutingMetric {
    type Input = RoutingMetricInput;

    fn name(&self) -> MetricName {
        self.name.clone()
    }

    fn update(&mut self, input: &RoutingMetricInput, _: &MetricMetadata) -> SerializedEntry {
        let value = match self.statistic {
            RoutingStatistic::MeanK => input.mean_k,
            RoutingStatistic::LoadCv => input.load_cv,
        };
        self.state.update(
            value,
            input.tokens,
            FormatOptions::new(self.name()).precision(3),
        )
    }

    fn clear(&mut self) {
        self.state.reset();
    }

    fn attributes(&self) -> MetricAttributes {
        NumericAttributes {
            unit: None,
            higher_is_better: false,
        }
        .into()
    }
}

impl Numeric for RoutingMetric {
    fn value(&self) -> NumericEntry {
        self.state.current_value()
    }

    fn running_value(&self) -> NumericEntry {
        self.state.running_value()
    }
}
