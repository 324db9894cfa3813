//! The model wrapped for training: loss, the per-batch output the metrics read, train and
//! inference steps for `burn-train`.

use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor};
use burn::train::metric::{AccuracyInput, Adaptor, ItemLazy, LossInput};
use burn::train::{InferenceStep, TrainOutput, TrainStep};
use moe_model::{Model, MoeAutodiffBackend, MoeBackend, RoutingStats};

use crate::backend::MetricsBackend;
use crate::data::TaskBatch;
use crate::learner_metrics::RoutingMetricInput;

/// The task model with its loss: cross-entropy plus the MoE layers' auxiliary losses.
#[derive(Module, Debug)]
pub struct Classifier<B: MoeBackend> {
    /// The classifier being trained.
    pub model: Model<B>,
    /// Devices each batch is spread over (`train.devices`): a training step's gradient is its
    /// loss divided by this, so the sum burn-train takes over the devices is the gradient of
    /// the mean loss over the whole batch.
    #[module(skip)]
    pub devices: usize,
}

/// What one batch produced: the loss, the predictions and the routing decisions.
#[derive(Clone, Debug)]
pub struct ClassifierOutput<B: Backend> {
    /// Cross-entropy of the batch (without auxiliary losses). `[1]`
    pub loss: Tensor<B, 1>,
    /// Weighted auxiliary router losses. `[1]`
    pub aux_loss: Tensor<B, 1>,
    /// `[T, C]`
    pub logits: Tensor<B, 2>,
    /// `[T]`
    pub targets: Tensor<B, 1, Int>,
    /// Routing of each MoE block.
    pub routing: Vec<RoutingStats<B>>,
    /// Whether each point is hard. `[T]`
    pub hard: Vec<bool>,
    /// Each point's cluster. `[T]`
    pub clusters: Vec<usize>,
}

impl<B: MoeBackend> Classifier<B> {
    /// Runs the model on a batch and computes its loss.
    pub fn forward_batch(&self, batch: TaskBatch<B>) -> ClassifierOutput<B> {
        let output = self.model.forward(batch.inputs);
        let loss = CrossEntropyLossConfig::new()
            .init(&output.logits.device())
            .forward(output.logits.clone(), batch.targets.clone());
        ClassifierOutput {
            loss,
            aux_loss: output.aux_loss,
            logits: output.logits,
            targets: batch.targets,
            routing: output.routing,
            hard: batch.hard,
            clusters: batch.clusters,
        }
    }
}

impl<B: MoeAutodiffBackend> TrainStep for Classifier<B> {
    type Input = TaskBatch<B>;
    type Output = ClassifierOutput<B>;

    fn step(&self, batch: TaskBatch<B>) -> TrainOutput<ClassifierOutput<B>> {
        let output = self.forward_batch(batch);
        let share = 1.0 / self.devices as f64;
        let grads = (output.loss.clone() + output.aux_loss.clone())
            .mul_scalar(share)
            .backward();
        TrainOutput::new(self, grads, output)
    }
}

impl<B: MoeBackend> InferenceStep for Classifier<B> {
    type Input = TaskBatch<B>;
    type Output = ClassifierOutput<B>;

    fn step(&self, batch: TaskBatch<B>) -> ClassifierOutput<B> {
        self.forward_batch(batch)
    }
}

impl<B: Backend> ItemLazy for ClassifierOutput<B> {
    type ItemSync = ClassifierOutput<MetricsBackend>;

    fn sync(self) -> ClassifierOutput<MetricsBackend> {
        let device = Default::default();
        let float = |t: Tensor<B, 1>| Tensor::from_data(t.into_data(), &device);
        let int = |t: Tensor<B, 1, Int>| Tensor::from_data(t.into_data(), &device);
        ClassifierOutput {
            loss: float(self.loss),
            aux_loss: float(self.aux_loss),
            logits: Tensor::from_data(self.logits.into_data(), &device),
            targets: int(self.targets),
            routing: self
                .routing
                .into_iter()
                .map(|stats| RoutingStats {
                    token_k: int(stats.token_k),
                    expert_counts: int(stats.expert_counts),
                    dropped_pairs: int(stats.dropped_pairs),
                    top_expert: int(stats.top_expert),
                    router_entropy: float(stats.router_entropy),
                })
                .collect(),
            hard: self.hard,
            clusters: self.clusters,
        }
    }
}

impl<B: Backend> Adaptor<AccuracyInput<B>> for ClassifierOutput<B> {
    fn adapt(&self) -> AccuracyInput<B> {
        AccuracyInput::new(self.logits.clone(), self.targets.clone())
    }
}

impl<B: Backend> Adaptor<LossInput<B>> for ClassifierOutput<B> {
    fn adapt(&self) -> LossInput<B> {
        LossInput::new(self.loss.clone())
    }
}

impl<B: Backend> Adaptor<RoutingMetricInput> for ClassifierOutput<B> {
    fn adapt(&self) -> RoutingMetricInput {
        RoutingMetricInput::from_stats(&self.routing)
    }
}
