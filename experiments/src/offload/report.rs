//! The offloading run's outputs: a markdown table per shape (printed and `offload.md`),
//! `policies.csv` (one row per policy and per point of the accuracy curve), `offload.json`
//! (settings, device, git commit, the routing's summary and every row), the resolved
//! `settings.toml`, each shape's routing as `trace-<shape>.json`, and the plot.

use std::path::Path;

use serde_json::json;

use super::replay::PolicyResult;
use super::settings::{OffloadPlan, ShapePlan};
use super::synthetic::measured_recall;
use crate::backend::{BackendKind, FloatType};
use crate::error::ExperimentError;
use crate::run_dir::git_commit;

/// Where a run ran.
pub struct Context {
    /// Backend.
    pub backend: BackendKind,
    /// Float type of weights and activations.
    pub dtype: FloatType,
    /// How copies were made (`cudarc copy stream, pinned memory`, or `tensor ops, no overlap`).
    pub copy_engine: String,
}

/// The markdown table of one shape's rows.
pub fn table(plan: &ShapePlan, rows: &[PolicyResult], dtype: FloatType) -> String {
    let shape = &plan.shape;
    let mut out = format!(
        "### {} (d={}, F={}, E={}, {} blocks, {:.1} MB per expert in {}; routing: {}; prefill {} tokens, {} decode steps)\n\n",
        shape.name,
        shape.d_model,
        shape.expert_width,
        shape.num_experts,
        plan.trace.num_blocks,
        shape.expert_bytes(dtype) as f64 / 1e6,
        dtype.name(),
        plan.routing_source,
        plan.trace.batches[0].blocks[0].expert_ids.len(),
        plan.trace.batches.len() - 1,
    );
    out.push_str(
        "| policy | accuracy | slots | TTFT ms | decode ms/step (p50) | TTFT vs on-demand | decode vs on-demand | hit rate (prefill / decode) | copied MB | copy ms | hidden | wait ms | wasted prefetches |\n",
    );
    out.push_str("|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for r in rows {
        out.push_str(&format!(
            "| {} | {} | {} | {:.2} | {:.3} ({:.3}) | {:.2}x | {:.2}x | {:.0}% / {:.0}% | {:.1} | {:.1} | {} | {:.1} | {} |\n",
            r.policy,
            r.accuracy.map_or("-".to_string(), |a| format!("{a:.2}")),
            r.slots,
            r.ttft_ms,
            r.decode_ms_mean,
            r.decode_ms_p50,
            r.speedup_ttft,
            r.speedup_decode,
            100.0 * r.prefill_hit_rate,
            100.0 * r.decode_hit_rate,
            r.bytes_copied as f64 / 1e6,
            r.copy_ms,
            r.hidden_share
                .map_or("-".to_string(), |h| format!("{:.0}%", 100.0 * h)),
            r.wait_ms,
            r.stats.wasted_prefetches,
        ));
    }
    out
}

/// Writes every output file into `dir`.
pub fn write(
    dir: &Path,
    context: &Context,
    plan: &OffloadPlan,
    results: &[(usize, Vec<PolicyResult>)],
    markdown: &str,
) -> Result<(), ExperimentError> {
    let write = |name: &str, text: String| {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(ExperimentError::io(path))
    };
    write(
        "settings.toml",
        toml::to_string(&plan.settings).expect("settings serialise"),
    )?;
    write("offload.md", markdown.to_string())?;

    let mut csv = String::from(
        "shape,policy,accuracy,slots,ttft_ms,decode_ms_mean,decode_ms_p50,decode_ms_p90,speedup_ttft,speedup_decode,hit_rate,prefill_hit_rate,decode_hit_rate,expert_uses,hits,misses,prefetch_copies,wasted_prefetches,bytes_copied,copy_ms,wait_ms,hidden_share,routing_syncs\n",
    );
    for (_, rows) in results {
        for r in rows {
            csv.push_str(&format!(
                "{},{},{},{},{:.4},{:.4},{:.4},{:.4},{:.4},{:.4},{:.4},{:.4},{:.4},{},{},{},{},{},{},{:.4},{:.4},{},{}\n",
                r.shape,
                r.policy,
                r.accuracy.map_or(String::new(), |a| a.to_string()),
                r.slots,
                r.ttft_ms,
                r.decode_ms_mean,
                r.decode_ms_p50,
                r.decode_ms_p90,
                r.speedup_ttft,
                r.speedup_decode,
                r.stats.hit_rate(),
                r.prefill_hit_rate,
                r.decode_hit_rate,
                r.stats.expert_uses,
                r.stats.hits,
                r.stats.misses,
                r.stats.prefetch_copies,
                r.stats.wasted_prefetches,
                r.bytes_copied,
                r.copy_ms,
                r.wait_ms,
                r.hidden_share.map_or(String::new(), |h| format!("{h:.4}")),
                r.stats.routing_syncs,
            ));
        }
    }
    write("policies.csv", csv)?;

    let shapes: Vec<_> = results
        .iter()
        .map(|(index, rows)| {
            let plan = &plan.shapes[*index];
            let trace = &plan.trace;
            let file = format!("trace-{}.json", plan.shape.name);
            trace.save(&dir.join(&file))?;
            let recall: Vec<_> = trace
                .predictors
                .iter()
                .enumerate()
                .map(|(p, name)| {
                    json!({
                        "predictor": name,
                        "distance": plan.distance,
                        "recall": measured_recall(trace, p, plan.distance),
                    })
                })
                .collect();
            let decode_needed: Vec<f64> = (0..trace.num_blocks)
                .map(|l| {
                    let steps = &trace.batches[1..];
                    let total: usize = steps.iter().map(|b| b.blocks[l].needed().len()).sum();
                    total as f64 / steps.len().max(1) as f64
                })
                .collect();
            Ok(json!({
                "shape": plan.shape,
                "routing": plan.routing_source,
                "trace_file": file,
                "blocks": trace.num_blocks,
                "prefill_tokens": trace.batches[0].blocks[0].expert_ids.len(),
                "decode_steps": trace.batches.len() - 1,
                "decode_experts_needed_per_block": decode_needed,
                "predictors": recall,
                "rows": rows,
            }))
        })
        .collect::<Result<_, ExperimentError>>()?;
    let json = json!({
        "backend": context.backend.name(),
        "dtype": context.dtype.name(),
        "copies": context.copy_engine,
        "settings": plan.settings,
        "versions": {
            "experiments": env!("CARGO_PKG_VERSION"),
            "burn": "0.21.0",
            "cubecl": "0.10.0",
        },
        "git_commit": git_commit(),
        "shapes": shapes,
    });
    write(
        "offload.json",
        serde_json::to_string_pretty(&json).expect("JSON of plain values"),
    )
}
