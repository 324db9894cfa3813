//! Data-parallel training of the task model (issue 29) with burn-train's multi-device strategy
//! (`ExecutionStrategy::MultiDevice`, optimizer on the first device): every device holds the
//! model, takes its share of each batch and returns its gradients, which burn-train adds on the
//! first device before one optimizer step. Each device's loss is divided by the device count
//! (`Classifier::devices`), so the sum is the gradient of the mean loss over the whole batch.
//!
//! burn-train's other strategy, `ddp` (all-reduce through `DistributedBackend`), is not used:
//! its feature makes `Autodiff<B>` an `AutodiffBackend` only for backends implementing
//! `DistributedBackend`, which NdArray does not (`burn-autodiff/src/backend.rs`), so it would
//! stop the CPU training this crate runs everywhere.

use std::num::NonZero;

use burn::tensor::backend::{Backend, Device, DeviceId, DeviceOps};
use burn::train::{ExecutionStrategy, MultiDeviceOptim};
use moe_model::InvalidValue;

use crate::backend::BackendKind;
use crate::config::ConfigSources;
use crate::error::ExperimentError;

/// The `count` devices `train.devices` asks for, the first being `device`'s kind at index 0:
/// on CubeCL backends devices `0..count` of that kind, at most as many as are present; on
/// ndarray (one Burn device, the CPU) the CPU `count` times, one worker thread each, at most one
/// per core. More than present is a config error naming who set `train.devices` in `sources`.
pub fn training_devices<B: Backend>(
    kind: BackendKind,
    device: &B::Device,
    count: usize,
    sources: &ConfigSources,
) -> Result<Vec<B::Device>, ExperimentError> {
    let type_id = device.id().type_id;
    let (present, what) = match kind {
        BackendKind::Ndarray => (
            std::thread::available_parallelism().map_or(1, NonZero::get),
            "CPU cores (ndarray ranks are threads on the one CPU device)",
        ),
        _ => (B::device_count(type_id), "devices present"),
    };
    if count > present {
        return Err(ExperimentError::InvalidConfig {
            origin: sources.origin_of("train.devices"),
            source: InvalidValue::new(
                "train.devices",
                count,
                format!("must be <= {present}, the {} {what}", kind.name()),
            ),
        });
    }
    Ok((0..count)
        .map(|index| {
            B::Device::from_id(DeviceId {
                type_id,
                index_id: index as u16,
            })
        })
        .collect())
}

/// burn-train's strategy for `devices`: several devices with the optimizer on the first (the
/// sharded optimizer keys its gradients by device id, which the ndarray ranks share).
pub fn multi_device<B: Backend>(devices: Vec<B::Device>) -> ExecutionStrategy<B> {
    ExecutionStrategy::multi(devices, MultiDeviceOptim::OptimMainDevice)
}
