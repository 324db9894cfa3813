//! Weight gradient of the expert projections: `grad[e] = A_e^T @ B_e`, the sum over expert e's
//! routed rows r of `outer(a[source(r)], b[r])`.
//!
//! Work: one cube per (expert, block of `tile_m` gradient rows, block of `tile_n` columns); grid
//! x runs over the side with fewer blocks (`m_fastest`: row blocks), y over the other, z over
//! experts, so the grid depends on the shapes only, never on the routing. The cubes resident at
//! once then share a few blocks of the wide operand and read all of the narrow one, which stays
//! in L2 (the other order streams the whole wide operand of an expert, e.g. `dGU_e`, 38 MB for
//! Mixtral at T=4096, once per row block). Each cube reads its expert's row range from
//! `expert_offsets` on the device and loops over it `stage_rows` rows at a time, so every
//! gradient element is summed by one cube in row order: deterministic, no atomics, no host
//! round trip. An expert without rows writes zeros.
//!
//! Operands: `a` rows in dispatch order, or (`gather`) token rows read through `routed_pairs`
//! (source = pair / slots); `b` rows in dispatch order. Stage buffers hold `[stage_rows][tile_m]`
//! of `a` and `[stage_rows][tile_n]` of `b`; rows past the expert's end, columns past the widths
//! and gathered tokens out of range load as zeros. Offsets are clamped to the routed rows, so a
//! corrupt plan gives wrong numbers, never an access out of bounds.
//!
//! Pipeline (`params.pipeline`, as in the grouped GEMM): each stage goes through registers into
//! one of two shared buffers while the previous one is multiplied, or (CUDA) by asynchronous
//! copies into one of several buffers, several stages ahead (`crate::pipeline`); one cube-wide
//! barrier per stage either way. The asynchronous pipeline reads the gathered token rows of a
//! stage one stage before it copies them, so the copies never wait on `routed_pairs` (they
//! otherwise stalled every stage, unlike the grouped GEMM, whose rows stay fixed per tile).
//!
//! Multiplication: tensor cores (`tensor_cores.rs`: `mma.sync` fed by transposing `ldmatrix`,
//! f32 accumulators in each plane's registers) or, portable, each unit sums `unit_m` x `unit_n`
//! products in f32 registers (any runtime and float type). Epilogue: the sums go into a gradient tile in shared
//! memory, which the cube then writes in whole vectors along the gradient's rows.

use cubecl::prelude::*;

use super::params::WeightGradParams;
use super::tensor_cores::{
    FragmentAcc, register_fragment_sizes, tensor_core_accumulators, tensor_core_epilogue,
    tensor_core_stage,
};
use crate::pipeline::{
    Pipeline, Source, StageVector, commit_stage, copy_vector_async, read_vector, stage_barriers,
    stage_destination, stage_vector, wait_stage,
};

/// Weight gradient (see the module docs). `a`, `b` and `grad` are vectorised along their rows
/// (`N` values per vector); `a_width` and `b_width` are multiples of `N`.
#[cube(launch_unchecked)]
#[allow(
    clippy::too_many_arguments,
    reason = "kernel arguments are buffers and sizes"
)]
pub fn expert_weight_grad<F: Float, I: Int, N: Size>(
    a: &Array<Vector<F, N>>, // [a_rows, a_width]: tokens x [T, d] (gather) or h [P, F]
    b: &Array<Vector<F, N>>, // [P, b_width] in dispatch order
    routed_pairs: &Array<I>, // [P] pair of each row (gather: token = pair / slots)
    expert_offsets: &Array<I>, // [E + 1]
    grad: &mut Array<Vector<F, N>>, // [E, a_width, b_width]
    a_rows: usize,
    a_width: usize,
    b_width: usize,
    slots: usize,
    num_pairs: usize,
    #[comptime] params: WeightGradParams,
    #[comptime] gather: bool,
    #[comptime] m_fastest: bool,
) {
    let n = N::value();
    let expert = CUBE_POS_Z as usize;
    let (m_block, n_block) = if comptime!(m_fastest) {
        (CUBE_POS_X as usize, CUBE_POS_Y as usize)
    } else {
        (CUBE_POS_Y as usize, CUBE_POS_X as usize)
    };
    let first_m = m_block * params.tile_m;
    let first_n = n_block * params.tile_n;
    let row_end = min(
        u32::cast_from(expert_offsets[expert + 1]) as usize,
        num_pairs,
    );
    let row_begin = min(u32::cast_from(expert_offsets[expert]) as usize, row_end);
    let stages = (row_end - row_begin).div_ceil(params.stage_rows);

    let a_stage = comptime!(params.a_stage_vectors(n));
    let b_stage = comptime!(params.b_stage_vectors(n));
    let buffers = comptime!(params.pipeline.buffers());
    let mut stage_a =
        SharedMemory::<Vector<F, N>>::new_aligned(comptime!(buffers * a_stage), 128usize);
    let mut stage_b =
        SharedMemory::<Vector<F, N>>::new_aligned(comptime!(buffers * b_stage), 128usize);

    register_fragment_sizes::<F>(params.tensor_cores);
    let mut fragments = tensor_core_accumulators(params);
    let mut sums = Array::<f32>::new(comptime!(params.unit_accumulators()));
    #[unroll]
    for i in 0..comptime!(params.unit_accumulators()) {
        sums[i] = 0.0;
    }

    let operands = StageOperands {
        row_end,
        first_m,
        first_n,
        a_rows,
        a_width,
        b_width,
        slots,
    };
    if comptime!(params.pipeline == Pipeline::Registers) {
        let mut staged_a = Array::<Vector<F, N>>::new(comptime!(params.a_loads_per_unit(n)));
        let mut staged_b = Array::<Vector<F, N>>::new(comptime!(params.b_loads_per_unit(n)));
        if stages > 0 {
            load_stage::<F, I, N>(
                a,
                b,
                routed_pairs,
                &operands,
                row_begin,
                &mut staged_a,
                &mut staged_b,
                params,
                gather,
            );
            store_stage::<F, N>(&staged_a, &staged_b, &mut stage_a, &mut stage_b, 0, params);
        }
        sync_cube();
        for s in 0..stages {
            let next = s + 1 < stages;
            if next {
                load_stage::<F, I, N>(
                    a,
                    b,
                    routed_pairs,
                    &operands,
                    row_begin + (s + 1) * params.stage_rows,
                    &mut staged_a,
                    &mut staged_b,
                    params,
                    gather,
                );
            }
            multiply_stage::<F, N>(&stage_a, &stage_b, s % 2, &mut fragments, &mut sums, params);
            if next {
                store_stage::<F, N>(
                    &staged_a,
                    &staged_b,
                    &mut stage_a,
                    &mut stage_b,
                    (s + 1) % 2,
                    params,
                );
            }
            sync_cube();
        }
    } else {
        // Buffer b holds stages b, b + buffers, ...: see `crate::pipeline`.
        // `tokens` holds the `a` rows of the next stage to copy, read one stage ahead.
        let landed = stage_barriers(buffers);
        let mut tokens = Array::<u32>::new(comptime!(params.a_loads_per_unit(n)));
        #[unroll]
        for first in 0..comptime!(buffers - 1) {
            if first < stages {
                let row0 = row_begin + first * params.stage_rows;
                load_tokens::<I>(
                    routed_pairs,
                    &operands,
                    row0,
                    &mut tokens,
                    params,
                    gather,
                    n,
                );
                copy_stage::<F, N>(
                    a,
                    b,
                    &tokens,
                    &operands,
                    row0,
                    &mut stage_a,
                    &mut stage_b,
                    first,
                    params,
                );
                commit_stage(&landed, first);
            }
        }
        load_tokens::<I>(
            routed_pairs,
            &operands,
            row_begin + (buffers - 1) * params.stage_rows,
            &mut tokens,
            params,
            gather,
            n,
        );
        let rounds = (stages + buffers - 1) / buffers;
        for round in 0..rounds {
            #[unroll]
            for buffer in 0..buffers {
                let s = round * buffers + buffer;
                if s < stages {
                    wait_stage(&landed, buffer, round);
                    let ahead = s + buffers - 1;
                    if ahead < stages {
                        let refill = comptime!((buffer + buffers - 1) % buffers);
                        copy_stage::<F, N>(
                            a,
                            b,
                            &tokens,
                            &operands,
                            row_begin + ahead * params.stage_rows,
                            &mut stage_a,
                            &mut stage_b,
                            refill,
                            params,
                        );
                        commit_stage(&landed, refill);
                        load_tokens::<I>(
                            routed_pairs,
                            &operands,
                            row_begin + (ahead + 1) * params.stage_rows,
                            &mut tokens,
                            params,
                            gather,
                            n,
                        );
                    }
                    multiply_stage::<F, N>(
                        &stage_a,
                        &stage_b,
                        buffer,
                        &mut fragments,
                        &mut sums,
                        params,
                    );
                }
            }
        }
        // Every plane is done reading the buffers before the tile reuses them (the register
        // pipeline ends each stage with this barrier already).
        sync_cube();
    }

    // The gradient tile reuses the stage buffers' memory where the compiler reuses freed shared
    // memory (CUDA; `pipeline::reuses_freed_shared_memory`). The barriers stay live; they were
    // first used in the kernel's first block, so they sit before the buffers and the tile goes
    // at the buffers' start.
    unsafe {
        stage_a.free();
        stage_b.free();
    }
    let mut tile = SharedMemory::<F>::new(comptime!(params.out_tile_len()));
    if comptime!(params.tensor_cores) {
        tensor_core_epilogue::<F>(&fragments, &mut tile, params);
    } else {
        unit_epilogue::<F>(&sums, &mut tile, params);
    }
    sync_cube();
    store_tile::<F, N>(
        &tile, grad, expert, first_m, first_n, a_width, b_width, params,
    );
}

/// Where one cube's stages come from: the end of its expert's rows, its gradient block and the
/// operand sizes.
#[derive(CubeType)]
struct StageOperands {
    row_end: usize,
    first_m: usize,
    first_n: usize,
    a_rows: usize,
    a_width: usize,
    b_width: usize,
    slots: usize,
}

/// This unit's `i`-th vector of an `a` stage (`stage_rows` rows of `tile_m` columns).
#[cube]
fn a_vector(i: usize, #[comptime] params: WeightGradParams, #[comptime] n: usize) -> StageVector {
    stage_vector(
        i,
        params.units(),
        comptime!(params.a_vectors(n)),
        comptime!(params.tile_m / n),
    )
}

/// This unit's `i`-th vector of a `b` stage (`stage_rows` rows of `tile_n` columns).
#[cube]
fn b_vector(i: usize, #[comptime] params: WeightGradParams, #[comptime] n: usize) -> StageVector {
    stage_vector(
        i,
        params.units(),
        comptime!(params.b_vectors(n)),
        comptime!(params.tile_n / n),
    )
}

/// Where the `a` vector `at` comes from, given the token row it reads (`a_rows` where the
/// stage's row is past the expert's end): not live past the width or the tokens.
#[cube]
fn a_source(operands: &StageOperands, token: u32, at: StageVector, #[comptime] n: usize) -> Source {
    let col = operands.first_m + at.column * n;
    let token = token as usize;
    Source {
        index: (token * operands.a_width + col) / n,
        live: token < operands.a_rows && col < operands.a_width,
    }
}

/// Writes into `tokens` the row of `a` that each of this unit's `a` vectors of the stage at
/// routed row `row0` reads: the routed row itself, or (`gather`) its token read through
/// `routed_pairs`; `a_rows` (nothing to read) for rows past the expert's end. The asynchronous
/// pipeline calls it one stage before the copies that use it, so no copy waits on the read.
#[cube]
fn load_tokens<I: Int>(
    routed_pairs: &Array<I>,
    operands: &StageOperands,
    row0: usize,
    tokens: &mut Array<u32>,
    #[comptime] params: WeightGradParams,
    #[comptime] gather: bool,
    #[comptime] n: usize,
) {
    #[unroll]
    for i in 0..comptime!(params.a_loads_per_unit(n)) {
        let at = a_vector(i, params, n);
        let row = row0 + at.row;
        let mut token = operands.a_rows as u32;
        if at.present && row < operands.row_end {
            token = row as u32;
            if comptime!(gather) {
                token = u32::cast_from(routed_pairs[row]) / operands.slots as u32;
            }
        }
        tokens[i] = token;
    }
}

/// Where the `b` vector `at` of the stage at routed row `row0` comes from: not live past the
/// expert's rows or the width.
#[cube]
fn b_source(
    operands: &StageOperands,
    row0: usize,
    at: StageVector,
    #[comptime] n: usize,
) -> Source {
    let row = row0 + at.row;
    let col = operands.first_n + at.column * n;
    Source {
        index: (row * operands.b_width + col) / n,
        live: at.present && row < operands.row_end && col < operands.b_width,
    }
}

/// Where the `a` vector `at` goes in shared buffer `buffer`.
#[cube]
fn a_destination(
    at: StageVector,
    buffer: usize,
    #[comptime] params: WeightGradParams,
    #[comptime] n: usize,
) -> usize {
    stage_destination(
        at,
        buffer,
        comptime!(params.a_stride() / n),
        comptime!(params.a_stage_vectors(n)),
    )
}

/// Where the `b` vector `at` goes in shared buffer `buffer`.
#[cube]
fn b_destination(
    at: StageVector,
    buffer: usize,
    #[comptime] params: WeightGradParams,
    #[comptime] n: usize,
) -> usize {
    stage_destination(
        at,
        buffer,
        comptime!(params.b_stride() / n),
        comptime!(params.b_stage_vectors(n)),
    )
}

/// Loads one stage (routed rows `row0..row0 + stage_rows`, clipped at the expert's end) of `a`
/// columns `first_m..first_m + tile_m` and `b` columns `first_n..first_n + tile_n` into this
/// unit's registers; zeros where out of range.
#[cube]
#[allow(clippy::too_many_arguments, reason = "kernel helper")]
fn load_stage<F: Float, I: Int, N: Size>(
    a: &Array<Vector<F, N>>,
    b: &Array<Vector<F, N>>,
    routed_pairs: &Array<I>,
    operands: &StageOperands,
    row0: usize,
    staged_a: &mut Array<Vector<F, N>>,
    staged_b: &mut Array<Vector<F, N>>,
    #[comptime] params: WeightGradParams,
    #[comptime] gather: bool,
) {
    let n = N::value();
    let mut tokens = Array::<u32>::new(comptime!(params.a_loads_per_unit(n)));
    load_tokens::<I>(routed_pairs, operands, row0, &mut tokens, params, gather, n);
    #[unroll]
    for i in 0..comptime!(params.a_loads_per_unit(n)) {
        let source = a_source(operands, tokens[i], a_vector(i, params, n), n);
        staged_a[i] = read_vector::<F, N>(a, source);
    }
    #[unroll]
    for i in 0..comptime!(params.b_loads_per_unit(n)) {
        let source = b_source(operands, row0, b_vector(i, params, n), n);
        staged_b[i] = read_vector::<F, N>(b, source);
    }
}

/// Writes the staged registers into shared-memory buffer `buffer` (0 or 1).
#[cube]
fn store_stage<F: Float, N: Size>(
    staged_a: &Array<Vector<F, N>>,
    staged_b: &Array<Vector<F, N>>,
    stage_a: &mut SharedMemory<Vector<F, N>>,
    stage_b: &mut SharedMemory<Vector<F, N>>,
    buffer: usize,
    #[comptime] params: WeightGradParams,
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
    for i in 0..comptime!(params.b_loads_per_unit(n)) {
        let at = b_vector(i, params, n);
        if at.present {
            stage_b[b_destination(at, buffer, params, n)] = staged_b[i];
        }
    }
}

/// Starts the asynchronous copies of one stage into shared buffer `buffer`, its `a` rows given by
/// `tokens` (`load_tokens`); sources out of range copy zeros. The caller commits them on the
/// buffer's barrier.
#[cube]
#[allow(clippy::too_many_arguments, reason = "kernel helper")]
fn copy_stage<F: Float, N: Size>(
    a: &Array<Vector<F, N>>,
    b: &Array<Vector<F, N>>,
    tokens: &Array<u32>,
    operands: &StageOperands,
    row0: usize,
    stage_a: &mut SharedMemory<Vector<F, N>>,
    stage_b: &mut SharedMemory<Vector<F, N>>,
    buffer: usize,
    #[comptime] params: WeightGradParams,
) {
    let n = N::value();
    #[unroll]
    for i in 0..comptime!(params.a_loads_per_unit(n)) {
        let at = a_vector(i, params, n);
        if at.present {
            let source = a_source(operands, tokens[i], at, n);
            copy_vector_async::<F, N>(a, source, stage_a, a_destination(at, buffer, params, n));
        }
    }
    #[unroll]
    for i in 0..comptime!(params.b_loads_per_unit(n)) {
        let at = b_vector(i, params, n);
        if at.present {
            let source = b_source(operands, row0, at, n);
            copy_vector_async::<F, N>(b, source, stage_b, b_destination(at, buffer, params, n));
        }
    }
}

/// Multiplies shared buffer `buffer` into the accumulators of the chosen path.
#[cube]
fn multiply_stage<F: Float, N: Size>(
    stage_a: &SharedMemory<Vector<F, N>>,
    stage_b: &SharedMemory<Vector<F, N>>,
    buffer: usize,
    fragments: &mut Array<Vector<f32, FragmentAcc>>,
    sums: &mut Array<f32>,
    #[comptime] params: WeightGradParams,
) {
    let n = N::value();
    let a_base = buffer * comptime!(params.a_stage_vectors(n));
    let b_base = buffer * comptime!(params.b_stage_vectors(n));
    if comptime!(params.tensor_cores) {
        tensor_core_stage::<F, N>(stage_a, stage_b, a_base, b_base, fragments, params);
    } else {
        unit_stage::<F, N>(stage_a, stage_b, a_base, b_base, sums, params);
    }
}

/// Multiplies one shared-memory stage on the units: each sums `unit_m` x `unit_n` outer products
/// of its `a` and `b` columns over the stage's rows.
#[cube]
fn unit_stage<F: Float, N: Size>(
    stage_a: &SharedMemory<Vector<F, N>>,
    stage_b: &SharedMemory<Vector<F, N>>,
    a_base: usize,
    b_base: usize,
    sums: &mut Array<f32>,
    #[comptime] params: WeightGradParams,
) {
    let n = N::value();
    let units_per_row = comptime!(params.tile_n / params.unit_n);
    let unit_first_m = (UNIT_POS as usize / units_per_row) * params.unit_m;
    let unit_first_n = (UNIT_POS as usize % units_per_row) * params.unit_n;
    let a_stride = comptime!(params.a_stride() / n);
    let b_stride = comptime!(params.b_stride() / n);
    let mut a_values = Array::<Vector<F, N>>::new(comptime!(params.unit_m / n));
    let mut b_values = Array::<Vector<F, N>>::new(comptime!(params.unit_n / n));
    #[unroll]
    for k in 0..params.stage_rows {
        #[unroll]
        for iv in 0..comptime!(params.unit_m / n) {
            a_values[iv] = stage_a[a_base + k * a_stride + unit_first_m / n + iv];
        }
        #[unroll]
        for jv in 0..comptime!(params.unit_n / n) {
            b_values[jv] = stage_b[b_base + k * b_stride + unit_first_n / n + jv];
        }
        #[unroll]
        for i in 0..params.unit_m {
            let a_value = f32::cast_from(a_values[comptime!(i / n)][comptime!(i % n)]);
            #[unroll]
            for j in 0..params.unit_n {
                let b_value = f32::cast_from(b_values[comptime!(j / n)][comptime!(j % n)]);
                sums[comptime!(i * params.unit_n + j)] += a_value * b_value;
            }
        }
    }
}

/// Writes the portable path's register sums into the cube's gradient tile in shared memory.
#[cube]
fn unit_epilogue<F: Float>(
    sums: &Array<f32>,
    tile: &mut SharedMemory<F>,
    #[comptime] params: WeightGradParams,
) {
    let units_per_row = comptime!(params.tile_n / params.unit_n);
    let unit_first_m = (UNIT_POS as usize / units_per_row) * params.unit_m;
    let unit_first_n = (UNIT_POS as usize % units_per_row) * params.unit_n;
    #[unroll]
    for i in 0..params.unit_m {
        #[unroll]
        for j in 0..params.unit_n {
            tile[(unit_first_m + i) * comptime!(params.out_stride()) + unit_first_n + j] =
                F::cast_from(sums[comptime!(i * params.unit_n + j)]);
        }
    }
}

/// Copies the cube's gradient tile from shared memory to block (`first_m`, `first_n`) of
/// `expert`'s gradient in whole vectors of `N` (`b_width` is a multiple of `N`), the cube's
/// units taking consecutive vectors of each row: full 32-byte sectors, where the accumulators'
/// own layout would write two elements per row and lane.
#[cube]
#[allow(clippy::too_many_arguments, reason = "kernel helper")]
fn store_tile<F: Float, N: Size>(
    tile: &SharedMemory<F>,
    grad: &mut Array<Vector<F, N>>,
    expert: usize,
    first_m: usize,
    first_n: usize,
    a_width: usize,
    b_width: usize,
    #[comptime] params: WeightGradParams,
) {
    let n = N::value();
    let row_vectors = comptime!(params.tile_n / n);
    let vectors = comptime!(params.tile_m * params.tile_n / n);
    #[unroll]
    for i in 0..comptime!(vectors.div_ceil(params.units())) {
        let at = stage_vector(i, params.units(), vectors, row_vectors);
        let row = first_m + at.row;
        let col = first_n + at.column * n;
        if at.present && row < a_width && col < b_width {
            let start = at.row * comptime!(params.out_stride()) + at.column * n;
            let mut value = Vector::<F, N>::empty();
            #[unroll]
            for e in 0..n {
                value[e] = tile[start + e];
            }
            grad[((expert * a_width + row) * b_width + col) / n] = value;
        }
    }
}
