//! Replays a routing trace through the offloading engine under every policy and times it:
//! time to first token (the prefill batch through every block) and the latency of each decode
//! step, with the engine's and the store's accounting. Generic over the backend and the store.
//!
//! Every policy of a shape runs on the same inputs and routing, from cold caches; before the
//! first timed run, a resident pass over a prefill and a decode batch compiles the kernels.
//! Each timed batch ends with a device sync (a decode step needs its output before the next).

use std::time::{Duration, Instant};

use burn::tensor::{DType, Tensor, TensorData};
use moe_model::offload::{
    BlockRouting, CopyLog, ExpertStore, OffloadBackend, OffloadEngine, OffloadPolicy, OffloadStats,
};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde::Serialize;

use super::OffloadError;
use super::settings::{RunSettings, ShapePlan};
use super::synthetic::{INJECTED_PREDICTOR, inject_predictions};
use crate::routing_trace::RoutingTrace;

/// Makes the stores a shape's policies run on (host experts are made once per shape).
pub trait StoreFactory<B: OffloadBackend> {
    /// The store type.
    type Store: ExpertStore<B>;

    /// A store with `slots` empty slots per block.
    fn store(&self, slots: usize) -> Result<Self::Store, OffloadError>;
}

/// One policy's measurement on one shape.
#[derive(Clone, Debug, Serialize)]
pub struct PolicyResult {
    /// Shape label.
    pub shape: String,
    /// Policy name.
    pub policy: String,
    /// Cache slots per block.
    pub slots: usize,
    /// Injected prediction accuracy (rows of the accuracy curve), else `None`.
    pub accuracy: Option<f64>,
    /// Time to first token: the prefill batch through every block, in ms.
    pub ttft_ms: f64,
    /// Mean decode step latency, in ms.
    pub decode_ms_mean: f64,
    /// Median decode step latency, in ms.
    pub decode_ms_p50: f64,
    /// 90th percentile of the decode step latency, in ms.
    pub decode_ms_p90: f64,
    /// What the engine did (prefill and decode).
    pub stats: OffloadStats,
    /// Share of the prefill's expert reads served from the cache.
    pub prefill_hit_rate: f64,
    /// Share of the decode steps' expert reads served from the cache.
    pub decode_hit_rate: f64,
    /// What the store copied.
    #[serde(skip)]
    pub copies: CopyLog,
    /// Bytes copied host to device.
    pub bytes_copied: usize,
    /// Time the copies took (device time on CUDA), in ms.
    pub copy_ms: f64,
    /// Host time spent waiting for experts, in ms.
    pub wait_ms: f64,
    /// Share of the copy time hidden behind compute: 1 - (latency - resident latency) / copy
    /// time, over prefill and decode, clamped to 0..=1 (`None` without copies).
    pub hidden_share: Option<f64>,
    /// On-demand TTFT / this TTFT.
    pub speedup_ttft: f64,
    /// On-demand mean decode latency / this one.
    pub speedup_decode: f64,
    total: Duration,
}

/// Every policy of `plan`, then the accuracy curve (prefetch with injected predictions), on
/// stores from `factory`.
pub fn run_shape<B: OffloadBackend, F: StoreFactory<B>>(
    plan: &ShapePlan,
    run: &RunSettings,
    factory: &F,
    dtype: DType,
    device: &B::Device,
) -> Result<Vec<PolicyResult>, OffloadError> {
    let shape = plan.block_shape();
    let inputs = Inputs::<B>::new(&plan.trace, plan.shape.d_model, run.seed, dtype, device);
    let measure = |policy: &OffloadPolicy,
                   trace: &RoutingTrace,
                   predictor: usize,
                   accuracy,
                   decode_steps: usize| {
        let slots = match policy {
            OffloadPolicy::Resident => plan.shape.num_experts,
            _ => plan.shape.slots,
        };
        let routings = routings::<B>(trace, predictor, run.distance, dtype, device);
        let store = factory.store(slots)?;
        let mut engine = OffloadEngine::new(store, shape, policy.clone(), run.distance)
            .map_err(|e| OffloadError::Internal(e.to_string()))?;
        if *policy == OffloadPolicy::Resident {
            engine.preload();
        }
        // Loading the resident model is setup, not a cost of serving.
        let setup = engine.store_mut().copy_log();
        let timed = |engine: &mut OffloadEngine<B, F::Store>, x: &Tensor<B, 2>, batch: usize| {
            let start = Instant::now();
            let out = engine.run_batch(x.clone(), &routings[batch]);
            B::sync(device).map_err(|e| OffloadError::Internal(format!("{e:?}")))?;
            drop(out);
            Ok::<Duration, OffloadError>(start.elapsed())
        };
        let ttft = timed(&mut engine, &inputs.prefill, 0)?;
        let prefill = engine.stats();
        let decode = inputs
            .decode
            .iter()
            .take(decode_steps)
            .enumerate()
            .map(|(step, x)| timed(&mut engine, x, step + 1))
            .collect::<Result<Vec<_>, _>>()?;
        let total = engine.store_mut().copy_log();
        let copies = CopyLog {
            copies: total.copies - setup.copies,
            bytes: total.bytes - setup.bytes,
            copy_time: total.copy_time.saturating_sub(setup.copy_time),
        };
        let mut row = result(
            &plan.shape.name,
            policy.to_string(),
            slots,
            accuracy,
            ttft,
            decode,
            engine.stats(),
            copies,
        );
        row.prefill_hit_rate = prefill.hit_rate();
        let all = engine.stats();
        row.decode_hit_rate = match all.expert_uses - prefill.expert_uses {
            0 => 1.0,
            uses => (all.hits - prefill.hits) as f64 / uses as f64,
        };
        Ok::<_, OffloadError>(row)
    };

    // Warm-up: compile every kernel of the prefill and of a decode batch, on all experts and
    // on the slots (the dispatch over slots, the groups' concatenation).
    for policy in [OffloadPolicy::Resident, OffloadPolicy::OnDemand] {
        measure(&policy, &plan.trace, 0, None, 1)?;
    }
    let steps = inputs.decode.len();

    let mut rows = Vec::new();
    for policy in &plan.policies {
        let predictor = match policy {
            OffloadPolicy::Prefetch { predictor } => plan
                .trace
                .predictors
                .iter()
                .position(|p| p == predictor)
                .expect("checked by the plan"),
            _ => 0,
        };
        println!("  {} {policy} ...", plan.shape.name);
        rows.push(measure(policy, &plan.trace, predictor, None, steps)?);
    }
    for (i, &accuracy) in run.accuracies.iter().enumerate() {
        let trace = inject_predictions(&plan.trace, accuracy, run.seed + 1 + i as u64);
        let policy = OffloadPolicy::Prefetch {
            predictor: INJECTED_PREDICTOR.into(),
        };
        println!("  {} {policy} accuracy {accuracy} ...", plan.shape.name);
        rows.push(measure(&policy, &trace, 0, Some(accuracy), steps)?);
    }
    compare(&mut rows);
    Ok(rows)
}

/// The prefill input and one input per decode step, drawn once per shape.
pub(super) struct Inputs<B: OffloadBackend> {
    /// `[T_prefill, d]`
    pub(super) prefill: Tensor<B, 2>,
    /// One `[T_decode, d]` per decode step.
    pub(super) decode: Vec<Tensor<B, 2>>,
}

impl<B: OffloadBackend> Inputs<B> {
    /// Draws the inputs of every batch of `trace`.
    pub(super) fn new(
        trace: &RoutingTrace,
        d: usize,
        seed: u64,
        dtype: DType,
        device: &B::Device,
    ) -> Self {
        let mut rng = StdRng::seed_from_u64(seed ^ 0x1a9u64);
        let mut draw = |tokens: usize| {
            let values: Vec<f32> = (0..tokens * d)
                .map(|_| rng.random_range(-1.0f32..1.0))
                .collect();
            Tensor::<B, 2>::from_data(TensorData::new(values, [tokens, d]), (device, dtype))
        };
        let tokens = |batch: usize| trace.batches[batch].blocks[0].expert_ids.len();
        Self {
            prefill: draw(tokens(0)),
            decode: (1..trace.batches.len()).map(|b| draw(tokens(b))).collect(),
        }
    }
}

/// Each batch's routing per block, with `predictor`'s sets at `distance` and equal combine
/// weights for the experts a token uses.
pub(super) fn routings<B: OffloadBackend>(
    trace: &RoutingTrace,
    predictor: usize,
    distance: usize,
    dtype: DType,
    device: &B::Device,
) -> Vec<Vec<BlockRouting<B>>> {
    trace
        .batches
        .iter()
        .map(|batch| {
            batch
                .blocks
                .iter()
                .map(|block| {
                    let tokens = block.expert_ids.len();
                    let slots = trace.slots;
                    let expert_ids: Vec<i32> = block.expert_ids.iter().flatten().copied().collect();
                    let weights: Vec<f32> = block
                        .expert_ids
                        .iter()
                        .flat_map(|token| {
                            let k = token.iter().filter(|&&e| e >= 0).count().max(1) as f32;
                            token
                                .iter()
                                .map(move |&e| if e >= 0 { 1.0 / k } else { 0.0 })
                        })
                        .collect();
                    BlockRouting {
                        expert_ids,
                        slots,
                        weights: Tensor::from_data(
                            TensorData::new(weights, [tokens, slots]),
                            (device, dtype),
                        ),
                        predicted: block
                            .predicted
                            .get(predictor)
                            .and_then(|p| p.get(distance - 1))
                            .cloned()
                            .unwrap_or_default(),
                    }
                })
                .collect()
        })
        .collect()
}

#[allow(clippy::too_many_arguments, reason = "one row's measured values")]
fn result(
    shape: &str,
    policy: String,
    slots: usize,
    accuracy: Option<f64>,
    ttft: Duration,
    decode: Vec<Duration>,
    stats: OffloadStats,
    copies: CopyLog,
) -> PolicyResult {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let mut sorted: Vec<f64> = decode.iter().map(|&d| ms(d)).collect();
    sorted.sort_by(f64::total_cmp);
    let percentile = |p: f64| match sorted.len() {
        0 => 0.0,
        n => sorted[((n - 1) as f64 * p).round() as usize],
    };
    let mean = match sorted.len() {
        0 => 0.0,
        n => sorted.iter().sum::<f64>() / n as f64,
    };
    PolicyResult {
        shape: shape.to_string(),
        policy,
        slots,
        accuracy,
        ttft_ms: ms(ttft),
        decode_ms_mean: mean,
        decode_ms_p50: percentile(0.5),
        decode_ms_p90: percentile(0.9),
        stats,
        prefill_hit_rate: 1.0,
        decode_hit_rate: 1.0,
        copies,
        bytes_copied: copies.bytes,
        copy_ms: ms(copies.copy_time),
        wait_ms: ms(stats.wait_time),
        hidden_share: None,
        speedup_ttft: 1.0,
        speedup_decode: 1.0,
        total: ttft + decode.iter().sum::<Duration>(),
    }
}

/// Fills the columns that compare rows of one shape: speed-ups over on-demand, and the share
/// of copy time hidden against the resident latency.
fn compare(rows: &mut [PolicyResult]) {
    let find = |name: &str| {
        rows.iter()
            .find(|r| r.policy == name && r.accuracy.is_none())
    };
    let on_demand = find("on-demand").map(|r| (r.ttft_ms, r.decode_ms_mean));
    let resident = find("resident").map(|r| r.total);
    for row in rows.iter_mut() {
        if let Some((ttft, decode)) = on_demand {
            row.speedup_ttft = ttft / row.ttft_ms.max(1e-9);
            row.speedup_decode = if row.decode_ms_mean > 0.0 {
                decode / row.decode_ms_mean
            } else {
                1.0
            };
        }
        if let Some(floor) = resident
            && row.copies.copy_time > Duration::ZERO
        {
            let exposed = row.total.saturating_sub(floor).as_secs_f64();
            let share = 1.0 - exposed / row.copies.copy_time.as_secs_f64();
            row.hidden_share = Some(share.clamp(0.0, 1.0));
        }
    }
}
