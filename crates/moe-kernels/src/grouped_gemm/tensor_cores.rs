//! The tensor-core multiplication of the grouped GEMM (CUDA, 16-bit floats): `mma.sync`
//! m16n8k16 with f32 accumulators, operands loaded from shared memory by `ldmatrix` (x4: a 16x16
//! block of A, or, transposed, a 16x16 block of the row-major weights, i.e. two n8 fragments).
//!
//! Each plane owns `tile_rows / warps_m` rows and `tile_cols / warps_n` columns of every column
//! group; its accumulators live in registers, and the epilogue writes them straight from there
//! (each lane holds known (row, column) elements of every 16x8 tile).

use cubecl::cmma::MmaDefinition;
use cubecl::ir::MatrixIdent;
use cubecl::prelude::*;

use super::kernel::write_output;
use super::params::{GemmParams, TMA_BOX_COLS};

/// Units per plane on the tensor-core path (CUDA warps).
pub const PLANE_UNITS: usize = 32;
/// Rows of one tensor-core instruction's A and output tiles.
pub const MMA_M: usize = 16;
/// Columns of one instruction's B and output tiles.
pub const MMA_N: usize = 8;
/// Depth of one instruction.
pub const MMA_K: usize = 16;
/// Columns one transposed `ldmatrix` x4 loads: two n8 fragments.
pub const COLUMN_PAIR: usize = 2 * MMA_N;
/// Register vectors of one lane's share of a 16x8 f32 accumulator on CUDA (4 values in pairs);
/// checked against the device's MMA layout when the kernel is expanded.
pub(crate) const ACCUMULATOR_VECTORS: usize = 2;
/// Elements of one `ldmatrix` row (16 bytes of 16-bit values).
pub(crate) const LDMATRIX_ROW: usize = 8;

define_size!(pub FragmentA);
define_size!(pub FragmentB);
define_size!(pub FragmentAcc);

/// The instruction: `F` x `F` into f32.
#[cube]
pub(crate) fn mma<F: Float>() -> MmaDefinition<F, F, f32> {
    MmaDefinition::new(MMA_M, MMA_N, MMA_K)
}

/// Binds the register vector widths of the fragments (from the device's MMA layout; 1 on the
/// portable path, where the fragments are unused).
#[cube]
#[allow(
    unused_variables,
    reason = "the widths are read by the intrinsic at expansion"
)]
pub fn register_fragment_sizes<F: Float>(#[comptime] tensor_cores: bool) {
    if comptime!(tensor_cores) {
        let def = mma::<F>();
        let a = def.vector_size(MatrixIdent::A);
        let b = def.vector_size(MatrixIdent::B);
        let acc = def.vector_size(MatrixIdent::Accumulator);
        intrinsic!(|scope| {
            scope.register_size::<FragmentA>(a);
            scope.register_size::<FragmentB>(b);
            scope.register_size::<FragmentAcc>(acc);
        });
    } else {
        intrinsic!(|scope| {
            scope.register_size::<FragmentA>(1);
            scope.register_size::<FragmentB>(1);
            scope.register_size::<FragmentAcc>(1);
        });
    }
}

/// The plane's accumulators, zeroed: `groups` x row tiles x column tiles of 16x8 (one unused
/// vector on the portable path).
#[cube]
pub fn tensor_core_accumulators<F: Float>(
    #[comptime] params: GemmParams,
) -> Array<Vector<f32, FragmentAcc>> {
    let count = comptime!(if params.tensor_cores {
        output_tiles(params) * ACCUMULATOR_VECTORS
    } else {
        1
    });
    let mut accumulators = Array::<Vector<f32, FragmentAcc>>::new(count);
    #[unroll]
    for i in 0..count {
        accumulators[i] = Vector::new(0.0);
    }
    accumulators
}

/// 16x8 output tiles a plane accumulates (all groups).
fn output_tiles(params: GemmParams) -> usize {
    params.groups * row_tiles(params) * 2 * column_pairs(params)
}

fn row_tiles(params: GemmParams) -> usize {
    params.tile_rows / params.warps_m / MMA_M
}

fn column_pairs(params: GemmParams) -> usize {
    params.tile_cols / params.warps_n / COLUMN_PAIR
}

/// Index of the 16x8 tile (group `g`, row tile `i`, column pair `j`, half `h`).
fn tile_index(params: GemmParams, g: usize, i: usize, j: usize, h: usize) -> usize {
    ((g * row_tiles(params) + i) * column_pairs(params) + j) * 2 + h
}

/// Multiplies one shared-memory stage (A at `a_base`, weights at `w_base`, in vectors of `N`)
/// into the plane's accumulators. A plane whose rows all lie at or past `rows_used` (the tile's
/// rows that belong to its expert) skips its MMAs: they would only add zeros, and a nearly empty
/// last tile of an expert then costs its copies, not its multiplications.
#[cube]
#[allow(clippy::too_many_arguments, reason = "kernel helper")]
pub fn tensor_core_stage<F: Float, N: Size>(
    stage_a: &SharedMemory<Vector<F, N>>,
    stage_w: &SharedMemory<Vector<F, N>>,
    a_base: usize,
    w_base: usize,
    rows_used: usize,
    accumulators: &mut Array<Vector<f32, FragmentAcc>>,
    #[comptime] params: GemmParams,
) {
    let def = mma::<F>();
    let n = N::value();
    let row_vectors = comptime!((LDMATRIX_ROW / n).max(1));
    let a_regs = def.vectors_per_lane(MatrixIdent::A);
    let b_regs = def.vectors_per_lane(MatrixIdent::B);
    let acc_regs = def.vectors_per_lane(MatrixIdent::Accumulator);
    comptime!(assert_eq!(
        acc_regs, ACCUMULATOR_VECTORS,
        "accumulator layout"
    ));
    let rows = comptime!(row_tiles(params));
    let pairs = comptime!(column_pairs(params));
    let a_stride = comptime!(params.a_stride());
    let w_stride = comptime!(params.w_stride());

    let plane = UNIT_POS as usize / PLANE_UNITS;
    let lane = UNIT_POS as usize % PLANE_UNITS;
    let first_row = (plane / params.warps_n) * rows * MMA_M;
    let first_col = (plane % params.warps_n) * pairs * COLUMN_PAIR;
    // ldmatrix x4: lanes 0-15 give rows 0-15 of the left 8 columns, lanes 16-31 of the right 8.
    let lane_row = lane % 16;
    let lane_col = (lane / 16) * 8;

    if first_row < rows_used {
        #[unroll]
        for kk in 0..comptime!(params.stage_depth / MMA_K) {
            let mut a = Array::<Vector<F, FragmentA>>::new(comptime!(rows * a_regs));
            #[unroll]
            for i in 0..rows {
                let row = first_row + i * MMA_M + lane_row;
                let mut start = a_base + (row * a_stride + kk * MMA_K + lane_col) / n;
                if comptime!(params.tma_rows) {
                    // TMA boxes `[tile_rows][64]`, box after box, swizzled as the weights'.
                    let col = kk * MMA_K + lane_col;
                    start = a_base
                        + ((col / TMA_BOX_COLS) * comptime!(params.tile_rows * TMA_BOX_COLS)
                            + row * TMA_BOX_COLS
                            + swizzled_column(row, col))
                            / n;
                }
                let loaded = def.load_matrix::<Vector<F, N>, FragmentA>(
                    &stage_a.slice(start, start + row_vectors),
                    MatrixIdent::A,
                    a_regs,
                    false,
                );
                #[unroll]
                for v in 0..a_regs {
                    a[i * a_regs + v] = loaded[v];
                }
            }
            #[unroll]
            for g in 0..params.groups {
                #[unroll]
                for j in 0..pairs {
                    // Both layouts give the matrices in the order (columns 0-7, depth 0-7),
                    // (0-7, 8-15), (8-15, 0-7), (8-15, 8-15): the two n8 fragments.
                    let mut start = w_base
                        + ((kk * MMA_K + lane_row) * w_stride
                            + g * params.tile_cols
                            + first_col
                            + j * COLUMN_PAIR
                            + lane_col)
                            / n;
                    if comptime!(params.transposed_weights) {
                        // Stage `[columns][depth]`: rows are columns, read without transposing.
                        let col = first_col + j * COLUMN_PAIR + (lane / 16) * 8 + lane % 8;
                        let k = kk * MMA_K + ((lane / 8) % 2) * 8;
                        start = w_base + (col * w_stride + k) / n;
                        if comptime!(params.tma_weights) {
                            // TMA boxes `[tile_cols][64]`, box after box, swizzled.
                            start = w_base
                                + ((k / TMA_BOX_COLS) * comptime!(params.tile_cols * TMA_BOX_COLS)
                                    + col * TMA_BOX_COLS
                                    + swizzled_column(col, k))
                                    / n;
                        }
                    } else if comptime!(params.tma_weights) {
                        // TMA boxes `[stage_depth][64]`, box after box, with the 128-byte
                        // swizzle: a row's 16-byte chunk c lies at chunk c XOR (row % 8).
                        let k = kk * MMA_K + lane_row;
                        let col = g * params.tile_cols + first_col + j * COLUMN_PAIR + lane_col;
                        start = w_base
                            + ((col / TMA_BOX_COLS) * comptime!(params.stage_depth * TMA_BOX_COLS)
                                + k * TMA_BOX_COLS
                                + swizzled_column(k, col))
                                / n;
                    }
                    let pair = def.load_matrix::<Vector<F, N>, FragmentB>(
                        &stage_w.slice(start, start + row_vectors),
                        MatrixIdent::B,
                        comptime!(2 * b_regs),
                        comptime!(!params.transposed_weights),
                    );
                    #[unroll]
                    for h in 0..2 {
                        let mut b = Array::<Vector<F, FragmentB>>::new(b_regs);
                        #[unroll]
                        for v in 0..b_regs {
                            b[v] = pair[h * b_regs + v];
                        }
                        #[unroll]
                        for i in 0..rows {
                            let mut a_tile = Array::<Vector<F, FragmentA>>::new(a_regs);
                            #[unroll]
                            for v in 0..a_regs {
                                a_tile[v] = a[i * a_regs + v];
                            }
                            let base = comptime!(tile_index(params, g, i, j, h) * acc_regs);
                            let mut c = Array::<Vector<f32, FragmentAcc>>::new(acc_regs);
                            #[unroll]
                            for v in 0..acc_regs {
                                c[v] = accumulators[base + v];
                            }
                            let d = def.execute(&a_tile, &b, &c);
                            #[unroll]
                            for v in 0..acc_regs {
                                accumulators[base + v] = d[v];
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Where column `col` (the first of an 8-element `ldmatrix` row) of row `row` of a TMA box
/// lies within the row: the 128-byte swizzle puts 16-byte chunk c at c XOR (row % 8).
#[cube]
fn swizzled_column(row: usize, col: usize) -> usize {
    (((col % TMA_BOX_COLS) / LDMATRIX_ROW) ^ (row % 8)) * LDMATRIX_ROW
}

/// Writes the plane's accumulators through the epilogue, each lane its own elements.
#[cube]
#[allow(clippy::too_many_arguments, reason = "kernel helper")]
pub fn tensor_core_epilogue<F: Float, O: Float>(
    accumulators: &Array<Vector<f32, FragmentAcc>>,
    pre: &Array<F>,
    output: &mut Array<O>,
    first_row: usize,
    row_end: usize,
    first_col: usize,
    width: usize,
    out_offset: usize,
    #[comptime] params: GemmParams,
) {
    let def = mma::<F>();
    let acc_regs = def.vectors_per_lane(MatrixIdent::Accumulator);
    comptime!(assert_eq!(
        acc_regs, ACCUMULATOR_VECTORS,
        "accumulator layout"
    ));
    let acc_width = def.vector_size(MatrixIdent::Accumulator);
    let rows = comptime!(row_tiles(params));
    let pairs = comptime!(column_pairs(params));
    let plane = UNIT_POS as usize / PLANE_UNITS;
    let lane = UNIT_POS % comptime!(PLANE_UNITS as u32);
    let plane_row = first_row + (plane / params.warps_n) * rows * MMA_M;
    let plane_col = first_col + (plane % params.warps_n) * pairs * COLUMN_PAIR;
    #[unroll]
    for i in 0..rows {
        #[unroll]
        for j in 0..pairs {
            #[unroll]
            for h in 0..2 {
                let gate = comptime!(tile_index(params, 0, i, j, h) * acc_regs);
                let up = comptime!(tile_index(params, params.groups - 1, i, j, h) * acc_regs);
                #[unroll]
                for v in 0..acc_regs {
                    #[unroll]
                    for e in 0..acc_width {
                        let (row, col) = def.position_of_nth(
                            lane,
                            comptime!((v * acc_width + e) as u32),
                            MatrixIdent::Accumulator,
                        );
                        write_output::<F, O>(
                            pre,
                            output,
                            plane_row + i * MMA_M + row as usize,
                            row_end,
                            plane_col + j * COLUMN_PAIR + h * MMA_N + col as usize,
                            width,
                            out_offset,
                            accumulators[gate + v][e],
                            accumulators[up + v][e],
                            params,
                        );
                    }
                }
            }
        }
    }
}
