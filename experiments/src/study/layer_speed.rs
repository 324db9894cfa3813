//! The layer benchmark (`bench.json`) as the report reads it: the MoE layer's device time with
//! variable-k and top-2 routing, and the dense MLPs beside it, at prefill and decode sizes.

use serde_json::Value;

use super::sources::Found;
use crate::markdown::{number, table};

/// One layer row of the benchmark.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerRow {
    /// The case, e.g. `layer mixtral T=4096 mean-k 1.3`.
    pub case: String,
    /// Median device time of the MoE layer, microseconds.
    pub moe_us: f64,
    /// The dense MLP with top-2's active parameters (cuBLAS), microseconds.
    pub dense_active_us: Option<f64>,
    /// The dense MLP with the MoE's total parameters (cuBLAS), microseconds.
    pub dense_total_us: Option<f64>,
    /// Mean k of the batch.
    pub mean_k: Option<f64>,
}

/// The layer rows of a `bench.json`.
pub fn layer_rows(json: &Value) -> Vec<LayerRow> {
    let ok = |v: &Value| v.get("Ok").and_then(Value::as_f64);
    json["experts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|row| row["op"] == "layer")
        .filter_map(|row| {
            Some(LayerRow {
                case: row["case"].as_str()?.to_string(),
                moe_us: row["time_us"][0].as_f64()?,
                dense_active_us: ok(&row["cublas_us"]),
                dense_total_us: ok(&row["dense_total_us"]),
                mean_k: row["mean_k"].as_f64(),
            })
        })
        .collect()
}

/// The row of `case`.
pub fn row<'a>(rows: &'a [LayerRow], case: &str) -> Option<&'a LayerRow> {
    rows.iter().find(|r| r.case == case)
}

/// The section: every layer row with its ratios to the dense MLPs.
pub fn section(found: &Found, rows: &[LayerRow]) -> String {
    let ratio = |dense: Option<f64>, moe: f64| number(dense.map(|d| d / moe), 2);
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.case.clone(),
                number(r.mean_k, 3),
                format!("{:.1}", r.moe_us),
                number(r.dense_active_us, 1),
                ratio(r.dense_active_us, r.moe_us),
                number(r.dense_total_us, 1),
                ratio(r.dense_total_us, r.moe_us),
            ]
        })
        .collect();
    format!(
        "Source: {} on {}. Median device time of one forward of the layer; a ratio above 1 means \
         the MoE layer is faster than that dense MLP (cuBLAS).\n\n{}",
        found.cite(),
        found.json["device"].as_str().unwrap_or("?"),
        table(
            &[
                "case",
                "mean k",
                "MoE us",
                "dense, top-2's active us",
                "speed-up",
                "dense, all parameters us",
                "speed-up",
            ],
            &body
        )
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_layer_rows_and_their_baselines_skipping_other_ops() {
        let json: Value = serde_json::from_str(
            r#"{"device": "H100", "experts": [
                {"op": "gemm1", "case": "gemm mixtral T=4096 mean-k 1.3", "time_us": [9, 8, 10]},
                {"op": "layer", "case": "layer mixtral T=4096 mean-k 1.3", "time_us": [700.5, 690, 710],
                 "cublas_us": {"Ok": 900.0}, "dense_total_us": {"Err": "out of memory"}, "mean_k": 1.31},
                {"op": "layer", "case": "layer mixtral T=4096 top-2", "time_us": [1000, 990, 1010],
                 "cublas_us": {"Err": "no cuBLAS"}, "dense_total_us": null, "mean_k": 2.0}
            ]}"#,
        )
        .unwrap();
        let rows = layer_rows(&json);
        assert_eq!(rows.len(), 2);
        assert_eq!(
            rows[0],
            LayerRow {
                case: "layer mixtral T=4096 mean-k 1.3".into(),
                moe_us: 700.5,
                dense_active_us: Some(900.0),
                dense_total_us: None,
                mean_k: Some(1.31),
            }
        );
        assert_eq!(rows[1].dense_active_us, None);
        assert!(row(&rows, "layer mixtral T=4096 top-2").is_some());
    }
}
