//! The portable multiplication of the grouped GEMM (any runtime, any float type): each unit
//! accumulates `unit_rows` x `unit_cols` products per column group in f32 registers, reading
//! the weight stage by depth rows or, transposed, by column rows.

use cubecl::prelude::*;

use super::kernel::write_output;
use super::params::GemmParams;

/// Multiplies one shared-memory stage on the units: `unit_rows` x `unit_cols` sums per group.
#[cube]
pub fn unit_stage<F: Float, N: Size>(
    stage_a: &SharedMemory<Vector<F, N>>,
    stage_w: &SharedMemory<Vector<F, N>>,
    a_base: usize,
    w_base: usize,
    sums: &mut Array<f32>,
    #[comptime] params: GemmParams,
) {
    let n = N::value();
    let rows = params.unit_rows;
    let cols = params.unit_cols;
    let units_per_row = comptime!(params.tile_cols / params.unit_cols);
    let first_row = (UNIT_POS as usize / units_per_row) * rows;
    let first_col = (UNIT_POS as usize % units_per_row) * cols;
    let a_stride = comptime!(params.a_stride() / n);
    let w_stride = comptime!(params.w_stride() / n);
    let mut a_values = Array::<Vector<F, N>>::new(rows);
    #[unroll]
    for kv in 0..comptime!(params.stage_depth / n) {
        #[unroll]
        for i in 0..rows {
            a_values[i] = stage_a[a_base + (first_row + i) * a_stride + kv];
        }
        if comptime!(params.transposed_weights) {
            // Stage `[tile_cols][stage_depth]`: one vector holds n depths of one column.
            #[unroll]
            for j in 0..cols {
                let w = stage_w[w_base + (first_col + j) * w_stride + kv];
                #[unroll]
                for kk in 0..n {
                    #[unroll]
                    for i in 0..rows {
                        let at = comptime!(i * cols + j);
                        sums[at] += f32::cast_from(a_values[i][kk]) * f32::cast_from(w[kk]);
                    }
                }
            }
        } else {
            #[unroll]
            for kk in 0..n {
                #[unroll]
                for g in 0..params.groups {
                    #[unroll]
                    for jv in 0..comptime!(cols / n) {
                        let w = stage_w[w_base
                            + (kv * n + kk) * w_stride
                            + (g * params.tile_cols + first_col) / n
                            + jv];
                        #[unroll]
                        for jj in 0..n {
                            #[unroll]
                            for i in 0..rows {
                                let at = comptime!((g * rows + i) * cols + jv * n + jj);
                                sums[at] += f32::cast_from(a_values[i][kk]) * f32::cast_from(w[jj]);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Writes the portable path's register sums through the epilogue.
#[cube]
#[allow(clippy::too_many_arguments, reason = "kernel helper")]
pub fn unit_epilogue<F: Float, O: Float>(
    sums: &Array<f32>,
    pre: &Array<F>,
    output: &mut Array<O>,
    first_row: usize,
    row_end: usize,
    first_col: usize,
    width: usize,
    out_offset: usize,
    #[comptime] params: GemmParams,
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
            let mut up = 0.0;
            if comptime!(params.groups == 2) {
                up = sums[comptime!((rows + i) * cols + j)];
            }
            write_output::<F, O>(
                pre,
                output,
                unit_row + i,
                row_end,
                unit_col + j,
                width,
                out_offset,
                sums[comptime!(i * cols + j)],
                up,
                params,
            );
        }
    }
}
