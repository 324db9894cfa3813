//! The summary lines of the routing metrics beyond mean k and load: dropped pairs, router entropy,
//! the k decision on easy points, expert specialisation by cluster, the budget's frozen limits.

use crate::routing_metrics::RoutingReport;

/// `(label, value)` lines for a run's summary.
pub fn rows(routing: &RoutingReport) -> Vec<(&'static str, String)> {
    let percent = |f: Option<f64>| f.map_or("-".into(), |f| format!("{:.1}%", 100.0 * f));
    let mut rows = vec![
        (
            "k<=1 on easy points",
            format!(
                "precision {}, recall {}",
                percent(routing.k1_precision_on_easy),
                percent(routing.k1_recall_on_easy)
            ),
        ),
        (
            "dropped pairs",
            format!(
                "{} ({} of routed)",
                routing.dropped_pairs,
                percent(Some(routing.dropped_fraction))
            ),
        ),
        (
            "router entropy",
            format!("{:.3} nats", routing.router_entropy),
        ),
        (
            "specialisation",
            format!(
                "cluster/top-1 expert MI {} bits, top-expert share {}",
                routing
                    .cluster_expert_mi_bits
                    .map_or("-".into(), |b| format!("{b:.3}")),
                percent(routing.cluster_top_expert_share)
            ),
        ),
    ];
    if !routing.routing_limits.is_empty() {
        let limits: Vec<String> = routing
            .routing_limits
            .iter()
            .map(|l| format!("{l:.3}"))
            .collect();
        rows.push(("frozen limits", limits.join(", ")));
    }
    rows
}
