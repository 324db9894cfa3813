//! Why an `offload` run cannot start or go on. Its own file so that the crate's error type can
//! wrap it without importing the rest of offloading.

use std::path::PathBuf;

use moe_model::offload::UnknownPolicy;

/// Why an `offload` run cannot start or go on.
#[derive(Debug, thiserror::Error)]
pub enum OffloadError {
    /// A setting out of its range.
    #[error("{origin}: {field} = {value} is invalid: {allowed}")]
    Invalid {
        /// The settings file, or the flag that set the value.
        origin: String,
        /// The setting.
        field: String,
        /// Its value.
        value: String,
        /// What is allowed.
        allowed: String,
    },
    /// A policy name that does not exist.
    #[error("{origin}: {source}")]
    Policy {
        /// The settings file, or `--policies`.
        origin: String,
        /// The name.
        source: UnknownPolicy,
    },
    /// The settings file cannot be read or parsed.
    #[error("{path}: {message}")]
    Settings {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The routing trace cannot be used.
    #[error("{message}")]
    Trace {
        /// What is wrong, with the file.
        message: String,
    },
    /// The host cannot hold the experts.
    #[error(
        "shape {shape}: needs {need} of host memory (expert weights, routing, inputs), {available} available; use --shape, fewer tokens or steps, or a smaller [synthetic].blocks"
    )]
    HostMemory {
        /// The shape.
        shape: String,
        /// Bytes needed.
        need: String,
        /// Bytes available.
        available: String,
    },
    /// The device cannot hold every expert (the resident policy's floor).
    #[error(
        "shape {shape}: the resident policy needs {need} of device memory, {available} free; use --shape or a smaller [synthetic].blocks"
    )]
    DeviceMemory {
        /// The shape.
        shape: String,
        /// Bytes needed.
        need: String,
        /// Bytes free on the device.
        available: String,
    },
    /// The device failed (CUDA driver errors, out of memory).
    #[error("{0}")]
    Device(String),
    /// A bug: the runtime refused what the plan checked.
    #[error("offload runtime: {0}")]
    Internal(String),
}

#[cfg(feature = "cuda")]
impl From<moe_model::offload::CudaStoreError> for OffloadError {
    fn from(error: moe_model::offload::CudaStoreError) -> Self {
        OffloadError::Device(error.0)
    }
}
