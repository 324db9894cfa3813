//! The tensor-core multiplication of the weight gradient (CUDA, 16-bit floats): `mma.sync`
//! m16n8k16 with f32 accumulators, the reduction running over routed rows.
//!
//! The `a` stage is `[stage_rows][tile_m]` (rows of the reduction, then gradient rows), so the
//! instruction's A operand (gradient rows x reduction) is its transpose: a transposing `ldmatrix`
//! x4 reads a 16 x 16 block of it, lane `l` giving stage row `(l / 16) * 8 + l % 8` at gradient
//! row offset `((l / 8) % 2) * 8`, so the four 8 x 8 matrices arrive in the order of the A
//! fragment (rows 0-7 / 8-15 by depth 0-7, then by depth 8-15). The `b` stage is
//! `[stage_rows][tile_n]` like the forward weights: a transposing `ldmatrix` x4 reads two n8
//! fragments.
//!
//! Each plane owns `tile_m / warps_m` gradient rows and `tile_n / warps_n` columns; its
//! accumulators live in registers and the epilogue writes them from there.
//!
//! The instruction, its constants and the fragment widths are the grouped GEMM's
//! (`grouped_gemm/tensor_cores.rs`).

use cubecl::ir::MatrixIdent;
use cubecl::prelude::*;

use super::params::WeightGradParams;

use crate::grouped_gemm::tensor_cores::{ACCUMULATOR_VECTORS, LDMATRIX_ROW, mma};
pub use crate::grouped_gemm::tensor_cores::{
    COLUMN_PAIR, FragmentA, FragmentAcc, FragmentB, MMA_K, MMA_M, MMA_N, PLANE_UNITS,
    register_fragment_sizes,
};

/// The plane's accumulators, zeroed: row tiles x column tiles of 16x8 (one unused vector on the
/// portable path).
#[cube]
pub fn tensor_core_accumulators(
    #[comptime] params: WeightGradParams,
) -> Array<Vector<f32, FragmentAcc>> {
    let count = comptime!(if params.tensor_cores {
        row_tiles(params) * 2 * column_pairs(params) * ACCUMULATOR_VECTORS
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

/// 16-row tiles of the gradient a plane owns.
fn row_tiles(params: WeightGradParams) -> usize {
    params.tile_m / params.warps_m / MMA_M
}

/// 16-column pairs of n8 tiles a plane owns.
fn column_pairs(params: WeightGradParams) -> usize {
    params.tile_n / params.warps_n / COLUMN_PAIR
}

/// Index of the 16x8 tile (row tile `i`, column pair `j`, half `h`).
fn tile_index(params: WeightGradParams, i: usize, j: usize, h: usize) -> usize {
    (i * column_pairs(params) + j) * 2 + h
}

/// Multiplies one shared-memory stage (`a` at `a_base`, `b` at `b_base`, in vectors of `N`) into
/// the plane's accumulators: `acc += a_stage^T @ b_stage`.
#[cube]
pub fn tensor_core_stage<F: Float, N: Size>(
    stage_a: &SharedMemory<Vector<F, N>>,
    stage_b: &SharedMemory<Vector<F, N>>,
    a_base: usize,
    b_base: usize,
    accumulators: &mut Array<Vector<f32, FragmentAcc>>,
    #[comptime] params: WeightGradParams,
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
    let b_stride = comptime!(params.b_stride());

    let plane = UNIT_POS as usize / PLANE_UNITS;
    let lane = UNIT_POS as usize % PLANE_UNITS;
    let first_m = (plane / params.warps_n) * rows * MMA_M;
    let first_n = (plane % params.warps_n) * pairs * COLUMN_PAIR;
    // Transposed A (module docs): matrix l / 8 is (rows 0-7 | 8-15) x (depth 0-7 | 8-15).
    let a_depth = (lane / 16) * 8 + lane % 8;
    let a_offset = ((lane / 8) % 2) * 8;
    // B: lanes 0-15 give depth rows 0-15 of the left 8 columns, lanes 16-31 of the right 8.
    let b_depth = lane % 16;
    let b_offset = (lane / 16) * 8;

    #[unroll]
    for kk in 0..comptime!(params.stage_rows / MMA_K) {
        let mut a = Array::<Vector<F, FragmentA>>::new(comptime!(rows * a_regs));
        #[unroll]
        for i in 0..rows {
            let start =
                a_base + ((kk * MMA_K + a_depth) * a_stride + first_m + i * MMA_M + a_offset) / n;
            let loaded = def.load_matrix::<Vector<F, N>, FragmentA>(
                &stage_a.slice(start, start + row_vectors),
                MatrixIdent::A,
                a_regs,
                true,
            );
            #[unroll]
            for v in 0..a_regs {
                a[i * a_regs + v] = loaded[v];
            }
        }
        #[unroll]
        for j in 0..pairs {
            let start = b_base
                + ((kk * MMA_K + b_depth) * b_stride + first_n + j * COLUMN_PAIR + b_offset) / n;
            let pair = def.load_matrix::<Vector<F, N>, FragmentB>(
                &stage_b.slice(start, start + row_vectors),
                MatrixIdent::B,
                comptime!(2 * b_regs),
                true,
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
                    let base = comptime!(tile_index(params, i, j, h) * acc_regs);
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

/// Writes the plane's accumulators into the cube's gradient tile in shared memory (`tile`,
/// `[tile_m][out_stride]`, see `kernel::store_tile`), each lane its own elements.
#[cube]
pub fn tensor_core_epilogue<F: Float>(
    accumulators: &Array<Vector<f32, FragmentAcc>>,
    tile: &mut SharedMemory<F>,
    #[comptime] params: WeightGradParams,
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
    let stride = comptime!(params.out_stride());
    let plane = UNIT_POS as usize / PLANE_UNITS;
    let lane = UNIT_POS % comptime!(PLANE_UNITS as u32);
    let plane_m = (plane / params.warps_n) * rows * MMA_M;
    let plane_n = (plane % params.warps_n) * pairs * COLUMN_PAIR;
    #[unroll]
    for i in 0..rows {
        #[unroll]
        for j in 0..pairs {
            #[unroll]
            for h in 0..2 {
                let base = comptime!(tile_index(params, i, j, h) * acc_regs);
                #[unroll]
                for v in 0..acc_regs {
                    #[unroll]
                    for e in 0..acc_width {
                        let (row, col) = def.position_of_nth(
                            lane,
                            comptime!((v * acc_width + e) as u32),
                            MatrixIdent::Accumulator,
                        );
                        let m = plane_m + i * MMA_M + row as usize;
                        let n = plane_n + j * COLUMN_PAIR + h * MMA_N + col as usize;
                        tile[m * stride + n] = F::cast_from(accumulators[base + v][e]);
                    }
                }
            }
        }
    }
}
