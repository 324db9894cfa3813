//! Routing prediction (`prediction.json`) and offloading (`offload.json`) as report sections:
//! how well each predictor names the next blocks' experts, and what prefetching on real routing
//! buys over loading on demand.

use serde_json::Value;

use super::sources::Found;
use crate::markdown::{number, table};

/// The prediction table: recall and precision of each predictor at each block distance.
pub fn prediction_section(found: &Found) -> String {
    let mut rows = Vec::new();
    for predictor in found.json["predictors"].as_array().into_iter().flatten() {
        for distance in predictor["distances"].as_array().into_iter().flatten() {
            let all = &distance["all"];
            let percent = |v: &Value| number(v.as_f64().map(|x| 100.0 * x), 1);
            rows.push(vec![
                predictor["name"].as_str().unwrap_or("?").to_string(),
                distance["distance"].to_string(),
                percent(&all["recall"]),
                percent(&all["precision"]),
                percent(&all["batch_recall"]),
            ]);
        }
    }
    let model = &found.json["model"];
    format!(
        "Source: {}; {} blocks, {} ({} test tokens or points).\n\n{}",
        found.cite(),
        model["num_blocks"],
        model["ffn"].as_str().unwrap_or("?"),
        model["test_points"],
        table(
            &[
                "predictor",
                "distance j",
                "recall %",
                "precision %",
                "batch recall %"
            ],
            &rows
        )
    )
}

/// One policy's row of an offloading shape (real routing, not the accuracy curve).
#[derive(Clone, Debug, PartialEq)]
pub struct PolicyRow {
    /// The shape, e.g. `mixtral`.
    pub shape: String,
    /// The policy, e.g. `prefetch:gating`.
    pub policy: String,
    /// Time to first token, ms.
    pub ttft_ms: f64,
    /// Mean decode step, ms.
    pub decode_ms: f64,
    /// Share of decode expert reads served by the cache.
    pub decode_hit_rate: f64,
    /// Bytes copied to the device.
    pub bytes_copied: f64,
}

/// The policy rows of an `offload.json` (the injected-accuracy rows left out).
pub fn policy_rows(json: &Value) -> Vec<PolicyRow> {
    let mut rows = Vec::new();
    for shape in json["shapes"].as_array().into_iter().flatten() {
        let name = shape["shape"]["name"].as_str().unwrap_or("?");
        for row in shape["rows"].as_array().into_iter().flatten() {
            if !row["accuracy"].is_null() {
                continue;
            }
            let (Some(policy), Some(ttft), Some(decode), Some(hits), Some(bytes)) = (
                row["policy"].as_str(),
                row["ttft_ms"].as_f64(),
                row["decode_ms_mean"].as_f64(),
                row["decode_hit_rate"].as_f64(),
                row["bytes_copied"].as_f64(),
            ) else {
                continue;
            };
            rows.push(PolicyRow {
                shape: name.to_string(),
                policy: policy.to_string(),
                ttft_ms: ttft,
                decode_ms: decode,
                decode_hit_rate: hits,
                bytes_copied: bytes,
            });
        }
    }
    rows
}

/// The fastest prefetching policy of `shape` against on-demand loading, decode ms per step:
/// `(prefetch row, on-demand row)`.
pub fn best_prefetch<'a>(
    rows: &'a [PolicyRow],
    shape: &str,
) -> Option<(&'a PolicyRow, &'a PolicyRow)> {
    let of_shape = || rows.iter().filter(move |r| r.shape == shape);
    let on_demand = of_shape().find(|r| r.policy == "on-demand")?;
    let prefetch = of_shape()
        .filter(|r| r.policy.starts_with("prefetch"))
        .min_by(|a, b| a.decode_ms.total_cmp(&b.decode_ms))?;
    Some((prefetch, on_demand))
}

/// The offloading table.
pub fn offload_section(found: &Found, rows: &[PolicyRow]) -> String {
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.shape.clone(),
                r.policy.clone(),
                format!("{:.2}", r.ttft_ms),
                format!("{:.3}", r.decode_ms),
                format!("{:.1}", 100.0 * r.decode_hit_rate),
                format!("{:.2}", r.bytes_copied / 1e9),
            ]
        })
        .collect();
    format!(
        "Source: {} ({} copies, {}).\n\n{}",
        found.cite(),
        found.json["backend"].as_str().unwrap_or("?"),
        found.json["dtype"].as_str().unwrap_or("?"),
        table(
            &[
                "shape",
                "policy",
                "TTFT ms",
                "decode ms/step",
                "decode hit %",
                "GB copied"
            ],
            &body
        )
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_best_prefetch_is_the_fastest_decoding_prefetch_policy_of_the_shape() {
        let json: Value = serde_json::from_str(
            r#"{"shapes": [{"shape": {"name": "mixtral"}, "rows": [
                {"policy": "on-demand", "accuracy": null, "ttft_ms": 50, "decode_ms_mean": 9.0, "decode_hit_rate": 0.5, "bytes_copied": 1e9},
                {"policy": "prefetch:fate", "accuracy": null, "ttft_ms": 40, "decode_ms_mean": 7.5, "decode_hit_rate": 0.7, "bytes_copied": 1.2e9},
                {"policy": "prefetch:gating", "accuracy": null, "ttft_ms": 41, "decode_ms_mean": 6.0, "decode_hit_rate": 0.8, "bytes_copied": 1.1e9},
                {"policy": "prefetch", "accuracy": 0.9, "ttft_ms": 1, "decode_ms_mean": 1.0, "decode_hit_rate": 0.99, "bytes_copied": 1.0}
            ]}]}"#,
        )
        .unwrap();
        let rows = policy_rows(&json);
        assert_eq!(rows.len(), 3, "the accuracy curve's rows are left out");
        let (prefetch, on_demand) = best_prefetch(&rows, "mixtral").unwrap();
        assert_eq!(prefetch.policy, "prefetch:gating");
        assert_eq!(on_demand.decode_ms, 9.0);
        assert!(best_prefetch(&rows, "deepseek").is_none());
    }
}
