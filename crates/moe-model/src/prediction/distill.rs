//! Distillation of a [`GatingHead`] from the real router: binary cross-entropy between the head's
//! per-expert probabilities (sigmoid of its scores) and the router's choices (1 for each expert
//! it chose, 0 for the others), with Adam over minibatches in a seeded order. A multi-label loss
//! rather than a softmax over experts: the router picks one expert for some tokens and two for
//! others, and the head's set is every expert it gives probability >= 1/2, so the number of
//! experts it predicts follows the router's without calibrating a threshold.

use std::ops::ControlFlow;
use std::time::Instant;

use burn::config::Config;
use burn::module::AutodiffModule;
use burn::optim::{AdamConfig, GradientsParams, Optimizer};
use burn::tensor::activation::log_sigmoid;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Tensor, TensorData};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use super::gating::GatingHead;
use crate::InvalidValue;
use crate::backend_ext::Routing;

/// Rows per forward when the loss over all training points is measured.
const LOSS_CHUNK: usize = 4096;

/// How a head is distilled.
#[derive(Config, Debug)]
pub struct DistillConfig {
    /// Passes over the training points.
    #[config(default = 10)]
    pub epochs: usize,
    /// Points per Adam step.
    #[config(default = 256)]
    pub batch_size: usize,
    /// Adam learning rate.
    #[config(default = 1e-2)]
    pub learning_rate: f64,
    /// Seed of the order of the points in every epoch.
    #[config(default = 0)]
    pub seed: u64,
}

impl DistillConfig {
    /// Checks every field against its allowed range.
    pub fn validate(&self) -> Result<(), InvalidValue> {
        for (field, value) in [("epochs", self.epochs), ("batch_size", self.batch_size)] {
            if value == 0 {
                return Err(InvalidValue::new(field, value, "must be >= 1"));
            }
        }
        if !(self.learning_rate > 0.0 && self.learning_rate.is_finite()) {
            return Err(InvalidValue::new(
                "learning_rate",
                self.learning_rate,
                "must be a finite number > 0",
            ));
        }
        Ok(())
    }
}

/// The training points of one head, on the host.
#[derive(Clone, Copy, Debug)]
pub struct DistillData<'a> {
    /// The source block's normed inputs. `[N, d]` row-major
    pub features: &'a [f32],
    /// The target block's choices, 1 for a chosen expert ([`choice_targets`]). `[N, E]` row-major
    pub targets: &'a [f32],
    /// Width d of a feature row.
    pub d_model: usize,
    /// Experts E of the target block.
    pub num_experts: usize,
}

impl DistillData<'_> {
    /// Number of training points N.
    pub fn len(&self) -> usize {
        self.features.len() / self.d_model.max(1)
    }

    /// Whether there are no points.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The features and targets of the points `rows`, as tensors on `device`.
    fn batch<B: Backend>(
        &self,
        rows: &[usize],
        device: &B::Device,
    ) -> (Tensor<B, 2>, Tensor<B, 2>) {
        let (d, e) = (self.d_model, self.num_experts);
        let mut features = Vec::with_capacity(rows.len() * d);
        let mut targets = Vec::with_capacity(rows.len() * e);
        for &row in rows {
            features.extend_from_slice(&self.features[row * d..(row + 1) * d]);
            targets.extend_from_slice(&self.targets[row * e..(row + 1) * e]);
        }
        (
            Tensor::from_data(TensorData::new(features, [rows.len(), d]), device),
            Tensor::from_data(TensorData::new(targets, [rows.len(), e]), device),
        )
    }
}

/// What distillation did.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DistillReport {
    /// Mean loss (nats) over all training points before the first step, then after each epoch.
    pub losses: Vec<f64>,
    /// Adam steps taken.
    pub steps: usize,
    /// Wall time, seconds.
    pub seconds: f64,
}

/// The router's choices as targets: 1 for each expert a token was routed to, 0 elsewhere
/// (`[T, E]` row-major; a token with no expert, under expert choice, has an all-zero row).
pub fn choice_targets<B: Backend>(routing: &Routing<B>) -> Vec<f32> {
    let [_, slots] = routing.expert_ids.dims();
    let [tokens, num_experts] = routing.logits.dims();
    let ids: Vec<i64> = routing.expert_ids.to_data().iter::<i64>().collect();
    let mut targets = vec![0.0; tokens * num_experts];
    for (t, row) in targets.chunks_mut(num_experts).enumerate() {
        for &e in ids[t * slots..(t + 1) * slots].iter().filter(|&&e| e >= 0) {
            row[e as usize] = 1.0;
        }
    }
    targets
}

/// Binary cross-entropy of the head's per-expert probabilities against the 0/1 targets, summed
/// over experts, mean over rows (in nats).
///
/// # Shapes
/// - `logits`, `targets`: `[T, E]` -> `[1]`
fn choice_loss<B: Backend>(logits: Tensor<B, 2>, targets: Tensor<B, 2>) -> Tensor<B, 1> {
    let chosen = targets.clone() * log_sigmoid(logits.clone()); // [T, E]
    let other = targets.neg().add_scalar(1.0) * log_sigmoid(logits.neg()); // [T, E]
    (chosen + other).sum_dim(1).mean().neg()
}

/// Mean loss of `head` over all points of `data`.
fn full_loss<B: Backend>(head: &GatingHead<B>, data: &DistillData, device: &B::Device) -> f64 {
    let rows: Vec<usize> = (0..data.len()).collect();
    let total: f64 = rows
        .chunks(LOSS_CHUNK)
        .map(|chunk| {
            let (features, targets) = data.batch::<B>(chunk, device);
            let loss = choice_loss(head.forward(features), targets);
            loss.into_scalar().elem::<f64>() * chunk.len() as f64
        })
        .sum();
    total / data.len().max(1) as f64
}

/// Trains `head` on `data` with Adam; after each epoch `on_epoch(epoch, loss)` may stop the
/// training early (the caller's interrupt). Returns the trained head and its loss history.
pub fn distill<B: AutodiffBackend>(
    mut head: GatingHead<B>,
    data: &DistillData,
    config: &DistillConfig,
    device: &B::Device,
    mut on_epoch: impl FnMut(usize, f64) -> ControlFlow<()>,
) -> (GatingHead<B>, DistillReport) {
    let started = Instant::now();
    let mut optimizer = AdamConfig::new().init::<B, GatingHead<B>>();
    let mut rng = StdRng::seed_from_u64(config.seed);
    let mut order: Vec<usize> = (0..data.len()).collect();
    let mut losses = vec![full_loss(&head.valid(), data, device)];
    let mut steps = 0;
    for epoch in 1..=config.epochs {
        order.shuffle(&mut rng);
        for rows in order.chunks(config.batch_size) {
            let (features, targets) = data.batch::<B>(rows, device);
            let loss = choice_loss(head.forward(features), targets);
            let grads = GradientsParams::from_grads(loss.backward(), &head);
            head = optimizer.step(config.learning_rate, head, grads);
            steps += 1;
        }
        losses.push(full_loss(&head.valid(), data, device));
        if on_epoch(epoch, losses[epoch]).is_break() {
            break;
        }
    }
    let report = DistillReport {
        losses,
        steps,
        seconds: started.elapsed().as_secs_f64(),
    };
    (head, report)
}
