//! Grouped GEMM over the dispatch's tile work list: `out[rows of tile t] = epilogue(A_t @ W_e)`.
//!
//! Work: one cube per (tile of `tile_rows` routed rows of one expert, block of `tile_cols` output
//! columns, slice of the depth for split-K). The grid is an upper bound (every tile the list can
//! hold); cubes past the tiles in use return at once, so the launch needs no host round trip.
//! Cubes are numbered in groups of `raster_group` tiles: inside a group the tile index runs
//! fastest, so cubes that run together share weight columns.
//!
//! A rows: rows of `a` in dispatch order, or (`gather`) rows of the token-ordered input read
//! through `routed_pairs` (no permuted copy of the activations). Rows past the expert's end and
//! depth past the slice's end load as zeros. W columns: `groups` blocks of `tile_cols` columns,
//! `width` apart (SwiGLU: gate and up), so the epilogue holds both values of an output column.
//!
//! Pipeline: each stage of `stage_depth` goes from global memory into registers while the
//! previous stage, in one of two shared-memory buffers, is multiplied; one barrier per stage.
//! Multiplication: tensor cores (`tensor_cores.rs`: `mma.sync` fed by `ldmatrix`, f32
//! accumulators in each plane's registers) or, portable (`units.rs`), each unit accumulates
//! `unit_rows` x `unit_cols` per group in f32 registers. Epilogue: identity, `silu(gate) * up` or `gelu`; rows past the expert's end and
//! columns past `width` are not stored. With split-K, slice `s` writes its partial sums to
//! output block `s` (combine adds the blocks). The launcher validates buffer sizes; the kernel
//! skips tiles whose expert or first row is out of range and loads zeros for gathered tokens out
//! of range, so a corrupt plan gives wrong numbers, never an access out of bounds.

use cubecl::prelude::*;

use super::params::{Epilogue, GemmParams};
use super::tensor_cores::{
    register_fragment_sizes, tensor_core_accumulators, tensor_core_epilogue, tensor_core_stage,
};
use super::units::{unit_epilogue, unit_stage};

/// Grouped GEMM (see the module docs). `a` and `weights` are vectorised along their rows (`N`
/// values per vector); `depth` and `width` are multiples of `N`.
#[cube(launch_unchecked)]
#[allow(
    clippy::too_many_arguments,
    reason = "kernel arguments are buffers and sizes"
)]
pub fn grouped_gemm<F: Float, O: Float, I: Int, N: Size>(
    a: &Array<Vector<F, N>>, // [rows of a, depth]: x [T, d] (gather) or hidden [P, depth]
    weights: &Array<Vector<F, N>>, // [E, depth, groups * width]
    routed_pairs: &Array<I>, // [P] pair of each row (gather: token = pair / slots)
    expert_offsets: &Array<I>, // [E + 1]
    tiles: &Array<I>,        // [max_tiles, 2]: (expert, first row)
    num_tiles: &Array<I>,    // [1]
    output: &mut Array<O>,   // [split_k, P, width]
    a_rows: usize,
    depth: usize,
    width: usize,
    slots: usize,
    num_experts: usize,
    max_tiles: usize,
    num_pairs: usize,
    #[comptime] params: GemmParams,
) {
    let n = N::value();
    let col_blocks = (width + params.tile_cols - 1) / params.tile_cols;
    let group_span = params.raster_group * col_blocks;
    let cube = CUBE_POS_X as usize;
    let first_tile = (cube / group_span) * params.raster_group;
    let tiles_in_group = min(max_tiles - first_tile, params.raster_group);
    let in_group = cube % group_span;
    let tile = first_tile + in_group % tiles_in_group;
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
    let first_col = (in_group / tiles_in_group) * params.tile_cols;

    // This cube's slice of the depth, in whole stages.
    let stages_total = (depth + params.stage_depth - 1) / params.stage_depth;
    let stages_per_split = (stages_total + params.split_k - 1) / params.split_k;
    let depth_begin = CUBE_POS_Y as usize * stages_per_split * params.stage_depth;
    let depth_end = min(depth, depth_begin + stages_per_split * params.stage_depth);
    let mut stages: usize = 0;
    if depth_end > depth_begin {
        stages = (depth_end - depth_begin + params.stage_depth - 1) / params.stage_depth;
    }

    let a_starts = a_row_starts::<I>(
        routed_pairs,
        first_row,
        row_end,
        a_rows,
        depth / n,
        slots,
        params,
        n,
    );
    // Weight vector where this tile's columns start, row 0 of the depth (transposed: where the
    // row of the tile's first column starts).
    let mut w_base = expert * depth * (params.groups * width / n) + first_col / n;
    if comptime!(params.transposed_weights) {
        w_base = (expert * width + first_col) * (depth / n);
    }

    let a_stage = comptime!(params.a_stage_vectors(n));
    let w_stage = comptime!(params.w_stage_vectors(n));
    let mut stage_a = SharedMemory::<Vector<F, N>>::new_aligned(comptime!(2 * a_stage), 128usize);
    let mut stage_w = SharedMemory::<Vector<F, N>>::new_aligned(comptime!(2 * w_stage), 128usize);
    let mut staged_a = Array::<Vector<F, N>>::new(comptime!(params.a_loads_per_unit(n)));
    let mut staged_w = Array::<Vector<F, N>>::new(comptime!(params.w_loads_per_unit(n)));

    register_fragment_sizes::<F>(params.tensor_cores);
    let mut fragments = tensor_core_accumulators::<F>(params);
    let mut sums = Array::<f32>::new(comptime!(params.unit_accumulators()));
    #[unroll]
    for i in 0..comptime!(params.unit_accumulators()) {
        sums[i] = 0.0;
    }

    if stages > 0 {
        load_stage::<F, N>(
            a,
            weights,
            &a_starts,
            w_base,
            first_col,
            width,
            depth,
            depth_begin,
            depth_end,
            &mut staged_a,
            &mut staged_w,
            params,
        );
        store_stage::<F, N>(&staged_a, &staged_w, &mut stage_a, &mut stage_w, 0, params);
    }
    sync_cube();
    for s in 0..stages {
        let next = s + 1 < stages;
        if next {
            load_stage::<F, N>(
                a,
                weights,
                &a_starts,
                w_base,
                first_col,
                width,
                depth,
                depth_begin + (s + 1) * params.stage_depth,
                depth_end,
                &mut staged_a,
                &mut staged_w,
                params,
            );
        }
        if comptime!(params.tensor_cores) {
            tensor_core_stage::<F, N>(
                &stage_a,
                &stage_w,
                (s % 2) * a_stage,
                (s % 2) * w_stage,
                &mut fragments,
                params,
            );
        } else {
            unit_stage::<F, N>(
                &stage_a,
                &stage_w,
                (s % 2) * a_stage,
                (s % 2) * w_stage,
                &mut sums,
                params,
            );
        }
        if next {
            store_stage::<F, N>(
                &staged_a,
                &staged_w,
                &mut stage_a,
                &mut stage_w,
                (s + 1) % 2,
                params,
            );
        }
        sync_cube();
    }

    let out_offset = CUBE_POS_Y as usize * num_pairs * width;
    if comptime!(params.tensor_cores) {
        tensor_core_epilogue::<F, O>(
            &fragments, output, first_row, row_end, first_col, width, out_offset, params,
        );
    } else {
        unit_epilogue::<O>(
            &sums, output, first_row, row_end, first_col, width, out_offset, params,
        );
    }
}

/// For each A vector this unit loads per stage: the vector index where its source row starts, or
/// -1 past the expert's rows (or for a gathered token out of range).
#[cube]
#[allow(clippy::too_many_arguments, reason = "kernel helper")]
fn a_row_starts<I: Int>(
    routed_pairs: &Array<I>,
    first_row: usize,
    row_end: usize,
    a_rows: usize,
    row_vectors: usize,
    slots: usize,
    #[comptime] params: GemmParams,
    #[comptime] n: usize,
) -> Array<i32> {
    let loads = comptime!(params.a_loads_per_unit(n));
    let stage_row_vectors = comptime!(params.stage_depth / n);
    let mut starts = Array::<i32>::new(loads);
    #[unroll]
    for i in 0..loads {
        let v = UNIT_POS as usize + i * params.units();
        let row = first_row + v / stage_row_vectors;
        let mut start = i32::new(-1);
        if row < row_end && v < comptime!(params.a_vectors(n)) {
            let mut source = row;
            if comptime!(params.gather) {
                source = u32::cast_from(routed_pairs[row]) as usize / slots;
            }
            if source < a_rows {
                start = i32::cast_from(source * row_vectors);
            }
        }
        starts[i] = start;
    }
    starts
}

/// Loads one stage (depth `k0..k0 + stage_depth`, clipped at `depth_end`, of the full `depth`)
/// of A rows and weight columns into this unit's registers; zeros where out of range.
#[cube]
#[allow(clippy::too_many_arguments, reason = "kernel helper")]
fn load_stage<F: Float, N: Size>(
    a: &Array<Vector<F, N>>,
    weights: &Array<Vector<F, N>>,
    a_starts: &Array<i32>,
    w_base: usize,
    first_col: usize,
    width: usize,
    depth: usize,
    k0: usize,
    depth_end: usize,
    staged_a: &mut Array<Vector<F, N>>,
    staged_w: &mut Array<Vector<F, N>>,
    #[comptime] params: GemmParams,
) {
    let n = N::value();
    let stage_row_vectors = comptime!(params.stage_depth / n);
    #[unroll]
    for i in 0..comptime!(params.a_loads_per_unit(n)) {
        let v = UNIT_POS as usize + i * params.units();
        let k = k0 + (v % stage_row_vectors) * n;
        let start = a_starts[i];
        let mut value = Vector::<F, N>::new(F::new(0.0));
        if start >= 0 && k < depth_end {
            value = a[usize::cast_from(start) + k / n];
        }
        staged_a[i] = value;
    }

    if comptime!(params.transposed_weights) {
        // Weights `[E, width, depth]`: each of the tile's columns is a row of the depth.
        let col_vectors = comptime!(params.stage_depth / n);
        let depth_vectors = depth / n;
        #[unroll]
        for i in 0..comptime!(params.w_loads_per_unit(n)) {
            let v = UNIT_POS as usize + i * params.units();
            let col = v / col_vectors;
            let k = k0 + (v % col_vectors) * n;
            let mut value = Vector::<F, N>::new(F::new(0.0));
            if k < depth_end && first_col + col < width && v < comptime!(params.w_vectors(n)) {
                value = weights[w_base + col * depth_vectors + k / n];
            }
            staged_w[i] = value;
        }
    } else {
        let tile_col_vectors = comptime!(params.tile_cols / n);
        let row_vectors = comptime!(params.groups * params.tile_cols / n);
        let weight_row_vectors = params.groups * width / n;
        #[unroll]
        for i in 0..comptime!(params.w_loads_per_unit(n)) {
            let v = UNIT_POS as usize + i * params.units();
            let k = k0 + v / row_vectors;
            let in_row = v % row_vectors;
            let group = in_row / tile_col_vectors;
            let col_vector = in_row % tile_col_vectors;
            let mut value = Vector::<F, N>::new(F::new(0.0));
            if k < depth_end
                && first_col + col_vector * n < width
                && v < comptime!(params.w_vectors(n))
            {
                value = weights[w_base + k * weight_row_vectors + group * (width / n) + col_vector];
            }
            staged_w[i] = value;
        }
    }
}

/// Writes the staged registers into shared-memory buffer `buffer` (0 or 1).
#[cube]
fn store_stage<F: Float, N: Size>(
    staged_a: &Array<Vector<F, N>>,
    staged_w: &Array<Vector<F, N>>,
    stage_a: &mut SharedMemory<Vector<F, N>>,
    stage_w: &mut SharedMemory<Vector<F, N>>,
    buffer: usize,
    #[comptime] params: GemmParams,
) {
    let n = N::value();
    let a_base = buffer * comptime!(params.a_stage_vectors(n));
    let a_row_vectors = comptime!(params.stage_depth / n);
    let a_stride = comptime!(params.a_stride() / n);
    #[unroll]
    for i in 0..comptime!(params.a_loads_per_unit(n)) {
        let v = UNIT_POS as usize + i * params.units();
        if v < comptime!(params.a_vectors(n)) {
            stage_a[a_base + (v / a_row_vectors) * a_stride + v % a_row_vectors] = staged_a[i];
        }
    }
    let w_base = buffer * comptime!(params.w_stage_vectors(n));
    let w_row_vectors = comptime!(if params.transposed_weights {
        params.stage_depth / n
    } else {
        params.groups * params.tile_cols / n
    });
    let w_stride = comptime!(params.w_stride() / n);
    #[unroll]
    for i in 0..comptime!(params.w_loads_per_unit(n)) {
        let v = UNIT_POS as usize + i * params.units();
        if v < comptime!(params.w_vectors(n)) {
            stage_w[w_base + (v / w_row_vectors) * w_stride + v % w_row_vectors] = staged_w[i];
        }
    }
}

/// Applies the epilogue to one output element (`value`, and `up` for SwiGLU) and stores it, if
/// its row belongs to the tile's expert and its column exists.
#[cube]
#[allow(clippy::too_many_arguments, reason = "kernel helper")]
pub fn write_output<O: Float>(
    output: &mut Array<O>,
    row: usize,
    row_end: usize,
    col: usize,
    width: usize,
    out_offset: usize,
    value: f32,
    up: f32,
    #[comptime] params: GemmParams,
) {
    if row < row_end && col < width {
        let mut result = value;
        if comptime!(params.epilogue == Epilogue::SwiGlu) {
            result = value / (1.0 + f32::exp(-value)) * up;
        }
        if comptime!(params.epilogue == Epilogue::Gelu) {
            result = 0.5 * value * (1.0 + Erf::erf(value * std::f32::consts::FRAC_1_SQRT_2));
        }
        output[out_offset + row * width + col] = O::cast_from(result);
    }
}
