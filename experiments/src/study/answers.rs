//! The project's three questions answered in words from whatever result files were found, each
//! sentence naming its file; and what the measurements do not support.

use super::generation::GenerationTimings;
use super::layer_speed::{LayerRow, row};
use super::routing_prediction::{PolicyRow, best_prefetch};
use super::sources::{Found, LM_SWEEPS};
use super::studies::{Study, quality_format, quality_words, workload_name};

/// What the answers are drawn from (each part optional).
pub struct Evidence<'a> {
    /// The language-model routing study.
    pub lm: Option<&'a Study>,
    /// The synthetic task's routing study.
    pub task: Option<&'a Study>,
    /// The layer benchmark and its rows.
    pub bench: Option<(&'a Found, &'a [LayerRow])>,
    /// Offloading on the language model's routing and its rows.
    pub offload: Option<(&'a Found, &'a [PolicyRow])>,
    /// Generation timings of the language-model study's runs.
    pub generation: Option<&'a GenerationTimings>,
}

/// The prefill and decode layer cases the answers quote.
const PREFILL_VK: &str = "layer mixtral T=4096 mean-k 1.3";
const PREFILL_TOP2: &str = "layer mixtral T=4096 top-2";
const DECODE_VK: &str = "layer mixtral T=1 mean-k 1.3";
const DECODE_TOP2: &str = "layer mixtral T=1 top-2";

/// The answers section.
pub fn answers(evidence: &Evidence) -> String {
    [
        format!(
            "**1. What inference speed-up does variable-k routing give over a dense MLP?** {}",
            speed(evidence)
        ),
        format!(
            "**2. What does letting confident tokens use one expert do to accuracy and load \
             balance?** {}",
            one_expert(evidence)
        ),
        format!(
            "**3. Does a variable-k MoE keep quality at lower cost?** {}",
            lower_cost(evidence)
        ),
    ]
    .join("\n\n")
}

fn missing(what: &str, command: &str) -> String {
    format!("No {what} was found; `{command}` measures it.")
}

fn speed(evidence: &Evidence) -> String {
    let mut said = Vec::new();
    match evidence.bench {
        Some((found, rows)) => {
            if let Some(vk) = row(rows, PREFILL_VK) {
                let mut sentence = format!(
                    "At prefill (Mixtral-sized layer, 4096 tokens, mean k {:.2}) the variable-k \
                     layer takes {:.0} us",
                    vk.mean_k.unwrap_or(f64::NAN),
                    vk.moe_us
                );
                if let Some(dense) = vk.dense_active_us {
                    sentence += &format!(
                        ", {:.2}x the speed of the dense MLP with top-2's active parameters",
                        dense / vk.moe_us
                    );
                }
                if let Some(dense) = vk.dense_total_us {
                    sentence += &format!(
                        " and {:.2}x that of the dense MLP with all the experts' parameters",
                        dense / vk.moe_us
                    );
                }
                if let Some(top2) = row(rows, PREFILL_TOP2) {
                    sentence += &format!(
                        "; top-2 routing of the same layer takes {:.0} us, so variable-k is \
                         {:.2}x faster than top-2",
                        top2.moe_us,
                        top2.moe_us / vk.moe_us
                    );
                }
                said.push(sentence + &format!(" (source: {}).", found.cite()));
            }
            if let Some(vk) = row(rows, DECODE_VK) {
                let mut sentence =
                    format!("At decode (one token) the layer takes {:.1} us", vk.moe_us);
                if let Some(dense) = vk.dense_active_us {
                    sentence += &format!(
                        " against {:.1} us for the dense MLP with top-2's active parameters \
                         ({:.2}x)",
                        dense,
                        dense / vk.moe_us
                    );
                }
                if let Some(top2) = row(rows, DECODE_TOP2) {
                    sentence += &format!(
                        " and {:.1} us for top-2 routing ({:.2}x)",
                        top2.moe_us,
                        top2.moe_us / vk.moe_us
                    );
                }
                said.push(sentence + &format!(" (source: {}).", found.cite()));
            }
        }
        None => said.push(missing(
            "layer benchmark",
            "just bench --backend cuda --dtype bf16",
        )),
    }
    if let Some(lm) = evidence.lm
        && let Some(vk) = lm.variable_k()
        && let Some(c) = lm.compare(&vk.method, "dense-active", "steady_tokens_per_s")
    {
        said.push(format!(
            "Training the language model, {} runs at {:.0} tokens/s against {:.0} for the \
             dense model with top-2's active parameters ({:.2}x; source: {}).",
            vk.method,
            c.value.mean,
            c.base_value.mean,
            c.value.mean / c.base_value.mean,
            lm.found.cite()
        ));
    }
    if let (Some(lm), Some(timings)) = (evidence.lm, evidence.generation)
        && let Some(vk) = lm.variable_k()
    {
        said.extend(timings.devices().into_iter().filter_map(|device| {
            let mine = timings.row(&vk.method, device)?;
            let dense = timings.row("dense-active", device)?;
            let mut sentence = format!(
                "Generating with the language model ({device}, a {}-byte prompt), {} takes \
                 {:.2} ms to the first token and {:.3} ms per further token; the dense model \
                 with top-2's active parameters takes {:.2} and {:.3} ms, so variable-k decodes \
                 at {:.2}x its speed",
                mine.prompt_bytes,
                vk.method,
                mine.ttft_ms.mean,
                mine.decode_ms.mean,
                dense.ttft_ms.mean,
                dense.decode_ms.mean,
                dense.decode_ms.mean / mine.decode_ms.mean
            );
            if let Some(top2) = timings.row("top2", device) {
                sentence += &format!(
                    "; top-2 takes {:.3} ms per token ({:.2}x variable-k's time)",
                    top2.decode_ms.mean,
                    top2.decode_ms.mean / mine.decode_ms.mean
                );
            }
            Some(
                sentence
                    + &format!(
                        " (source: the runs' generation timings, `{}`).",
                        timings.command
                    ),
            )
        }));
    }
    said.join(" ")
}

/// The study's method with auxiliary-loss-free bias balancing on variable-k routing.
const BIAS_BALANCED: &str = "balance-bias";

fn one_expert(evidence: &Evidence) -> String {
    let mut said = Vec::new();
    for study in [evidence.lm, evidence.task].into_iter().flatten() {
        let Some(vk) = study.variable_k() else {
            continue;
        };
        let (scale, digits) = quality_format(study.workload);
        let k1 = vk.get("fraction_k1").map_or(String::new(), |s| {
            format!(", one expert for {:.0}% of tokens", 100.0 * s.mean)
        });
        let mut sentence = format!(
            "On {}, {} (mean k {:.2}{k1})",
            workload_name(study.workload),
            vk.method,
            vk.get("mean_k").map_or(f64::NAN, |s| s.mean),
        );
        if let Some(c) = study.quality(&vk.method, "top2") {
            sentence += &format!(
                " reaches {} {}",
                quality_words(study.workload),
                c.words(scale, digits)
            );
        }
        if let Some(c) = study.compare(&vk.method, "top2", "load_cv") {
            sentence += &format!("; its load CV is {}", c.words(1.0, 3));
        }
        if let Some(c) = study.compare(BIAS_BALANCED, &vk.method, "load_cv") {
            sentence += &format!(
                ". Bias balancing without an auxiliary loss ({BIAS_BALANCED}) brings the load CV \
                 to {}",
                c.words(1.0, 3)
            );
            if let Some(q) = study.quality(BIAS_BALANCED, "top2") {
                sentence += &format!(
                    " at {} {}",
                    quality_words(study.workload),
                    q.words(scale, digits)
                );
            }
        }
        said.push(sentence + &format!(" (source: {}).", study.found.cite()));
    }
    if said.is_empty() {
        return missing("routing study", LM_SWEEPS[0].command);
    }
    said.join(" ")
}

fn lower_cost(evidence: &Evidence) -> String {
    let Some(study) = evidence.lm.or(evidence.task) else {
        return missing("routing study", LM_SWEEPS[0].command);
    };
    let words = quality_words(study.workload);
    let (scale, digits) = quality_format(study.workload);
    let mut said = vec![format!("On {}:", workload_name(study.workload))];
    if let Some(c) = study.quality("top2", "dense-active") {
        said.push(format!(
            "top-2 against the dense model with the same active parameters, {words}: {}.",
            c.words(scale, digits)
        ));
    }
    if let Some(vk) = study.variable_k() {
        if let Some(c) = study.quality(&vk.method, "dense-active") {
            said.push(format!(
                "{} against that dense model: {}.",
                vk.method,
                c.words(scale, digits)
            ));
        }
        if let Some(c) = study.compare(&vk.method, "top2", "flops_per_token") {
            said.push(format!(
                "{} spends {:.0}% of top-2's FLOPs per token (the whole model's).",
                vk.method,
                100.0 * c.value.mean / c.base_value.mean
            ));
        }
    }
    if let Some(c) = study.quality("dense-total", "top2") {
        said.push(format!(
            "The dense model with all the experts' parameters: {}.",
            c.words(scale, digits)
        ));
    }
    said.push(format!("(Source: {}.)", study.found.cite()));
    if let Some((found, rows)) = evidence.offload
        && let Some((prefetch, on_demand)) = best_prefetch(rows, &rows[0].shape)
    {
        said.push(format!(
            "Offloaded ({} shape), {} decodes a step in {:.2} ms against {:.2} ms loading \
             on demand ({:.2}x; source: {}).",
            prefetch.shape,
            prefetch.policy,
            prefetch.decode_ms,
            on_demand.decode_ms,
            on_demand.decode_ms / prefetch.decode_ms,
            found.cite()
        ));
    }
    said.join(" ")
}

/// What the measurements found do not support, as a list.
pub fn limits(evidence: &Evidence) -> String {
    let mut items = vec![
        "Every model here is small (the language model has a few million parameters and trains \
         on tens of millions of bytes): whether the differences hold at scale is not measured."
            .to_string(),
        "A difference within the seed spread is not a difference; the tables give mean ± \
         standard deviation over seeds so a reader can tell."
            .to_string(),
    ];
    match evidence.lm {
        None => items.push("No language-model study was found.".into()),
        Some(lm) => {
            if lm.sweep.seeds < 3 {
                items.push(format!(
                    "The language-model study has {} seed(s): its spreads are not estimates.",
                    lm.sweep.seeds
                ));
            }
            if let Some(partial) = lm.partial() {
                items.push(format!(
                    "The language-model study is not complete. {partial}"
                ));
            }
            if lm.sweep.jobs > 1 {
                items.push(format!(
                    "The language-model study trained {} runs at a time on one device, so its \
                     tokens per second are shares of the device: they compare methods, not \
                     what one run gets alone.",
                    lm.sweep.jobs
                ));
            }
            if lm.found.command != LM_SWEEPS[0].command {
                items.push(format!(
                    "The language-model study read is `{}`, not the H100-sized one (`{}`).",
                    lm.found.path.display(),
                    LM_SWEEPS[0].file
                ));
            }
        }
    }
    match evidence.bench {
        None => items.push("No layer timings were found, so no speed-up is claimed.".into()),
        Some((_, rows)) => {
            if row(rows, DECODE_TOP2).is_none() {
                items.push(
                    "The benchmark's decode rows are variable-k only: variable-k against top-2 \
                     at decode is not measured."
                        .into(),
                );
            }
        }
    }
    if evidence.offload.is_none() {
        items.push("Offloading was not replayed on the language model's routing.".into());
    }
    if evidence.lm.is_some() && evidence.generation.is_none() {
        items.push(
            "Generation was not timed on the language-model study's runs (`just time-generation \
             <study>` keeps the timings beside each run), so no generation speed-up is claimed."
                .into(),
        );
    }
    items
        .iter()
        .map(|item| format!("- {item}"))
        .collect::<Vec<_>>()
        .join("\n")
}
