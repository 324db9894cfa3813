//! Data-parallel training on two CPU ranks against one device (`crate::data_parallel`): the
//! gradients, a whole burn-train step, and the device count check.

use std::path::Path;

use burn::backend::{Autodiff, NdArray};
use burn::data::dataloader::batcher::Batcher;
use burn::module::{AutodiffModule, Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::Tensor;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::train::{Interrupter, TrainStep};
use moe_model::Model;

use crate::backend::BackendKind;
use crate::classifier::Classifier;
use crate::config::{ConfigSources, RunConfig};
use crate::data::{TaskBatcher, TaskSplits, items};
use crate::data_parallel::training_devices;
use crate::error::ExperimentError;
use crate::task::TaskItem;
use crate::train::fit;

type Train = Autodiff<NdArray>;

/// Every float parameter of a module, in module order.
struct Parameters(Vec<f32>);

impl<B: Backend> ModuleVisitor<B> for Parameters {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        self.0.extend(param.val().into_data().iter::<f32>());
    }
}

/// Every float parameter of `module`, in module order (also the language model's tests).
pub(crate) fn parameters<B: Backend, M: Module<B>>(module: &M) -> Vec<f32> {
    let mut visitor = Parameters(Vec::new());
    module.visit(&mut visitor);
    visitor.0
}

/// The smoke config on 64 training points, one step per epoch, without the Switch loss (not
/// a mean over points, so not split over ranks; the z-loss stays on).
fn one_step_config() -> RunConfig {
    let config_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/smoke.toml");
    let overrides = [
        "task.train_size=64",
        "task.valid_size=16",
        "task.test_size=16",
        "train.batch_size=64",
        "train.epochs=1",
        "model.ffn.balance_loss_coef=0",
    ]
    .map(String::from);
    RunConfig::load(&config_path, &overrides).expect("the smoke config")
}

/// The model of `config` with every parameter drawn now: Burn initialises parameters lazily,
/// and a clone of an uninitialised parameter draws its own values
/// (`burn-core/src/module/param/base.rs`, `impl Clone for Param`).
fn initialised(config: &RunConfig) -> Model<Train> {
    let device = Default::default();
    config
        .model
        .init::<Train>(config.task.input_dim, config.task.num_classes, &device)
        .fork(&device)
}

/// The gradient of every float parameter of `module` in `grads` (zeros where it has none).
struct Gradients<'a>(&'a GradientsParams, Vec<f32>);

impl<B: AutodiffBackend> ModuleVisitor<B> for Gradients<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        match self.0.get::<B::InnerBackend, D>(param.id) {
            Some(grad) => self.1.extend(grad.into_data().iter::<f32>()),
            None => self.1.extend(vec![0.0; param.val().shape().num_elements()]),
        }
    }
}

/// The gradients the train step of `Classifier { devices }` returns on `points`.
fn step_gradients(model: &Model<Train>, devices: usize, points: &[TaskItem]) -> Vec<f32> {
    let classifier = Classifier {
        model: model.clone(),
        devices,
    };
    let batch = TaskBatcher.batch(points.to_vec(), &Default::default());
    let output = TrainStep::step(&classifier, batch);
    let mut visitor = Gradients(&output.grads, Vec::new());
    classifier.visit(&mut visitor);
    visitor.1
}

/// What burn-train adds over two ranks, each step's gradients on half of the batch with the
/// loss divided by 2, is the gradient one device takes on the whole batch (independent of
/// the optimizer, which the next test runs).
#[test]
fn two_ranks_gradients_add_up_to_the_whole_batch_gradient() {
    let config = one_step_config();
    let model = initialised(&config);
    let points = items(&TaskSplits::generate(&config.task).train);
    let whole = step_gradients(&model, 1, &points);
    let first = step_gradients(&model, 2, &points[..32]);
    let second = step_gradients(&model, 2, &points[32..]);
    assert!(
        whole.iter().any(|g| g.abs() > 1e-4),
        "the gradient must not vanish"
    );
    for (i, ((w, a), b)) in whole.iter().zip(&first).zip(&second).enumerate() {
        assert!(
            (w - (a + b)).abs() <= 1e-5 * (1.0 + w.abs()),
            "parameter element {i}: {w} vs {a} + {b}"
        );
    }
}

/// One epoch of one step on 64 points: two CPU ranks of 32 points each, through burn-train's
/// multi-device strategy, end with the parameters one device gets from the 64 points (Adam,
/// the MoE smoke model). Within float tolerance: the gradient sums run in another order.
#[test]
fn two_cpu_ranks_train_the_parameters_one_device_trains_on_the_whole_batch() {
    let config = one_step_config();
    let device = Default::default();
    let model = initialised(&config);
    let trained = |devices: usize| {
        let dir = std::env::temp_dir().join(format!(
            "experiments-data-parallel-{}-{devices}",
            std::process::id()
        ));
        let splits = TaskSplits::generate(&config.task);
        let classifier = Classifier {
            model: model.clone(),
            devices,
        };
        let trained = fit(
            classifier,
            splits.train,
            splits.valid,
            &config,
            vec![device; devices],
            &dir,
            Interrupter::new(),
        );
        let _ = std::fs::remove_dir_all(&dir);
        parameters(&trained)
    };
    let initial = parameters(&model.valid());
    let (one, two) = (trained(1), trained(2));
    let largest = |a: &[f32], b: &[f32]| {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max)
    };
    assert_eq!(one.len(), two.len());
    assert!(
        largest(&one, &initial) > 1e-3,
        "the step must move the parameters"
    );
    let difference = largest(&one, &two);
    assert!(difference < 1e-5, "two ranks vs one device: {difference}");
}

#[test]
fn more_devices_than_present_is_an_error() {
    let cpu = Default::default();
    let sources = ConfigSources {
        file: "configs/smoke.toml".into(),
        overrides: vec!["train.devices=100000".into()],
    };
    let error = training_devices::<NdArray>(BackendKind::Ndarray, &cpu, 100_000, &sources)
        .expect_err("more ranks than cores");
    let ExperimentError::InvalidConfig { origin, source } = error else {
        panic!("not a config error: {error}");
    };
    assert_eq!(source.field, "train.devices");
    assert_eq!(origin, sources.origin_of("train.devices"));
    let one =
        training_devices::<NdArray>(BackendKind::Ndarray, &cpu, 1, &sources).expect("one device");
    assert_eq!(one, vec![cpu]);
}
