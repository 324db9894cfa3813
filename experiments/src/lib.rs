//! Experiments on variable-k Mixture-of-Experts: train, evaluate and compare MoE and dense
//! models on a synthetic task whose points need one expert or two and as byte-level language
//! models on public-domain English; the routing studies, benchmarks, routing prediction,
//! offloading and the report built on them.
//!
//! The binary (`src/main.rs`) is a thin command line over these modules.

pub mod atomic_write;
pub mod backend;
#[cfg(any(feature = "wgpu", feature = "cuda"))]
pub mod bench;
pub mod classifier;
pub mod config;
pub mod config_origin;
pub mod data;
pub mod data_parallel;
#[cfg(test)]
mod data_parallel_tests;
pub mod error;
pub mod eval;
pub mod host;
pub mod interrupt;
pub mod learner_metrics;
pub mod limits;
pub mod lm;
pub mod markdown;
pub mod model_file;
pub mod offload;
pub mod predict;
pub mod progress;
pub mod quantize;
pub mod quantized_file;
pub mod report;
pub mod routing_metrics;
pub mod routing_summary;
pub mod routing_trace;
pub mod run_dir;
pub mod size_limits;
pub mod study;
pub mod sweep;
pub mod task;
pub mod train;
pub mod workload;

pub use backend::BackendKind;
pub use config::RunConfig;
pub use error::ExperimentError;
pub use report::RunMetrics;
