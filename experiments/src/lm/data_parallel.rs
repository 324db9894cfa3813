//! One training step of the language model, data parallel over `train.devices` (issue 29) the
//! way burn-train's multi-device strategy trains the task model (`burn-train`'s
//! `step/train.rs` and `strategies/multi/epoch.rs`): one worker thread per device gets the model,
//! forks it onto its device and runs forward and backward on its share of the batch; the first
//! device moves every share's gradients to itself (`GradientsParams::to_device`), adds them
//! (`GradientsAccumulator`) and takes one optimizer step (which clips the sum). Each share's
//! loss is divided by the device count, so the sum is the gradient of the mean loss over the
//! whole batch. On one device the step runs on the calling thread, without copies.
//!
//! What differs from one device, as for the task model: the Switch load-balancing loss is taken
//! per share (it is not a mean over tokens), and the selection bias and mean-k budget are
//! `RunningState`s that Burn averages over the worker threads.

use std::sync::mpsc::{Receiver, Sender, channel};

use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{GradientsAccumulator, GradientsParams, LearningRate, Optimizer};
use burn::tensor::{Int, Tensor, TensorData};
use moe_model::MoeAutodiffBackend;
use moe_model::lm::Lm;

use crate::lm::tokens::{Token, as_ids};

/// The training step of a run: on one device, or on several through one worker each.
pub struct DataParallel<B: MoeAutodiffBackend> {
    /// The device the model and the optimizer live on (the first).
    device: B::Device,
    /// Tokens per window.
    context: usize,
    /// One per device, in order; none when training on one device.
    workers: Vec<Worker<B>>,
}

/// A share of one step for a worker: the model and the windows it runs on.
struct Share<B: MoeAutodiffBackend> {
    model: Lm<B>,
    inputs: Vec<Token>,
    targets: Vec<Token>,
}

/// What a share gives back: its gradients and its mean cross-entropy.
type ShareOutput<B> = (GradientsParams, Tensor<B, 1>);

/// A thread running the shares of one device; it ends when its [`DataParallel`] is dropped.
struct Worker<B: MoeAutodiffBackend> {
    shares: Sender<Share<B>>,
    outputs: Receiver<ShareOutput<B>>,
}

impl<B: MoeAutodiffBackend> DataParallel<B> {
    /// The step over `devices` (at least one; the first holds the model and the optimizer) for
    /// windows of `context` tokens: one worker thread per device when there are several.
    pub fn new(devices: &[B::Device], context: usize) -> Self {
        let workers = match devices.len() {
            1 => Vec::new(),
            count => devices
                .iter()
                .map(|device| Worker::spawn(device.clone(), context, count))
                .collect(),
        };
        Self {
            device: devices[0].clone(),
            context,
            workers,
        }
    }

    /// One optimizer step at learning rate `rate` on the windows `inputs` and their `targets`
    /// (both `[batch * context]`, row-major; `batch` a multiple of the device count): the
    /// trained model and the batch's mean cross-entropy (on the first device).
    pub fn step<O: Optimizer<Lm<B>, B>>(
        &self,
        model: Lm<B>,
        optimizer: &mut O,
        rate: LearningRate,
        inputs: &[Token],
        targets: &[Token],
    ) -> (Lm<B>, Tensor<B, 1>) {
        if self.workers.is_empty() {
            let (grads, loss) =
                share_gradients(&model, inputs, targets, self.context, 1, &self.device);
            return (optimizer.step(rate, model, grads), loss);
        }
        // Forking draws the parameters Burn initialises lazily once, here, so that every
        // replica starts from the same values (a clone of an uninitialised parameter draws its
        // own: `burn-core/src/module/param/base.rs`, `impl Clone for Param`).
        let model = model.fork(&self.device);
        let share = inputs.len() / self.workers.len();
        let windows = inputs.chunks(share).zip(targets.chunks(share));
        for (worker, (inputs, targets)) in self.workers.iter().zip(windows) {
            let share = Share {
                model: model.clone(),
                inputs: inputs.to_vec(),
                targets: targets.to_vec(),
            };
            worker.shares.send(share).expect(STOPPED);
        }
        let mut sum = GradientsAccumulator::new();
        let mut losses = Vec::with_capacity(self.workers.len());
        for worker in &self.workers {
            let (grads, loss) = worker.outputs.recv().expect(STOPPED);
            sum.accumulate(&model, grads.to_device(&self.device, &model));
            losses.push(loss.to_device(&self.device));
        }
        let loss = Tensor::cat(losses, 0).mean();
        (optimizer.step(rate, model, sum.grads()), loss)
    }
}

/// Why a step cannot go on: a worker panicked (its message is the one reported).
const STOPPED: &str = "a data-parallel training worker stopped";

impl<B: MoeAutodiffBackend> Worker<B> {
    /// A thread that runs every share it is sent on `device`, its loss divided by `devices`.
    fn spawn(device: B::Device, context: usize, devices: usize) -> Self {
        let (shares, received) = channel::<Share<B>>();
        let (sent, outputs) = channel();
        std::thread::spawn(move || {
            for share in received {
                let model = share.model.fork(&device);
                let output = share_gradients(
                    &model,
                    &share.inputs,
                    &share.targets,
                    context,
                    devices,
                    &device,
                );
                if sent.send(output).is_err() {
                    break;
                }
            }
        });
        Self { shares, outputs }
    }
}

/// Forward and backward of `model` on `device` over windows of `context` tokens: the gradients
/// of the share's loss (mean cross-entropy plus the MoE layers' auxiliary losses) divided by
/// `shares`, and its mean cross-entropy (outside the graph).
fn share_gradients<B: MoeAutodiffBackend>(
    model: &Lm<B>,
    inputs: &[Token],
    targets: &[Token],
    context: usize,
    shares: usize,
    device: &B::Device,
) -> ShareOutput<B> {
    let n = targets.len();
    let input = Tensor::<B, 2, Int>::from_data(
        TensorData::new(as_ids(inputs), [n / context, context]),
        device,
    );
    let target = Tensor::<B, 1, Int>::from_data(TensorData::new(as_ids(targets), [n]), device);
    let output = model.forward(input);
    let vocab = output.logits.dims()[2];
    let loss = CrossEntropyLossConfig::new()
        .init(device)
        .forward(output.logits.reshape([n, vocab]), target);
    let grads = (loss.clone() + output.aux_loss)
        .div_scalar(shares as f64)
        .backward();
    (GradientsParams::from_grads(grads, model), loss.detach())
}
