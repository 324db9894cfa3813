//! Weight-only quantized grouped GEMM over the dispatch's tile work list:
//! `out[rows of tile t] = epilogue(A_t @ dequantize(W_e))`, the portable path (any runtime).
//!
//! Work: one cube per (tile of `tile_rows` routed rows of one expert: grid x, block of
//! `tile_cols` output columns: grid y); cubes past the tiles in use return at once, so the launch
//! needs no host round trip. The weights are one byte per weight (int8 or FP8 e4m3), packed four
//! per `u32` (WGSL has no 8-bit buffers), with f32 scales per output channel or per 128 x 128
//! block. The load stage dequantizes: each unit reads a byte, decodes it and multiplies it by its
//! scale, and stores the f32 weight in shared memory, so weight traffic from global memory is
//! one byte per weight (half of bf16's). A rows (gathered through `routed_pairs` for the first
//! projection) are stored in f32 beside them. Each unit then accumulates `unit_rows` x
//! `unit_cols` sums per column group in f32 registers; SwiGLU reads gate and up columns `width`
//! apart, so its epilogue holds both values of an output column. Rows past the expert's end,
//! depth past `depth` and columns past `width` load as zeros and are not stored. The launcher
//! validates buffer sizes; the kernel skips tiles whose expert or first row is out of range and
//! loads zeros for gathered tokens out of range, so a corrupt plan gives wrong numbers, never an
//! access out of bounds.

use cubecl::prelude::*;

use super::format::SCALE_BLOCK;
use super::params::QuantGemmParams;
use crate::activate::kernel::{gelu, swiglu};
use crate::grouped_gemm::Epilogue;

/// Quantized grouped GEMM (see the module docs); output of the activations' type `F`.
#[cube(launch_unchecked)]
#[allow(
    clippy::too_many_arguments,
    reason = "kernel arguments are buffers and sizes"
)]
pub fn quantized_gemm<F: Float, I: Int>(
    a: &Array<F>,              // [rows of a, depth]: x [T, d] (gather) or hidden [P, depth]
    weights: &Array<u32>,      // [E, depth, groups * width] bytes, four per word
    scales: &Array<f32>,       // [E, 1, groups * width] or [E, ceil(depth/128), ceil(cols/128)]
    routed_pairs: &Array<I>,   // [P] pair of each row (gather: token = pair / slots)
    expert_offsets: &Array<I>, // [E + 1]
    tiles: &Array<I>,          // [max_tiles, 2]: (expert, first row)
    num_tiles: &Array<I>,      // [1]
    output: &mut Array<F>,     // [P, width]
    a_rows: usize,
    depth: usize,
    width: usize,
    slots: usize,
    num_experts: usize,
    num_pairs: usize,
    #[comptime] params: QuantGemmParams,
) {
    let tile = CUBE_POS_X as usize;
    if tile >= usize::cast_from(num_tiles[0]) {
        terminate!();
    }
    let expert = u32::cast_from(tiles[2 * tile]) as usize;
    let first_row = u32::cast_from(tiles[2 * tile + 1]) as usize;
    if expert >= num_experts || first_row >= num_pairs {
        terminate!();
    }
    let row_end = min(
        min(first_row + params.tile_rows, num_pairs),
        u32::cast_from(expert_offsets[expert + 1]) as usize,
    );
    let first_col = CUBE_POS_Y as usize * params.tile_cols;

    let mut stage_a = SharedMemory::<f32>::new(comptime!(params.a_stage()));
    let mut stage_w = SharedMemory::<f32>::new(comptime!(params.w_stage()));
    let mut sums = Array::<f32>::new(comptime!(params.accumulators()));
    #[unroll]
    for i in 0..comptime!(params.accumulators()) {
        sums[i] = 0.0;
    }

    let stages = (depth + params.stage_depth - 1) / params.stage_depth;
    for s in 0..stages {
        let k0 = s * params.stage_depth;
        load_rows::<F, I>(
            a,
            routed_pairs,
            &mut stage_a,
            first_row,
            row_end,
            a_rows,
            depth,
            slots,
            k0,
            params,
        );
        load_weights(
            weights,
            scales,
            &mut stage_w,
            expert,
            first_col,
            depth,
            width,
            k0,
            params,
        );
        sync_cube();
        multiply_stage(&stage_a, &stage_w, &mut sums, params);
        sync_cube();
    }
    store_tile::<F>(&sums, output, first_row, row_end, first_col, width, params);
}

/// Loads the tile's A rows at depth `k0..k0 + stage_depth` into shared memory in f32, zeros
/// past the expert's rows, past the depth or for a gathered token out of range.
#[cube]
#[allow(clippy::too_many_arguments, reason = "kernel helper")]
fn load_rows<F: Float, I: Int>(
    a: &Array<F>,
    routed_pairs: &Array<I>,
    stage_a: &mut SharedMemory<f32>,
    first_row: usize,
    row_end: usize,
    a_rows: usize,
    depth: usize,
    slots: usize,
    k0: usize,
    #[comptime] params: QuantGemmParams,
) {
    let units = comptime!(params.units());
    #[unroll]
    for i in 0..comptime!(params.a_stage().div_ceil(params.units())) {
        let at = UNIT_POS as usize + i * units;
        if at < comptime!(params.a_stage()) {
            let row = first_row + at / params.stage_depth;
            let k = k0 + at % params.stage_depth;
            let mut value = 0.0f32;
            if row < row_end && k < depth {
                let mut source = row;
                if comptime!(params.gather) {
                    source = u32::cast_from(routed_pairs[row]) as usize / slots;
                }
                if source < a_rows {
                    value = f32::cast_from(a[source * depth + k]);
                }
            }
            stage_a[at] = value;
        }
    }
}

/// Loads the tile's weight columns (every group) at depth `k0..k0 + stage_depth` into shared
/// memory, dequantized to f32; zeros past the depth or past `width`.
#[cube]
#[allow(clippy::too_many_arguments, reason = "kernel helper")]
fn load_weights(
    weights: &Array<u32>,
    scales: &Array<f32>,
    stage_w: &mut SharedMemory<f32>,
    expert: usize,
    first_col: usize,
    depth: usize,
    width: usize,
    k0: usize,
    #[comptime] params: QuantGemmParams,
) {
    let units = comptime!(params.units());
    let stage_cols = comptime!(params.groups * params.tile_cols);
    let columns = params.groups * width;
    #[unroll]
    for i in 0..comptime!(params.w_stage().div_ceil(params.units())) {
        let at = UNIT_POS as usize + i * units;
        if at < comptime!(params.w_stage()) {
            let k = k0 + at / stage_cols;
            let stage_col = at % stage_cols;
            let col = first_col + stage_col % params.tile_cols;
            let mut value = 0.0f32;
            if k < depth && col < width {
                let column = (stage_col / params.tile_cols) * width + col;
                let index = (expert * depth + k) * columns + column;
                let word = weights[index / 4];
                let byte = (word >> (u32::cast_from(index % 4) * 8)) & 0xff;
                let scale = scales[scale_index(expert, k, column, depth, columns, params)];
                value = decode_byte(byte, params) * scale;
            }
            stage_w[at] = value;
        }
    }
}

/// Where the scale of the weight at row `k`, column `column` of `expert` sits.
#[cube]
fn scale_index(
    expert: usize,
    k: usize,
    column: usize,
    depth: usize,
    columns: usize,
    #[comptime] params: QuantGemmParams,
) -> usize {
    let mut index = expert * columns + column;
    if comptime!(params.format.is_block()) {
        let block_rows = (depth + SCALE_BLOCK - 1) / SCALE_BLOCK;
        let block_cols = (columns + SCALE_BLOCK - 1) / SCALE_BLOCK;
        index = (expert * block_rows + k / SCALE_BLOCK) * block_cols + column / SCALE_BLOCK;
    }
    index
}

/// The value of one byte (`0..=255` in a `u32`): int8 two's complement, or FP8 e4m3
/// (`(8 + mantissa) 2^(exponent - 10)`, subnormals `mantissa 2^-9`; NaN codes never occur).
#[cube]
fn decode_byte(byte: u32, #[comptime] params: QuantGemmParams) -> f32 {
    // int8: two's complement.
    let mut value = f32::cast_from(byte) - select(byte >= 128, 256.0f32, 0.0f32);
    if comptime!(params.format.is_fp8()) {
        let exponent = (byte >> 3) & 0xf;
        let mantissa = byte & 0x7;
        let significand = select(exponent > 0, mantissa + 8, mantissa);
        // 2^(max(exponent, 1) - 10) built from its f32 bits (biased exponent + 117).
        let power = f32::reinterpret((max(exponent, 1) + 117) << 23);
        let magnitude = f32::cast_from(significand) * power;
        value = select(byte >= 128, -magnitude, magnitude);
    }
    value
}

/// Multiplies one stage on the units: `unit_rows` x `unit_cols` sums per group.
#[cube]
fn multiply_stage(
    stage_a: &SharedMemory<f32>,
    stage_w: &SharedMemory<f32>,
    sums: &mut Array<f32>,
    #[comptime] params: QuantGemmParams,
) {
    let rows = params.unit_rows;
    let cols = params.unit_cols;
    let units_per_row = comptime!(params.tile_cols / params.unit_cols);
    let first_row = (UNIT_POS as usize / units_per_row) * rows;
    let first_col = (UNIT_POS as usize % units_per_row) * cols;
    let stage_cols = comptime!(params.groups * params.tile_cols);
    let mut a_values = Array::<f32>::new(rows);
    #[unroll]
    for k in 0..params.stage_depth {
        #[unroll]
        for i in 0..rows {
            a_values[i] = stage_a[(first_row + i) * params.stage_depth + k];
        }
        #[unroll]
        for g in 0..params.groups {
            #[unroll]
            for j in 0..cols {
                let w = stage_w[k * stage_cols + g * params.tile_cols + first_col + j];
                #[unroll]
                for i in 0..rows {
                    let at = comptime!((g * rows + i) * cols + j);
                    sums[at] += a_values[i] * w;
                }
            }
        }
    }
}

/// Writes this unit's sums through the epilogue: rows of the tile's expert and columns below
/// `width` only.
#[cube]
fn store_tile<F: Float>(
    sums: &Array<f32>,
    output: &mut Array<F>,
    first_row: usize,
    row_end: usize,
    first_col: usize,
    width: usize,
    #[comptime] params: QuantGemmParams,
) {
    let rows = params.unit_rows;
    let cols = params.unit_cols;
    let units_per_row = comptime!(params.tile_cols / params.unit_cols);
    let unit_row = first_row + (UNIT_POS as usize / units_per_row) * rows;
    let unit_col = first_col + (UNIT_POS as usize % units_per_row) * cols;
    #[unroll]
    for i in 0..rows {
        #[unroll]
        for j in 0..cols {
            let row = unit_row + i;
            let col = unit_col + j;
            if row < row_end && col < width {
                let value = sums[comptime!(i * cols + j)];
                let mut result = value;
                if comptime!(params.epilogue == Epilogue::SwiGlu) {
                    result = swiglu(value, sums[comptime!((rows + i) * cols + j)]);
                }
                if comptime!(params.epilogue == Epilogue::Gelu) {
                    result = gelu(value);
                }
                output[row * width + col] = F::cast_from(result);
            }
        }
    }
}
