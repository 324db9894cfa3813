//! Routing statistics: how many experts tokens use, how evenly experts are loaded, whether the
//! router gives two experts to the points that need them, and whether experts specialise by
//! cluster.

use burn::tensor::backend::Backend;
use moe_model::RoutingStats;
use serde::{Deserialize, Serialize};

use crate::host::{host_f64s, host_usizes};

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
    /// Routed pairs dropped by the capacity limit, over tokens and layers.
    #[serde(default)]
    pub dropped_pairs: usize,
    /// Dropped pairs over the pairs the router chose (kept + dropped).
    #[serde(default)]
    pub dropped_fraction: f64,
    /// Mean entropy of the router's distribution over experts, in nats (ln E is uniform).
    #[serde(default)]
    pub router_entropy: f64,
    /// Of the decisions with k <= 1, the fraction made for easy points (`None` if none).
    #[serde(default)]
    pub k1_precision_on_easy: Option<f64>,
    /// Of the decisions made for easy points, the fraction with k <= 1 (`None` if no easy points).
    #[serde(default)]
    pub k1_recall_on_easy: Option<f64>,
    /// Mutual information between an easy point's cluster and its top-1 expert, in bits, mean
    /// over layers (log2 of the cluster count when every cluster has its own expert).
    #[serde(default)]
    pub cluster_expert_mi_bits: Option<f64>,
    /// Share of easy points whose top-1 expert is their cluster's most frequent one, mean over
    /// layers (1 when each cluster always goes to one expert).
    #[serde(default)]
    pub cluster_top_expert_share: Option<f64>,
    /// The frozen limit (tau or p) of each layer with a mean-k budget, in block order.
    #[serde(default)]
    pub routing_limits: Vec<f64>,
}

/// One MoE layer's decisions for a batch, on the host.
#[derive(Clone, Debug, Default)]
pub struct LayerDecisions {
    /// Experts each token used. `[T]`
    pub token_k: Vec<usize>,
    /// Pairs routed to each expert. `[E]`
    pub expert_counts: Vec<usize>,
    /// Pairs each token lost to the capacity limit. `[T]`
    pub dropped_pairs: Vec<usize>,
    /// Each token's most probable expert. `[T]`
    pub top_expert: Vec<usize>,
    /// Router entropy of each token, nats. `[T]`
    pub router_entropy: Vec<f64>,
}

impl LayerDecisions {
    /// Reads a layer's routing statistics back to the host.
    pub fn from_stats<B: Backend>(stats: &RoutingStats<B>) -> Self {
        Self {
            token_k: host_usizes(stats.token_k.clone()),
            expert_counts: host_usizes(stats.expert_counts.clone()),
            dropped_pairs: host_usizes(stats.dropped_pairs.clone()),
            top_expert: host_usizes(stats.top_expert.clone()),
            router_entropy: host_f64s(stats.router_entropy.clone()),
        }
    }
}

/// The points of a batch, as far as the routing metrics need them.
#[derive(Clone, Copy, Debug)]
pub struct BatchPoints<'a> {
    /// Whether each point is hard. `[T]`
    pub hard: &'a [bool],
    /// Each point's cluster; empty when unknown. `[T]`
    pub clusters: &'a [usize],
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
    dropped: usize,
    entropy_sum: f64,
    at_most_one_on_easy: usize,
    /// Per layer: easy points of each cluster whose top-1 expert is each expert. `[L][C][E]`
    cluster_expert: Vec<Vec<Vec<usize>>>,
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
            self.at_most_one_on_easy += usize::from(k <= 1 && !is_hard);
        }
    }

    /// Adds one layer's full decisions for a batch: [`RoutingTally::add`], the dropped pairs,
    /// router entropy and, where clusters are known, the easy points' top-1 experts.
    pub fn add_decisions(&mut self, layer: usize, decisions: &LayerDecisions, points: BatchPoints) {
        self.add(
            layer,
            &decisions.token_k,
            &decisions.expert_counts,
            points.hard,
        );
        self.dropped += decisions.dropped_pairs.iter().sum::<usize>();
        self.entropy_sum += decisions.router_entropy.iter().sum::<f64>();
        if points.clusters.is_empty() {
            return;
        }
        if self.cluster_expert.len() <= layer {
            self.cluster_expert.resize(layer + 1, Vec::new());
        }
        let table = &mut self.cluster_expert[layer];
        let num_experts = decisions.expert_counts.len();
        for ((&cluster, &expert), &hard) in points
            .clusters
            .iter()
            .zip(&decisions.top_expert)
            .zip(points.hard)
        {
            if hard {
                continue;
            }
            if table.len() <= cluster {
                table.resize(cluster + 1, vec![0; num_experts]);
            }
            table[cluster][expert] += 1;
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
        let easy = self.decisions - self.hard;
        let at_most_one = self.decisions - self.multi;
        let specialised: Vec<&Vec<Vec<usize>>> = self
            .cluster_expert
            .iter()
            .filter(|t| t.iter().flatten().any(|&n| n > 0))
            .collect();
        let mean_over_tables = |stat: fn(&[Vec<usize>]) -> f64| {
            (!specialised.is_empty()).then(|| {
                specialised.iter().map(|t| stat(t)).sum::<f64>() / specialised.len() as f64
            })
        };
        Some(RoutingReport {
            dropped_pairs: self.dropped,
            dropped_fraction: self.dropped as f64 / (self.k_sum + self.dropped).max(1) as f64,
            router_entropy: self.entropy_sum / self.decisions as f64,
            k1_precision_on_easy: ratio(self.at_most_one_on_easy, at_most_one),
            k1_recall_on_easy: ratio(self.at_most_one_on_easy, easy),
            cluster_expert_mi_bits: mean_over_tables(mutual_information_bits),
            cluster_top_expert_share: mean_over_tables(top_expert_share),
            routing_limits: Vec::new(),
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

/// Mutual information of a contingency table `counts[row][column]`, in bits.
pub fn mutual_information_bits(counts: &[Vec<usize>]) -> f64 {
    let total: usize = counts.iter().flatten().sum();
    if total == 0 {
        return 0.0;
    }
    let columns = counts.iter().map(Vec::len).max().unwrap_or(0);
    let column_sums: Vec<usize> = (0..columns)
        .map(|c| {
            counts
                .iter()
                .map(|row| row.get(c).copied().unwrap_or(0))
                .sum()
        })
        .collect();
    let n = total as f64;
    counts
        .iter()
        .map(|row| {
            let row_sum: usize = row.iter().sum();
            row.iter()
                .zip(&column_sums)
                .filter(|&(&count, _)| count > 0)
                .map(|(&count, &column_sum)| {
                    let joint = count as f64 / n;
                    joint * (count as f64 * n / (row_sum as f64 * column_sum as f64)).log2()
                })
                .sum::<f64>()
        })
        .sum()
}

/// Share of all counts that sit in their row's largest cell: how often a cluster's points go to
/// that cluster's most frequent expert.
pub fn top_expert_share(counts: &[Vec<usize>]) -> f64 {
    let total: usize = counts.iter().flatten().sum();
    let in_top: usize = counts
        .iter()
        .map(|row| row.iter().copied().max().unwrap_or(0))
        .sum();
    in_top as f64 / total.max(1) as f64
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
        // k <= 1 decisions: tokens 0 (easy) and 3 (hard); easy tokens: 0 (k=1) and 2 (k=2).
        assert_eq!(report.k1_precision_on_easy, Some(0.5));
        assert_eq!(report.k1_recall_on_easy, Some(0.5));
    }

    #[test]
    fn specialisation_is_log2_clusters_bits_when_each_cluster_has_its_expert_and_zero_when_independent()
     {
        let dedicated = [
            vec![5, 0, 0, 0],
            vec![0, 5, 0, 0],
            vec![0, 0, 0, 5],
            vec![0, 0, 5, 0],
        ];
        assert!((mutual_information_bits(&dedicated) - 2.0).abs() < 1e-12);
        assert_eq!(top_expert_share(&dedicated), 1.0);
        let independent = [vec![2, 6], vec![1, 3]];
        assert!(mutual_information_bits(&independent).abs() < 1e-12);
        // Row maxima 6 and 3 of 12 points.
        assert_eq!(top_expert_share(&independent), 0.75);
        // Hand-computed: p = [[0.25, 0.25], [0, 0.5]]; I = 0.25 log2(0.25/(0.5*0.25))
        //   + 0.25 log2(0.25/(0.5*0.75)) + 0.5 log2(0.5/(0.5*0.75)) = 0.311278 bits.
        let partial = [vec![1, 1], vec![0, 2]];
        assert!((mutual_information_bits(&partial) - 0.311_278_124_459_133).abs() < 1e-12);
    }

    #[test]
    fn decisions_add_dropped_pairs_entropy_and_the_easy_points_clusters() {
        let mut tally = RoutingTally::default();
        let decisions = LayerDecisions {
            token_k: vec![1, 0, 2, 1],
            expert_counts: vec![3, 1],
            dropped_pairs: vec![0, 1, 0, 1],
            top_expert: vec![0, 0, 1, 1],
            router_entropy: vec![0.1, 0.2, 0.3, 0.6],
        };
        let points = BatchPoints {
            hard: &[false, false, true, false],
            clusters: &[2, 2, 0, 1],
        };
        tally.add_decisions(0, &decisions, points);
        let report = tally.report().unwrap();
        assert_eq!(report.dropped_pairs, 2);
        assert!((report.dropped_fraction - 2.0 / 6.0).abs() < 1e-12);
        assert!((report.router_entropy - 0.3).abs() < 1e-12);
        // Easy points: cluster 2 -> expert 0 twice, cluster 1 -> expert 1: a perfect split.
        assert_eq!(report.cluster_top_expert_share, Some(1.0));
        let bits = -(2.0 / 3.0f64) * (2.0 / 3.0f64).log2() - (1.0 / 3.0f64) * (1.0 / 3.0f64).log2();
        assert!((report.cluster_expert_mi_bits.unwrap() - bits).abs() < 1e-12);
    }
}
