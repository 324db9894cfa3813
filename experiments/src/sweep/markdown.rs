//! `pareto.md`: the quality-against-mean-k table of a sweep (mean ± std over seeds, the front
//! marked); for the language model also the load CV of each MoE block and the mean k by class of
//! the predicted byte.

use super::table::{MethodRow, Spread, SweepTable};
use crate::lm::byte_class::{ByteClass, WordPosition};
use crate::lm::metrics::LmMetrics;
use crate::markdown::{pm, table};
use crate::workload::{Workload, WorkloadMetrics};

impl SweepTable {
    /// The sweep's tables in Markdown, as written to `pareto.md`; a partial sweep says first
    /// which runs are missing.
    pub fn markdown(&self) -> String {
        let tables = match self.workload {
            Workload::Task => task_table(&self.methods),
            Workload::Lm => [
                lm_table(&self.methods),
                lm_block_load_table(self),
                lm_class_table(self),
            ]
            .join("\n\n"),
        };
        match self.missing.is_empty() {
            true => tables,
            false => format!(
                "Partial: {} of {} runs finished; not run: {}.\n\n{tables}",
                self.runs.len(),
                self.runs.len() + self.missing.len(),
                self.missing.join(", ")
            ),
        }
    }
}

/// The mean of `spread` with no decimals, or `-`.
fn whole(spread: Option<Spread>) -> String {
    spread.map_or("-".into(), |s| format!("{:.0}", s.mean))
}

fn front(row: &MethodRow) -> &'static str {
    if row.on_front { "*" } else { "" }
}

/// The task's table: test accuracy (overall, easy, hard points) against mean k.
fn task_table(methods: &[MethodRow]) -> String {
    let mut lines = vec![
        "| method | test acc % | easy % | hard % | mean k | FLOPs/token | load CV | Gini | dropped % | train s | front |".to_string(),
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |".to_string(),
    ];
    for row in methods {
        lines.push(format!(
            "| {} | {} | {} | {} | {} | {:.0} | {} | {} | {} | {:.1} | {} |",
            row.method,
            pm(row.get("test_accuracy"), 100.0, 1),
            pm(row.get("accuracy_easy"), 100.0, 1),
            pm(row.get("accuracy_hard"), 100.0, 1),
            pm(row.get("mean_k"), 1.0, 3),
            row.get("flops_per_token").map_or(0.0, |s| s.mean),
            pm(row.get("load_cv"), 1.0, 3),
            pm(row.get("load_gini"), 1.0, 3),
            row.get("dropped_fraction")
                .map_or("-".into(), |s| format!("{:.1}", 100.0 * s.mean)),
            row.get("train_wall_time_s").map_or(0.0, |s| s.mean),
            front(row),
        ));
    }
    lines.join("\n")
}

/// The language model's main table: bits per byte against mean k, cost and balance.
fn lm_table(methods: &[MethodRow]) -> String {
    let mut lines = vec![
        "Bits per byte (lower is better) against mean k, mean ± std over seeds; routing on the validation split; front (*): no other routed method has lower validation bits per byte at a mean k at most as high.".to_string(),
        String::new(),
        "| method | valid bpb | test bpb | mean k | k=1 % | FLOPs/token | active params | train tokens/s | load CV | front |".to_string(),
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |".to_string(),
    ];
    for row in methods {
        lines.push(format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            row.method,
            pm(row.get("valid_bits_per_byte"), 1.0, 4),
            pm(row.get("test_bits_per_byte"), 1.0, 4),
            pm(row.get("mean_k"), 1.0, 3),
            pm(row.get("fraction_k1"), 100.0, 1),
            whole(row.get("flops_per_token")),
            whole(row.get("params_active")),
            whole(row.get("steady_tokens_per_s")),
            pm(row.get("load_cv"), 1.0, 3),
            front(row),
        ));
    }
    lines.join("\n")
}

/// Each routed method's language-model runs (its seeds), in method order.
fn routed_lm_runs(table: &SweepTable) -> Vec<(&str, Vec<&LmMetrics>)> {
    table
        .methods
        .iter()
        .map(|method| {
            let runs: Vec<&LmMetrics> = table
                .runs
                .iter()
                .filter(|run| run.method == method.method)
                .filter_map(|run| match &run.metrics {
                    WorkloadMetrics::Lm(metrics) if !metrics.valid.blocks.is_empty() => {
                        Some(metrics)
                    }
                    _ => None,
                })
                .collect();
            (method.method.as_str(), runs)
        })
        .filter(|(_, runs)| !runs.is_empty())
        .collect()
}

/// The mean of the values `read` finds, to three decimals, or `-`.
fn mean_cell(runs: &[&LmMetrics], read: impl Fn(&LmMetrics) -> Option<f64>) -> String {
    let values: Vec<f64> = runs.iter().filter_map(|m| read(m)).collect();
    Spread::of(&values).map_or("-".into(), |s| format!("{:.3}", s.mean))
}

/// A Markdown table with a caption line above it.
fn captioned(caption: &str, header: &[String], rows: Vec<Vec<String>>) -> String {
    let header: Vec<&str> = header.iter().map(String::as_str).collect();
    format!("{caption}\n\n{}", table(&header, &rows))
}

/// Load CV of every MoE block (validation split), per routed method.
fn lm_block_load_table(table: &SweepTable) -> String {
    let methods = routed_lm_runs(table);
    let mut blocks: Vec<usize> = methods
        .iter()
        .flat_map(|(_, runs)| {
            runs.iter()
                .flat_map(|m| m.valid.blocks.iter().map(|b| b.block))
        })
        .collect();
    blocks.sort_unstable();
    blocks.dedup();
    let header: Vec<String> = std::iter::once("method".to_string())
        .chain(blocks.iter().map(|b| format!("block {b}")))
        .collect();
    let rows = methods
        .iter()
        .map(|(method, runs)| {
            let cells = blocks.iter().map(|&block| {
                mean_cell(runs, |m| {
                    let routing = m.valid.blocks.iter().find(|b| b.block == block)?;
                    Some(routing.load.cv)
                })
            });
            std::iter::once(method.to_string()).chain(cells).collect()
        })
        .collect();
    captioned(
        "Load CV per MoE block (validation split, mean over seeds; 0 is perfect balance): which blocks spread their tokens unevenly over the experts.",
        &header,
        rows,
    )
}

/// Mean k by the class of the predicted byte and its place in a word (validation split), per
/// routed method.
fn lm_class_table(table: &SweepTable) -> String {
    let classes: Vec<&str> = [
        ByteClass::Letter,
        ByteClass::Digit,
        ByteClass::Whitespace,
        ByteClass::Punctuation,
    ]
    .map(ByteClass::name)
    .into_iter()
    .chain(WordPosition::ALL.map(WordPosition::name))
    .collect();
    let header: Vec<String> = std::iter::once("method")
        .chain(classes.iter().copied())
        .map(String::from)
        .collect();
    let rows = routed_lm_runs(table)
        .iter()
        .map(|(method, runs)| {
            let cells = classes.iter().map(|&class| {
                mean_cell(runs, |m| {
                    let valid = &m.valid;
                    let mut scores = valid.by_class.iter().chain(&valid.by_word_position);
                    scores.find(|s| s.class == class)?.mean_k
                })
            });
            std::iter::once(method.to_string()).chain(cells).collect()
        })
        .collect();
    captioned(
        "Mean k by the class of the predicted byte (validation split, mean over seeds): where the router spends its second expert.",
        &header,
        rows,
    )
}
