//! Grouped GEMM: the experts' two projections on the dispatch's tile work list, with the gather
//! of token rows and the activation fused into the first.

mod config;
pub mod kernel;
mod launch;
mod params;
pub mod reference;
pub(crate) mod tensor_cores;
#[cfg(test)]
mod tests;
mod units;

pub use crate::pipeline::Pipeline;
pub use config::{CUBES_PER_SM, ExpertGemmConfig, FITTED_TILE_ROWS, MAX_SPLITS, fits_fitted_tile};
pub use launch::{
    ExpertOperands, ExpertRows, ExpertShape, device_config, expert_matmul, has_tensor_cores,
    has_tma, input_projection, input_projection_into, multiprocessors, output_projection,
    output_projection_into,
};
pub use params::{Epilogue, GemmParams, TMA_BOX_COLS};
