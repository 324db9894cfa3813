//! What an `offload` run measures: `configs/offload.toml` with `--set` overrides (its `[quick]`
//! section with `--quick`), then the command-line flags, checked into one plan per layer shape
//! before any device work.

use std::path::{Path, PathBuf};

use moe_model::Activation;
use moe_model::offload::{BlockShape, OffloadPolicy};
use serde::{Deserialize, Serialize};

use super::OffloadError;
use super::synthetic::SyntheticRouting;
use crate::backend::FloatType;
use crate::config::apply_override;
use crate::routing_trace::RoutingTrace;

/// The settings file: run fields, the synthetic routing, the shapes, and the CI-sized overrides.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SettingsFile {
    /// What every shape runs.
    pub run: RunSettings,
    /// The synthetic routing (used without `--trace`).
    pub synthetic: SyntheticSettings,
    /// The layer shapes.
    #[serde(rename = "shape")]
    pub shapes: Vec<ShapeSettings>,
    /// `--quick`: these fields replace the ones above.
    #[serde(default, skip_serializing)]
    pub quick: Option<QuickSettings>,
}

/// Fields of `[run]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSettings {
    /// `resident`, `on-demand`, `prefetch` (every predictor of the trace), `prefetch:<name>`,
    /// `oracle`.
    pub policies: Vec<String>,
    /// Prefetch distance j: block `l` starts the copies of block `l + j`.
    pub distance: usize,
    /// Prediction accuracies of the speed-up curve (injected into the routing).
    pub accuracies: Vec<f64>,
    /// Tokens of the prefill batch (synthetic routing).
    pub prefill_tokens: usize,
    /// Decode steps timed after the prefill (at most those of a trace).
    pub decode_steps: usize,
    /// Tokens per decode step (synthetic routing).
    pub decode_tokens: usize,
    /// Seed of the routing, the predictions, the weights and the inputs.
    pub seed: u64,
}

/// Fields of `[synthetic]` (see `synthetic.rs`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyntheticSettings {
    /// MoE blocks.
    pub blocks: usize,
    /// Zipf exponent of expert popularity.
    pub skew: f64,
    /// Probability that a decode token reuses its previous step's experts.
    pub locality: f64,
    /// Share of tokens that take a single expert.
    pub single_expert_share: f64,
    /// Accuracy of the trace's own predictor (the `prefetch` policy's).
    pub accuracy: f64,
}

/// One `[[shape]]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShapeSettings {
    /// Label in the tables.
    pub name: String,
    /// Model width d.
    pub d_model: usize,
    /// Hidden width F of each expert.
    pub expert_width: usize,
    /// Experts E per block.
    pub num_experts: usize,
    /// Experts per token (synthetic routing).
    pub top_k: usize,
    /// Cache slots per block (every policy but `resident`, which holds all E).
    pub slots: usize,
}

impl ShapeSettings {
    /// Bytes of one SwiGLU expert (`w_in [d, 2F]`, `w_out [F, d]`) in `dtype`.
    pub fn expert_bytes(&self, dtype: FloatType) -> usize {
        3 * self.d_model * self.expert_width * dtype.size()
    }
}

/// Fields of `[quick]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuickSettings {
    /// Replaces `run.prefill_tokens`.
    pub prefill_tokens: usize,
    /// Replaces `run.decode_steps`.
    pub decode_steps: usize,
    /// Replace the shapes.
    #[serde(rename = "shape")]
    pub shapes: Vec<ShapeSettings>,
}

/// Command-line values that replace settings (each `None` when not given); `offload`'s flags.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct OffloadFlags {
    /// Routing and predictions from a trace file (written by `predict`).
    #[arg(long)]
    pub trace: Option<PathBuf>,
    /// Only the shape of this name.
    #[arg(long)]
    pub shape: Option<String>,
    /// Cache slots per block (every shape).
    #[arg(long)]
    pub slots: Option<usize>,
    /// Device budget for all blocks' caches, in GB (sets the slots per block).
    #[arg(long)]
    pub cache_gb: Option<f64>,
    /// Policies, comma-separated: resident, on-demand, prefetch, prefetch:<predictor>, oracle.
    #[arg(long, value_delimiter = ',')]
    pub policies: Option<Vec<String>>,
    /// Prefetch distance j (block l starts the copies of block l + j).
    #[arg(long)]
    pub distance: Option<usize>,
    /// Prediction accuracies of the speed-up curve, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub accuracies: Option<Vec<f64>>,
    /// Tokens of the prefill batch (synthetic routing).
    #[arg(long)]
    pub prefill_tokens: Option<usize>,
    /// Decode steps.
    #[arg(long)]
    pub decode_steps: Option<usize>,
    /// Tokens per decode step (synthetic routing; a serving batch).
    #[arg(long)]
    pub decode_tokens: Option<usize>,
    /// Seed of the routing, predictions, weights and inputs.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Replace a settings field, like the other commands' configs (repeatable; after
    /// `--quick`, before the flags above): `--set run.distance=2`, `--set synthetic.skew=0.5`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
}

/// One shape's measurement, checked.
#[derive(Clone, Debug)]
pub struct ShapePlan {
    /// The shape (slots resolved).
    pub shape: ShapeSettings,
    /// Routing of the prefill (batch 0) and the decode steps, with the predictions.
    pub trace: RoutingTrace,
    /// Where the routing came from (`synthetic` or the trace file).
    pub routing_source: String,
    /// The policies, `prefetch` expanded to one per predictor; `resident` and `on-demand`
    /// always included (the floor and the reference of every speed-up).
    pub policies: Vec<OffloadPolicy>,
    /// Prefetch distance j.
    pub distance: usize,
}

impl ShapePlan {
    /// One MoE block of the shape (SwiGLU experts, as every offloading shape has).
    pub fn block_shape(&self) -> BlockShape {
        BlockShape {
            num_experts: self.shape.num_experts,
            d_model: self.shape.d_model,
            width: self.shape.expert_width,
            activation: Activation::SwiGlu,
        }
    }
}

/// The resolved settings and one plan per shape.
#[derive(Clone, Debug)]
pub struct OffloadPlan {
    /// Settings after `[quick]` and the flags (written into the run directory).
    pub settings: SettingsFile,
    /// The shapes to measure.
    pub shapes: Vec<ShapePlan>,
}

impl OffloadPlan {
    /// Reads `path`, applies `[quick]` and `flags`, checks every value and builds the routing.
    pub fn load(
        path: &Path,
        quick: bool,
        flags: &OffloadFlags,
        dtype: FloatType,
    ) -> Result<Self, OffloadError> {
        let text = std::fs::read_to_string(path).map_err(|e| OffloadError::Settings {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let settings_error = |message: String| OffloadError::Settings {
            path: path.to_path_buf(),
            message,
        };
        let mut value: toml::Value =
            toml::from_str(&text).map_err(|e| settings_error(e.message().to_string()))?;
        for assignment in &flags.overrides {
            apply_override(&mut value, assignment).map_err(|e| settings_error(e.to_string()))?;
        }
        let mut settings: SettingsFile = value.try_into().map_err(|e: toml::de::Error| {
            settings_error(format!("{} (after --set)", e.message()))
        })?;
        if quick {
            let q = settings
                .quick
                .clone()
                .ok_or_else(|| OffloadError::Settings {
                    path: path.to_path_buf(),
                    message: "--quick needs a [quick] section".into(),
                })?;
            settings.run.prefill_tokens = q.prefill_tokens;
            settings.run.decode_steps = q.decode_steps;
            settings.shapes = q.shapes;
        }
        settings.quick = None;
        let file = path.display().to_string();
        let origin = |flag: &str, given: bool, value: &dyn std::fmt::Display| {
            let key = format!("run.{}", flag.replace('-', "_"));
            let set = (flags.overrides.iter().rev())
                .find(|a| a.split_once('=').is_some_and(|(k, _)| k.trim() == key));
            match (given, set) {
                (true, _) => format!("--{flag} {value}"),
                (false, Some(assignment)) => format!("--set {assignment}"),
                (false, None) => file.clone(),
            }
        };
        let run = &mut settings.run;
        if let Some(v) = &flags.policies {
            run.policies = v.clone();
        }
        if let Some(v) = flags.distance {
            run.distance = v;
        }
        if let Some(v) = &flags.accuracies {
            run.accuracies = v.clone();
        }
        if let Some(v) = flags.prefill_tokens {
            run.prefill_tokens = v;
        }
        if let Some(v) = flags.decode_steps {
            run.decode_steps = v;
        }
        if let Some(v) = flags.decode_tokens {
            run.decode_tokens = v;
        }
        if let Some(v) = flags.seed {
            run.seed = v;
        }
        let run = settings.run.clone();
        let invalid =
            |origin: String, field: &str, value: &dyn std::fmt::Display, allowed: String| {
                OffloadError::Invalid {
                    origin,
                    field: field.to_string(),
                    value: value.to_string(),
                    allowed,
                }
            };
        if let Some(bad) = run.accuracies.iter().find(|a| !(0.0..=1.0).contains(*a)) {
            let list = join(&run.accuracies);
            return Err(invalid(
                origin("accuracies", flags.accuracies.is_some(), &list),
                "accuracies",
                bad,
                "every accuracy must be in 0..=1".into(),
            ));
        }
        for (flag, field, value, given) in [
            (
                "prefill-tokens",
                "prefill_tokens",
                run.prefill_tokens,
                flags.prefill_tokens.is_some(),
            ),
            (
                "decode-tokens",
                "decode_tokens",
                run.decode_tokens,
                flags.decode_tokens.is_some(),
            ),
        ] {
            if value == 0 {
                return Err(invalid(
                    origin(flag, given, &value),
                    field,
                    &value,
                    "must be >= 1 (a batch needs at least one token)".into(),
                ));
            }
        }
        check_synthetic(&settings.synthetic, &file)?;
        let policy_origin =
            |list: &[String]| origin("policies", flags.policies.is_some(), &list.join(","));
        if run.policies.is_empty() {
            return Err(invalid(
                policy_origin(&run.policies),
                "policies",
                &"[]",
                "name at least one policy".into(),
            ));
        }
        for name in &run.policies {
            if name != "prefetch" {
                name.parse::<OffloadPolicy>()
                    .map_err(|source| OffloadError::Policy {
                        origin: policy_origin(&run.policies),
                        source,
                    })?;
            }
        }
        let trace_file = match &flags.trace {
            Some(path) => Some(RoutingTrace::load(path).map_err(|e| OffloadError::Trace {
                message: e.to_string(),
            })?),
            None => None,
        };
        let mut shapes: Vec<ShapeSettings> = settings.shapes.clone();
        if let Some(name) = &flags.shape {
            let names: Vec<String> = shapes.iter().map(|s| s.name.clone()).collect();
            shapes.retain(|s| &s.name == name);
            if shapes.is_empty() {
                return Err(invalid(
                    format!("--shape {name}"),
                    "shape",
                    name,
                    format!("the shapes are: {}", names.join(", ")),
                ));
            }
        }
        if let Some(trace) = &trace_file {
            let all = shapes.len();
            shapes.retain(|s| s.num_experts == trace.num_experts);
            if shapes.is_empty() {
                return Err(OffloadError::Trace {
                    message: format!(
                        "{}: the trace has {} experts per block; no shape of {} has that many (a trace replays expert ids 1:1)",
                        flags.trace.as_ref().expect("a trace").display(),
                        trace.num_experts,
                        file
                    ),
                });
            }
            if shapes.len() < all {
                println!(
                    "offload: the trace has {} experts per block; shapes with another count are skipped",
                    trace.num_experts
                );
            }
        }
        for shape in &shapes {
            check_shape(shape, &file)?;
        }
        check_host_memory(
            &run,
            &settings.synthetic,
            &shapes,
            trace_file.as_ref(),
            dtype,
        )?;
        let mut plans = Vec::with_capacity(shapes.len());
        for mut shape in shapes {
            let (trace, routing_source) = match &trace_file {
                Some(trace) => (
                    trim_decode(trace.clone(), run.decode_steps),
                    flags.trace.as_ref().expect("a trace").display().to_string(),
                ),
                None => (
                    SyntheticRouting {
                        blocks: settings.synthetic.blocks,
                        num_experts: shape.num_experts,
                        top_k: shape.top_k,
                        single_expert_share: settings.synthetic.single_expert_share,
                        skew: settings.synthetic.skew,
                        locality: settings.synthetic.locality,
                        prefill_tokens: run.prefill_tokens,
                        decode_steps: run.decode_steps,
                        decode_tokens: run.decode_tokens,
                        accuracy: settings.synthetic.accuracy,
                        max_distance: run.distance.max(1),
                        seed: run.seed,
                    }
                    .generate(),
                    "synthetic".to_string(),
                ),
            };
            if run.distance == 0 || run.distance >= trace.num_blocks {
                return Err(invalid(
                    origin("distance", flags.distance.is_some(), &run.distance),
                    "distance",
                    &run.distance,
                    format!(
                        "must be in 1..={} (less than the {} blocks of the model, at most the \
                         trace's prediction distance)",
                        (trace.num_blocks - 1).min(trace.max_distance),
                        trace.num_blocks
                    ),
                ));
            }
            if run.distance > trace.max_distance {
                return Err(invalid(
                    origin("distance", flags.distance.is_some(), &run.distance),
                    "distance",
                    &run.distance,
                    format!(
                        "the trace predicts at most {} blocks ahead",
                        trace.max_distance
                    ),
                ));
            }
            let slots_origin;
            if let Some(gb) = flags.cache_gb {
                if !(gb > 0.0 && gb.is_finite()) {
                    return Err(invalid(
                        format!("--cache-gb {gb}"),
                        "cache_gb",
                        &gb,
                        "must be a finite number > 0".into(),
                    ));
                }
                let per_block = gb * 1e9 / (trace.num_blocks as f64);
                shape.slots = (per_block / shape.expert_bytes(dtype) as f64).floor() as usize;
                slots_origin = format!("--cache-gb {gb}");
            } else if let Some(slots) = flags.slots {
                shape.slots = slots;
                slots_origin = format!("--slots {slots}");
            } else {
                slots_origin = file.clone();
            }
            let top_k = trace_top_k(&trace);
            if shape.slots < top_k || shape.slots > shape.num_experts {
                return Err(invalid(
                    slots_origin,
                    &format!("slots of shape {}", shape.name),
                    &shape.slots,
                    format!(
                        "the cache must hold one block's top-k and at most every expert: {top_k}..={}",
                        shape.num_experts
                    ),
                ));
            }
            let mut policies = Vec::new();
            for name in &run.policies {
                if name == "prefetch" {
                    policies.extend(trace.predictors.iter().map(|p| OffloadPolicy::Prefetch {
                        predictor: p.clone(),
                    }));
                    continue;
                }
                let policy: OffloadPolicy = name.parse().expect("checked above");
                if let OffloadPolicy::Prefetch { predictor } = &policy
                    && !trace.predictors.contains(predictor)
                {
                    return Err(invalid(
                        policy_origin(&run.policies),
                        "policies",
                        name,
                        format!(
                            "the routing has predictors {}",
                            if trace.predictors.is_empty() {
                                "none".to_string()
                            } else {
                                trace.predictors.join(", ")
                            }
                        ),
                    ));
                }
                policies.push(policy);
            }
            // Speed-ups are stated against on-demand loading and hidden copy time against the
            // resident floor, both measured in the same run.
            for (at, reference) in [OffloadPolicy::Resident, OffloadPolicy::OnDemand]
                .into_iter()
                .enumerate()
            {
                if !policies.contains(&reference) {
                    policies.insert(at, reference);
                }
            }
            if trace.batches.is_empty() {
                return Err(OffloadError::Trace {
                    message: format!("{routing_source}: the trace holds no batch"),
                });
            }
            plans.push(ShapePlan {
                shape,
                trace,
                routing_source,
                policies,
                distance: run.distance,
            });
        }
        Ok(Self {
            settings,
            shapes: plans,
        })
    }
}

/// Checks `[synthetic]`: at least two blocks (prefetching needs a later block), probabilities in
/// [0, 1], a finite skew >= 0.
fn check_synthetic(synthetic: &SyntheticSettings, file: &str) -> Result<(), OffloadError> {
    let invalid = |field: &str, value: String, allowed: &str| OffloadError::Invalid {
        origin: file.to_string(),
        field: format!("synthetic.{field}"),
        value,
        allowed: allowed.to_string(),
    };
    if synthetic.blocks < 2 {
        return Err(invalid(
            "blocks",
            synthetic.blocks.to_string(),
            "must be >= 2 (prefetching copies a later block's experts)",
        ));
    }
    if !(synthetic.skew >= 0.0 && synthetic.skew.is_finite()) {
        return Err(invalid(
            "skew",
            synthetic.skew.to_string(),
            "must be a finite number >= 0",
        ));
    }
    for (field, value) in [
        ("locality", synthetic.locality),
        ("single_expert_share", synthetic.single_expert_share),
        ("accuracy", synthetic.accuracy),
    ] {
        if !(0.0..=1.0).contains(&value) {
            return Err(invalid(field, value.to_string(), "must be in [0, 1]"));
        }
    }
    Ok(())
}

/// Checks one `[[shape]]`: every size >= 1, `top_k` at most `num_experts`, the expert's bytes
/// representable.
fn check_shape(shape: &ShapeSettings, file: &str) -> Result<(), OffloadError> {
    let invalid = |field: &str, value: usize, allowed: String| OffloadError::Invalid {
        origin: file.to_string(),
        field: format!("shape {:?}: {field}", shape.name),
        value: value.to_string(),
        allowed,
    };
    for (field, value) in [
        ("d_model", shape.d_model),
        ("expert_width", shape.expert_width),
        ("num_experts", shape.num_experts),
        ("top_k", shape.top_k),
    ] {
        if value == 0 {
            return Err(invalid(field, value, "must be >= 1".into()));
        }
    }
    if shape.top_k > shape.num_experts {
        return Err(invalid(
            "top_k",
            shape.top_k,
            format!("must be in 1..={} (num_experts)", shape.num_experts),
        ));
    }
    if checked_product(&[3, shape.d_model, shape.expert_width, 4]).is_none()
        || i32::try_from(shape.num_experts).is_err()
    {
        return Err(invalid(
            "expert_width",
            shape.expert_width,
            "d_model x expert_width x num_experts is too large to address".into(),
        ));
    }
    Ok(())
}

/// Refuses settings whose host memory (the experts of every block, the routing, the inputs)
/// exceeds what this machine has, before anything is drawn or allocated; sizes in checked
/// arithmetic.
fn check_host_memory(
    run: &RunSettings,
    synthetic: &SyntheticSettings,
    shapes: &[ShapeSettings],
    trace: Option<&RoutingTrace>,
    dtype: FloatType,
) -> Result<(), OffloadError> {
    let available = crate::limits::available_host_memory();
    for shape in shapes {
        let (blocks, tokens) = match trace {
            Some(trace) => (trace.num_blocks, 0),
            None => (
                synthetic.blocks,
                run.decode_steps
                    .checked_mul(run.decode_tokens)
                    .and_then(|decode| decode.checked_add(run.prefill_tokens))
                    .unwrap_or(usize::MAX),
            ),
        };
        let experts = checked_product(&[blocks, shape.num_experts, 3, shape.d_model])
            .and_then(|n| n.checked_mul(shape.expert_width))
            .and_then(|n| n.checked_mul(dtype.size()));
        // Per token and block: a Vec of top_k ids; per token: its input and output rows.
        let routing = checked_product(&[tokens, blocks, 32 + 4 * shape.top_k.min(1 << 20)]);
        let activations = checked_product(&[tokens, shape.d_model, 2 * 4]);
        let need = experts
            .zip(routing)
            .zip(activations)
            .and_then(|((e, r), a)| e.checked_add(r)?.checked_add(a));
        let too_large = match (need, available) {
            (None, _) => true,
            (Some(need), Some(available)) => need as f64 > 0.9 * available as f64,
            (Some(_), None) => false,
        };
        if too_large {
            return Err(OffloadError::HostMemory {
                shape: shape.name.clone(),
                need: need.map_or("more than 18 EB".into(), |n| crate::limits::bytes(n as f64)),
                available: available.map_or("unknown".into(), |a| crate::limits::bytes(a as f64)),
            });
        }
    }
    Ok(())
}

/// The product of `factors`, `None` on overflow.
fn checked_product(factors: &[usize]) -> Option<usize> {
    factors
        .iter()
        .try_fold(1usize, |acc, &f| acc.checked_mul(f))
}

/// The most experts any token of the trace uses: the smallest cache that can run it.
pub fn trace_top_k(trace: &RoutingTrace) -> usize {
    trace
        .batches
        .iter()
        .flat_map(|b| &b.blocks)
        .flat_map(|b| &b.expert_ids)
        .map(|token| token.iter().filter(|&&e| e >= 0).count())
        .max()
        .unwrap_or(1)
        .max(1)
}

/// The trace's prefill and at most `decode_steps` decode batches.
fn trim_decode(mut trace: RoutingTrace, decode_steps: usize) -> RoutingTrace {
    trace.batches.truncate(1 + decode_steps);
    trace
}

fn join(values: &[f64]) -> String {
    values
        .iter()
        .map(|v| v.to_string())
        .collect::<Vec<_>>()
        .join(",")
}
