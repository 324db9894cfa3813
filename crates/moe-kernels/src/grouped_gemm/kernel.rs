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
//! Pipeline (`params.pipeline`): stages of `stage_depth` go either through registers (loaded
//! while the previous stage, in one of two shared buffers, is multiplied; any runtime) or by
//! asynchronous copies (`cp.async`, CUDA) straight into one of several shared buffers, several
//! stages ahead, each buffer with a barrier that completes when its copies have landed. One
//! cube-wide barrier per stage either way. With `tma_weights` (CUDA, sm_90) the weight stages
//! arrive instead as TMA boxes 64 elements wide (columns, or depth for transposed weights),
//! which one unit issues on the buffer's barrier (adding their bytes to it) and the hardware
//! lays out with the 128-byte swizzle; with `tma_rows` the A stages too, where rows are in
//! dispatch order (gathered rows keep their `cp.async` copies: TMA's tiled boxes cannot follow
//! a permutation).
//! Multiplication: tensor cores (`tensor_cores.rs`: `mma.sync` fed by `ldmatrix`, f32
//! accumulators in each plane's registers) or, portable (`units.rs`), each unit accumulates
//! `unit_rows` x `unit_cols` per group in f32 registers. Epilogue: identity, `silu(gate) * up`,
//! `gelu`, or the SwiGLU backward (gate and up gradients from the hidden gradient and `pre`);
//! rows past the expert's end and columns past `width` are not stored. With split-K, slice `s`
//! writes its partial sums to output block `s` (combine adds the blocks). The launcher
//! validates buffer sizes; the kernel skips tiles whose expert or first row is out of range and
//! loads zeros for gathered tokens out of range, so a corrupt plan gives wrong numbers, never an
//! access out of bounds.

use cubecl::prelude::barrier::Barrier;
use cubecl::prelude::*;

use super::params::{Epilogue, GemmParams, TMA_BOX_COLS, stage_alignment};
use super::tensor_cores::{
    FragmentAcc, register_fragment_sizes, tensor_core_accumulators, tensor_core_epilogue,
    tensor_core_stage,
};
use super::units::{unit_epilogue, unit_stage};
use crate::activate::kernel::{gelu, swiglu};
use crate::pipeline::{
    Pipeline, Source, StageVector, commit_stage, copy_vector_async, read_vector, stage_barriers,
    stage_destination, stage_vector, wait_stage,
};

/// Grouped GEMM (see the module docs). `a` and `weights` are vectorised along their rows (`N`
/// values per vector); `depth` and `width` are multiples of `N`.
#[cube(launch_unchecked)]
#[allow(
    clippy::too_many_arguments,
    reason = "kernel arguments are buffers and sizes"
)]
pub fn grouped_gemm<F: Float, O: Float, I: Int, N: Size>(
    a: &Array<Vector<F, N>>, // [rows of a, depth]: x [T, d] (gather) or hidden [P, depth]
    rows_map: ComptimeOption<TensorMap<F, Tiled>>, // `a` as [rows of a, depth] (not gathered)
    weights: &Array<Vector<F, N>>, // [E, depth, groups * width]
    weights_map: ComptimeOption<TensorMap<F, Tiled>>, // `weights` as [E, depth, groups, width]
    pre: &Array<F>,          // [P, 2 * width] gate and up pre-activations (SwiGluBackward)
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
    // Rows of the tile that belong to its expert (planes below them skip their MMAs).
    let rows_used = select(row_end > first_row, row_end - first_row, 0usize);

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
    let buffers = comptime!(params.pipeline.buffers());
    let mut stage_a = SharedMemory::<Vector<F, N>>::new_aligned(
        comptime!(buffers * a_stage),
        comptime!(stage_alignment(params.tma_rows)),
    );
    let mut stage_w = SharedMemory::<Vector<F, N>>::new_aligned(
        comptime!(buffers * w_stage),
        comptime!(stage_alignment(params.tma_weights)),
    );

    register_fragment_sizes::<F>(params.tensor_cores);
    let mut fragments = tensor_core_accumulators::<F>(params);
    let mut sums = Array::<f32>::new(comptime!(params.unit_accumulators()));
    #[unroll]
    for i in 0..comptime!(params.unit_accumulators()) {
        sums[i] = 0.0;
    }

    if comptime!(params.pipeline == Pipeline::Registers) {
        let mut staged_a = Array::<Vector<F, N>>::new(comptime!(params.a_loads_per_unit(n)));
        let mut staged_w = Array::<Vector<F, N>>::new(comptime!(params.w_loads_per_unit(n)));
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
            multiply_stage::<F, N>(
                &stage_a,
                &stage_w,
                s % 2,
                rows_used,
                &mut fragments,
                &mut sums,
                params,
            );
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
    } else {
        // Buffer b holds stages b, b + buffers, ...; its barrier completes phase `round` when
        // every unit has arrived and its copies of stage `round * buffers + b` have landed.
        let landed = stage_barriers(buffers);
        if comptime!(params.tma_weights || params.tma_rows) {
            // The barriers' initialisation must be visible to the TMA unit's copies.
            sync_async_proxy_shared();
        }
        #[unroll]
        for b in 0..comptime!(buffers - 1) {
            if b < stages {
                copy_stage::<F, N>(
                    a,
                    weights,
                    &rows_map,
                    &weights_map,
                    &landed,
                    expert,
                    first_row,
                    &a_starts,
                    w_base,
                    first_col,
                    width,
                    depth,
                    depth_begin + b * params.stage_depth,
                    depth_end,
                    &mut stage_a,
                    &mut stage_w,
                    b,
                    params,
                );
                commit_stage(&landed, b);
            }
        }
        let rounds = (stages + buffers - 1) / buffers;
        for round in 0..rounds {
            #[unroll]
            for b in 0..buffers {
                let s = round * buffers + b;
                if s < stages {
                    wait_stage(&landed, b, round);
                    let ahead = s + buffers - 1;
                    if ahead < stages {
                        let refill = comptime!((b + buffers - 1) % buffers);
                        copy_stage::<F, N>(
                            a,
                            weights,
                            &rows_map,
                            &weights_map,
                            &landed,
                            expert,
                            first_row,
                            &a_starts,
                            w_base,
                            first_col,
                            width,
                            depth,
                            depth_begin + ahead * params.stage_depth,
                            depth_end,
                            &mut stage_a,
                            &mut stage_w,
                            refill,
                            params,
                        );
                        commit_stage(&landed, refill);
                    }
                    multiply_stage::<F, N>(
                        &stage_a,
                        &stage_w,
                        b,
                        rows_used,
                        &mut fragments,
                        &mut sums,
                        params,
                    );
                }
            }
        }
    }

    let out_offset = CUBE_POS_Y as usize * num_pairs * width;
    if comptime!(params.tensor_cores) {
        tensor_core_epilogue::<F, O>(
            &fragments, pre, output, first_row, row_end, first_col, width, out_offset, params,
        );
    } else {
        unit_epilogue::<F, O>(
            &sums, pre, output, first_row, row_end, first_col, width, out_offset, params,
        );
    }
}

/// This unit's `i`-th vector of an A stage (rows of the tile, `stage_depth` deep).
#[cube]
fn a_vector(i: usize, #[comptime] params: GemmParams, #[comptime] n: usize) -> StageVector {
    stage_vector(
        i,
        params.units(),
        comptime!(params.a_vectors(n)),
        comptime!(params.stage_depth / n),
    )
}

/// This unit's `i`-th vector of a weight stage (rows along the depth, or along the tile's
/// columns when the weights are transposed).
#[cube]
fn w_vector(i: usize, #[comptime] params: GemmParams, #[comptime] n: usize) -> StageVector {
    let row_vectors = comptime!(if params.transposed_weights {
        params.stage_depth / n
    } else {
        params.groups * params.tile_cols / n
    });
    stage_vector(
        i,
        params.units(),
        comptime!(params.w_vectors(n)),
        row_vectors,
    )
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
    let mut starts = Array::<i32>::new(loads);
    #[unroll]
    for i in 0..loads {
        let at = a_vector(i, params, n);
        let row = first_row + at.row;
        let mut start = i32::new(-1);
        if at.present && row < row_end {
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

/// Where the A vector `at` of the stage at depth `k0` comes from: not live past the expert's rows
/// (or for a gathered token out of range, both in `a_starts[i]`) or past the depth slice.
#[cube]
fn a_source(
    a_starts: &Array<i32>,
    i: usize,
    at: StageVector,
    k0: usize,
    depth_end: usize,
    #[comptime] n: usize,
) -> Source {
    let start = a_starts[i];
    Source {
        index: usize::cast_from(start) + k0 / n + at.column,
        live: start >= 0 && k0 + at.column * n < depth_end,
    }
}

/// Where the weight vector `at` of the stage at depth `k0` comes from: not live past the depth
/// slice or past `width`, or for a unit without that vector.
#[cube]
#[allow(clippy::too_many_arguments, reason = "kernel helper")]
fn w_source(
    w_base: usize,
    first_col: usize,
    width: usize,
    depth: usize,
    at: StageVector,
    k0: usize,
    depth_end: usize,
    #[comptime] params: GemmParams,
    #[comptime] n: usize,
) -> Source {
    if comptime!(params.transposed_weights) {
        // Weights `[E, width, depth]`: each of the tile's columns is a row of the depth.
        Source {
            index: w_base + at.row * (depth / n) + k0 / n + at.column,
            live: at.present && k0 + at.column * n < depth_end && first_col + at.row < width,
        }
    } else {
        let tile_col_vectors = comptime!(params.tile_cols / n);
        let k = k0 + at.row;
        let group = at.column / tile_col_vectors;
        let col_vector = at.column % tile_col_vectors;
        Source {
            index: w_base + k * (params.groups * width / n) + group * (width / n) + col_vector,
            live: at.present && k < depth_end && first_col + col_vector * n < width,
        }
    }
}

/// Where the A vector `at` goes in shared buffer `buffer`.
#[cube]
fn a_destination(
    at: StageVector,
    buffer: usize,
    #[comptime] params: GemmParams,
    #[comptime] n: usize,
) -> usize {
    stage_destination(
        at,
        buffer,
        comptime!(params.a_stride() / n),
        comptime!(params.a_stage_vectors(n)),
    )
}

/// Where the weight vector `at` goes in shared buffer `buffer`.
#[cube]
fn w_destination(
    at: StageVector,
    buffer: usize,
    #[comptime] params: GemmParams,
    #[comptime] n: usize,
) -> usize {
    stage_destination(
        at,
        buffer,
        comptime!(params.w_stride() / n),
        comptime!(params.w_stage_vectors(n)),
    )
}

/// Loads one stage (depth `k0..k0 + stage_depth`, clipped at `depth_end`) of A rows and weight
/// columns into this unit's registers; zeros where out of range.
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
    #[unroll]
    for i in 0..comptime!(params.a_loads_per_unit(n)) {
        // `a_starts` already marks a unit without its i-th vector as not live.
        let source = a_source(a_starts, i, a_vector(i, params, n), k0, depth_end, n);
        staged_a[i] = read_vector::<F, N>(a, source);
    }
    #[unroll]
    for i in 0..comptime!(params.w_loads_per_unit(n)) {
        let at = w_vector(i, params, n);
        let source = w_source(
            w_base, first_col, width, depth, at, k0, depth_end, params, n,
        );
        staged_w[i] = read_vector::<F, N>(weights, source);
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
    #[unroll]
    for i in 0..comptime!(params.a_loads_per_unit(n)) {
        let at = a_vector(i, params, n);
        if at.present {
            stage_a[a_destination(at, buffer, params, n)] = staged_a[i];
        }
    }
    #[unroll]
    for i in 0..comptime!(params.w_loads_per_unit(n)) {
        let at = w_vector(i, params, n);
        if at.present {
            stage_w[w_destination(at, buffer, params, n)] = staged_w[i];
        }
    }
}

/// Starts the asynchronous copies of one stage into shared buffer `buffer`: the TMA boxes, if
/// any (`load_stage_boxes`), then the units' copies; sources out of range copy zeros. The
/// caller commits them on the buffer's barrier.
#[cube]
#[allow(clippy::too_many_arguments, reason = "kernel helper")]
fn copy_stage<F: Float, N: Size>(
    a: &Array<Vector<F, N>>,
    weights: &Array<Vector<F, N>>,
    rows_map: &ComptimeOption<TensorMap<F, Tiled>>,
    weights_map: &ComptimeOption<TensorMap<F, Tiled>>,
    barriers: &Sequence<Shared<Barrier>>,
    expert: usize,
    first_row: usize,
    a_starts: &Array<i32>,
    w_base: usize,
    first_col: usize,
    width: usize,
    depth: usize,
    k0: usize,
    depth_end: usize,
    stage_a: &mut SharedMemory<Vector<F, N>>,
    stage_w: &mut SharedMemory<Vector<F, N>>,
    #[comptime] buffer: usize,
    #[comptime] params: GemmParams,
) {
    load_stage_boxes::<F, N>(
        rows_map,
        weights_map,
        barriers,
        stage_a,
        stage_w,
        buffer,
        expert,
        first_row,
        k0,
        first_col,
        params,
    );
    let n = N::value();
    // With `tma_rows` / `tma_weights` these stages come as TMA boxes (`load_stage_boxes`).
    if comptime!(!params.tma_rows) {
        #[unroll]
        for i in 0..comptime!(params.a_loads_per_unit(n)) {
            let at = a_vector(i, params, n);
            if at.present {
                let source = a_source(a_starts, i, at, k0, depth_end, n);
                copy_vector_async::<F, N>(a, source, stage_a, a_destination(at, buffer, params, n));
            }
        }
    }
    if comptime!(!params.tma_weights) {
        #[unroll]
        for i in 0..comptime!(params.w_loads_per_unit(n)) {
            let at = w_vector(i, params, n);
            if at.present {
                let source = w_source(
                    w_base, first_col, width, depth, at, k0, depth_end, params, n,
                );
                copy_vector_async::<F, N>(
                    weights,
                    source,
                    stage_w,
                    w_destination(at, buffer, params, n),
                );
            }
        }
    }
}

/// With `tma_weights` or `tma_rows`: unit 0 adds the stage's box bytes to buffer `buffer`'s
/// barrier and issues the boxes of depth `k0..k0 + stage_depth`: the weights' (the tile's
/// columns of every group, 64 columns per box; transposed, the tile's columns as rows, 64 depth
/// columns per box) and the A rows' (the tile's rows, 64 depth columns per box). TMA fills
/// zeros past the depth, `width` and the rows of `a`. Nothing otherwise.
#[cube]
#[allow(clippy::too_many_arguments, reason = "kernel helper")]
fn load_stage_boxes<F: Float, N: Size>(
    rows_map: &ComptimeOption<TensorMap<F, Tiled>>,
    weights_map: &ComptimeOption<TensorMap<F, Tiled>>,
    barriers: &Sequence<Shared<Barrier>>,
    stage_a: &mut SharedMemory<Vector<F, N>>,
    stage_w: &mut SharedMemory<Vector<F, N>>,
    #[comptime] buffer: usize,
    expert: usize,
    first_row: usize,
    k0: usize,
    first_col: usize,
    #[comptime] params: GemmParams,
) {
    if comptime!(params.tma_weights || params.tma_rows) && UNIT_POS == 0 {
        let n = N::value();
        let barrier = barriers.index(buffer);
        let type_size = F::type_size();
        barrier.expect_tx(comptime!(params.tma_stage_bytes(type_size)) as u32);
        #[comptime]
        if let ComptimeOption::Some(map) = weights_map {
            let box_vectors = comptime!(params.w_vectors(n) / params.weight_boxes());
            let stage_start = comptime!(buffer * params.w_stage_vectors(n));
            #[unroll]
            for b in 0..comptime!(params.weight_boxes()) {
                let start = comptime!(stage_start + b * box_vectors);
                let destination = &mut stage_w.slice_mut(start, start + box_vectors);
                if comptime!(params.transposed_weights) {
                    // `[E, width, depth]`: the tile's columns, 64 depth columns per box.
                    barrier.tma_load_3d(
                        map,
                        destination,
                        i32::cast_from(expert),
                        i32::cast_from(first_col),
                        i32::cast_from(k0 + comptime!(b * TMA_BOX_COLS)),
                    );
                } else {
                    // `[E, depth, groups, width]`: the stage's depth, 64 columns per box.
                    let group = comptime!(b * TMA_BOX_COLS / params.tile_cols);
                    let column = first_col + comptime!(b * TMA_BOX_COLS % params.tile_cols);
                    barrier.tma_load_4d(
                        map,
                        destination,
                        i32::cast_from(expert),
                        i32::cast_from(k0),
                        comptime!(group as i32),
                        i32::cast_from(column),
                    );
                }
            }
        }
        #[comptime]
        if let ComptimeOption::Some(map) = rows_map {
            let box_vectors = comptime!(params.tile_rows * TMA_BOX_COLS / n);
            let stage_start = comptime!(buffer * params.a_stage_vectors(n));
            #[unroll]
            for b in 0..comptime!(params.row_boxes()) {
                let start = comptime!(stage_start + b * box_vectors);
                barrier.tma_load_2d(
                    map,
                    &mut stage_a.slice_mut(start, start + box_vectors),
                    i32::cast_from(first_row),
                    i32::cast_from(k0 + comptime!(b * TMA_BOX_COLS)),
                );
            }
        }
    }
}

/// Multiplies shared buffer `buffer` into the accumulators of the chosen path.
#[cube]
fn multiply_stage<F: Float, N: Size>(
    stage_a: &SharedMemory<Vector<F, N>>,
    stage_w: &SharedMemory<Vector<F, N>>,
    buffer: usize,
    rows_used: usize,
    fragments: &mut Array<Vector<f32, FragmentAcc>>,
    sums: &mut Array<f32>,
    #[comptime] params: GemmParams,
) {
    let n = N::value();
    let a_base = buffer * comptime!(params.a_stage_vectors(n));
    let w_base = buffer * comptime!(params.w_stage_vectors(n));
    if comptime!(params.tensor_cores) {
        tensor_core_stage::<F, N>(
            stage_a, stage_w, a_base, w_base, rows_used, fragments, params,
        );
    } else {
        unit_stage::<F, N>(stage_a, stage_w, a_base, w_base, sums, params);
    }
}

/// Applies the epilogue to one output element (`value`, and `up` for SwiGLU) and stores it, if
/// its row belongs to the tile's expert and its column exists. The SwiGLU backward reads the
/// element's gate and up pre-activations from `pre` and stores both gradients.
#[cube]
#[allow(clippy::too_many_arguments, reason = "kernel helper")]
pub fn write_output<F: Float, O: Float>(
    pre: &Array<F>,
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
            result = swiglu(value, up);
        }
        if comptime!(params.epilogue == Epilogue::Gelu) {
            result = gelu(value);
        }
        if comptime!(params.epilogue == Epilogue::SwiGluBackward) {
            // silu'(g) = s(g) (1 + g (1 - s(g))); d_gate = d_h up silu'(g), d_up = d_h silu(g).
            let at = row * 2 * width + col;
            let gate = f32::cast_from(pre[at]);
            let up = f32::cast_from(pre[at + width]);
            let sigmoid = 1.0 / (1.0 + f32::exp(-gate));
            output[out_offset + at] =
                O::cast_from(value * up * sigmoid * (1.0 + gate * (1.0 - sigmoid)));
            output[out_offset + at + width] = O::cast_from(value * gate * sigmoid);
        } else {
            output[out_offset + row * width + col] = O::cast_from(result);
        }
    }
}
