//! The language model's data-parallel step (`crate::lm::data_parallel`) on two CPU ranks
//! against one device on the whole batch, and the `train.devices` checks of LM configs.

use std::path::{Path, PathBuf};

use burn::backend::{Autodiff, NdArray};
use burn::module::Module;
use burn::optim::SgdConfig;
use moe_model::lm::Lm;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::backend::BackendKind;
use crate::config::ConfigSources;
use crate::data_parallel::training_devices;
use crate::data_parallel_tests::parameters;
use crate::error::ExperimentError;
use crate::lm::config::LmRunConfig;
use crate::lm::data_parallel::DataParallel;
use crate::lm::tokens::{Token, VOCAB_SIZE};

type Train = Autodiff<NdArray>;

/// Windows per step and tokens per window of the test model.
const BATCH: usize = 4;
const CONTEXT: usize = 8;

/// `configs/lm-smoke.toml`, the config these tests start from.
fn smoke_config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/lm-smoke.toml")
}

/// The smoke LM shrunk to a few thousand parameters, without the Switch loss (not a mean over
/// tokens, so not split over ranks; the z-loss stays on).
fn tiny_config() -> LmRunConfig {
    let overrides = [
        format!("model.context={CONTEXT}"),
        "model.d_model=16".into(),
        "model.ffn.expert_width=16".into(),
        "model.ffn.balance_loss_coef=0".into(),
        format!("train.batch_size={BATCH}"),
    ];
    LmRunConfig::load(&smoke_config(), &overrides).expect("the tiny LM config")
}

/// `BATCH` windows of random tokens and random targets, `[BATCH * CONTEXT]` each.
fn random_windows(rng: &mut StdRng) -> (Vec<Token>, Vec<Token>) {
    let mut tokens = || -> Vec<Token> {
        (0..BATCH * CONTEXT)
            .map(|_| rng.random_range(0..VOCAB_SIZE as Token))
            .collect()
    };
    (tokens(), tokens())
}

/// The parameters and the reported losses after two SGD steps of `DataParallel` over `devices`
/// CPU ranks from `model` on `batches`. SGD, because its step is proportional to the gradient:
/// Adam's first step is nearly the gradient's sign, so it would hide a wrongly weighted sum.
fn trained(
    model: &Lm<Train>,
    devices: usize,
    batches: &[(Vec<Token>, Vec<Token>)],
) -> (Vec<f32>, Vec<f32>) {
    let step = DataParallel::new(&vec![Default::default(); devices], CONTEXT);
    let mut optimizer = SgdConfig::new().init();
    let mut model = model.clone();
    let mut losses = Vec::new();
    for (inputs, targets) in batches {
        let (next, loss) = step.step(model, &mut optimizer, 0.5, inputs, targets);
        model = next;
        losses.push(loss.into_scalar());
    }
    (parameters(&model), losses)
}

/// Two steps on two CPU ranks of two windows each end with the parameters (and report the
/// losses) of one device on the four windows: the shares' gradients add up to the whole batch's,
/// and the second step's replicas come from the updated model.
#[test]
fn two_ranks_step_the_parameters_one_device_steps_on_the_whole_batch() {
    let config = tiny_config();
    let device = Default::default();
    // Forked: every parameter drawn now (Burn initialises them lazily, and a clone of an
    // uninitialised parameter draws its own values).
    let model = config.model.init::<Train>(&device).fork(&device);
    let mut rng = StdRng::seed_from_u64(7);
    let batches = [random_windows(&mut rng), random_windows(&mut rng)];
    let initial = parameters(&model);
    let (one, one_losses) = trained(&model, 1, &batches);
    let (two, two_losses) = trained(&model, 2, &batches);
    let largest = |a: &[f32], b: &[f32]| {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs() / (1.0 + x.abs()))
            .fold(0.0f32, f32::max)
    };
    assert_eq!(one.len(), two.len());
    assert!(
        largest(&one, &initial) > 1e-3,
        "the steps must move the parameters"
    );
    let difference = largest(&one, &two);
    assert!(difference < 1e-5, "two ranks vs one device: {difference}");
    let losses = largest(&one_losses, &two_losses);
    assert!(losses < 1e-5, "losses {one_losses:?} vs {two_losses:?}");
}

/// A batch the devices cannot share equally, or no device, is refused when the config loads,
/// in one line naming the field and who set it.
#[test]
fn a_batch_the_devices_cannot_share_is_a_config_error() {
    let error = LmRunConfig::load(&smoke_config(), &["train.devices=3".into()])
        .expect_err("8 windows on 3 devices");
    assert_eq!(
        error.to_string(),
        format!(
            "{}: train.batch_size = 8 is invalid: must be a multiple of devices (3): each device \
             takes an equal share",
            smoke_config().display()
        )
    );
    let error =
        LmRunConfig::load(&smoke_config(), &["train.devices=0".into()]).expect_err("no device");
    assert_eq!(
        error.to_string(),
        "--set train.devices=0: train.devices = 0 is invalid: must be >= 1"
    );
}

/// More CPU ranks than cores is refused when training starts, naming who asked for them.
#[test]
fn more_devices_than_cores_is_a_config_error() {
    let sources = ConfigSources {
        file: smoke_config(),
        overrides: vec![
            "train.devices=65536".into(),
            "train.batch_size=65536".into(),
        ],
    };
    let config = LmRunConfig::load(&sources.file, &sources.overrides).expect("a valid config");
    let error = training_devices::<NdArray>(
        BackendKind::Ndarray,
        &Default::default(),
        config.train.devices,
        &sources,
    )
    .expect_err("more ranks than cores");
    assert!(matches!(error, ExperimentError::InvalidConfig { .. }));
    let message = error.to_string();
    assert!(
        message.starts_with(
            "--set train.devices=65536: train.devices = 65536 is invalid: must be <= "
        ),
        "{message}"
    );
    assert!(
        message.ends_with("ndarray CPU cores (ndarray ranks are threads on the one CPU device)"),
        "{message}"
    );
}
