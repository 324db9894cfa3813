//! Quantized experts: weights stored as int8 or FP8 e4m3 bytes with f32 scales (per output
//! channel, or per 128 x 128 block), and the weight-only grouped GEMM that dequantizes them in its
//! load stage and multiplies in f32 (the portable path, any runtime).

mod format;
mod kernel;
mod launch;
mod params;
pub mod reference;
#[cfg(test)]
mod tests;

pub use format::{QuantFormat, QuantLayout, QuantizedMatrix, SCALE_BLOCK, pack_bytes};
pub use launch::{
    QuantizedOnDevice, QuantizedOperands, quantized_input_projection, quantized_matmul,
    quantized_output_projection,
};
pub use params::QuantGemmParams;
