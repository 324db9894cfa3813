//! Routing statistics: how many experts tokens use, how evenly experts are loaded, and whether
//! the router gives two experts to the points that need them.

use serde::{Deserialize, Serialize};

/// How evenly one MoE layer spread its routed rows over its experts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoadStats {
    /// Rows routed to each expert.
    pub expert_counts: Vec<usize>,
    /// Coefficient of variation of the counts (population std / mean); 0 is perfect balance.
    pub cv: f64,
    /// Gini coefficient of the counts; 0 is perfect balance, (E-1)/E is one expert taking all.
    pub gini: f64,
    /// MaxVio: (max - mean) / mean of the counts; how much the busiest expert is overloaded.
    pub max_violation: f64,
}

impl LoadStats {
    /// Statistics of the per-expert row counts of one layer.
    pub fn from_counts(counts: &[usize]) -> Self {
        let n = counts.len() as f64;
        let mean = counts.iter().sum::<usize>() as f64 / n;
        let variance = counts
            .iter()
            .map(|&c| (c as f64 - mean).powi(2))
            .sum::<f64>()
            / n;
        let abs_differences: f64 = counts
            .iter()
            .flat_map(|&a| counts.iter().map(move |&b| (a as f64 - b as f64).abs()))
            .sum();
        let max = counts.iter().copied().max().unwrap_or(0) as f64;
        let relative = |value: f64| if mean > 0.0 { value / mean } else { 0.0 };
        Self {
            expert_counts: counts.to_vec(),
            cv: relative(variance.sqrt()),
            gini: relative(abs_differences / (2.0 * n * n)),
            max_violation: relative(max - mean),
        }
    }
}

/// Routing statistics of a model over a dataset, aggregated over all MoE layers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RoutingReport {
    /// Mean experts per token, over tokens and MoE layers.
    pub mean_k: f64,
    /// Fraction of (token, layer) decisions that used exactly one expert.
    pub fraction_k1: f64,
    /// Of the decisions with k >= 2, the fraction made for hard points (`None` if no k >= 2).
    pub k2_precision_on_hard: Option<f64>,
    /// Of the decisions made for hard points, the fraction with k >= 2 (`None` if no hard points).
    pub k2_recall_on_hard: Option<f64>,
    /// Mean over layers of the load coefficient of variation.
    pub load_cv: f64,
    /// Mean over layers of the load Gini coefficient.
    pub load_gini: f64,
    /// Mean over layers of MaxVio.
    pub max_violation: f64,
    /// Per-layer load statistics, in block order.
    pub layers: Vec<LoadStats>,
}

/// `a / b`, or `None` when there is nothing to divide by.
pub fn ratio(a: usize, b: usize) -> Option<f64> {
    (b > 0).then(|| a as f64 / b as f64)
}

/// Running totals of routing decisions, fed batch by batch.
#[derive(Clone, Debug, Default)]
pub struct RoutingTally {
    layer_counts: Vec<Vec<usize>>,
    decisions: usize,
    k_sum: usize,
    k1: usize,
    multi: usize,
    multi_on_hard: usize,
    hard: usize,
}

impl RoutingTally {
    /// Adds one layer's decisions for a batch: each token's k, the rows per expert, and which
    /// tokens are hard.
    pub fn add(&mut self, layer: usize, token_k: &[usize], expert_counts: &[usize], hard: &[bool]) {
        if self.layer_counts.len() <= layer {
            self.layer_counts
                .resize(layer + 1, vec![0; expert_counts.len()]);
        }
        for (total, count) in self.layer_counts[layer].iter_mut().zip(expert_counts) {
            *total += count;
        }
        for (&k, &is_hard) in token_k.iter().zip(hard) {
            self.decisions += 1;
            self.k_sum += k;
            self.k1 += usize::from(k == 1);
            self.multi += usize::from(k >= 2);
            self.multi_on_hard += usize::from(k >= 2 && is_hard);
            self.hard += usize::from(is_hard);
        }
    }

    /// The report, or `None` if no MoE layer was seen (dense model).
    pub fn report(&self) -> Option<RoutingReport> {
        if self.decisions == 0 {
            return None;
        }
        let layers: Vec<LoadStats> = self
            .layer_counts
            .iter()
            .map(|c| LoadStats::from_counts(c))
            .collect();
        let mean_over_layers = |stat: fn(&LoadStats) -> f64| {
            layers.iter().map(stat).sum::<f64>() / layers.len() as f64
        };
        Some(RoutingReport {
            mean_k: self.k_sum as f64 / self.decisions as f64,
            fraction_k1: self.k1 as f64 / self.decisions as f64,
            k2_precision_on_hard: ratio(self.multi_on_hard, self.multi),
            k2_recall_on_hard: ratio(self.multi_on_hard, self.hard),
            load_cv: mean_over_layers(|l| l.cv),
            load_gini: mean_over_layers(|l| l.gini),
            max_violation: mean_over_layers(|l| l.max_violation),
            layers,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn balanced_load_has_zero_spread_and_one_hot_load_has_maximal_spread() {
        let balanced = LoadStats::from_counts(&[5, 5, 5, 5]);
        assert_eq!(
            (balanced.cv, balanced.gini, balanced.max_violation),
            (0.0, 0.0, 0.0)
        );
        let one_hot = LoadStats::from_counts(&[0, 0, 0, 8]);
        assert!((one_hot.gini - 0.75).abs() < 1e-12);
        assert!((one_hot.max_violation - 3.0).abs() < 1e-12);
        assert!((one_hot.cv - 3f64.sqrt()).abs() < 1e-12);
    }

    #[test]
    fn precision_and_recall_of_two_experts_on_hard_points() {
        let mut tally = RoutingTally::default();
        // k:     1     2     2      1
        // hard:  no    yes   no     yes
        tally.add(0, &[1, 2, 2, 1], &[3, 3], &[false, true, false, true]);
        let report = tally.report().unwrap();
        assert_eq!(report.mean_k, 1.5);
        assert_eq!(report.fraction_k1, 0.5);
        assert_eq!(report.k2_precision_on_hard, Some(0.5));
        assert_eq!(report.k2_recall_on_hard, Some(0.5));
    }
}
