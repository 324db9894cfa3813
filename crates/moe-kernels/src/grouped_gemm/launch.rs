//! Host side of the grouped GEMM: validate, allocate, launch.

use cubecl::ir::features::{MmaConfig, Tma};
use cubecl::prelude::*;
use cubecl::server::Handle;
use cubecl::zspace::{Shape, Strides};

use super::config::ExpertGemmConfig;
use super::kernel::grouped_gemm;
use super::params::{Epilogue, GemmParams, TMA_BOX_COLS};
use super::tensor_cores::{MMA_K, MMA_M, MMA_N};
use crate::buffer::{expect_grid, expect_len, expect_positive};
use crate::dispatch::DispatchOnDevice;
use crate::dispatch::reference::max_tiles;
use crate::pipeline::{load_vector, on_device};
use crate::{Activation, InvalidValue, KernelError};

/// Sizes of the expert computation of one batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExpertShape {
    /// Tokens T.
    pub num_tokens: usize,
    /// Routing slots per token (P = T x slots pairs).
    pub slots: usize,
    /// Experts E.
    pub num_experts: usize,
    /// Model width d.
    pub d_model: usize,
    /// Hidden width F of each expert.
    pub width: usize,
}

impl ExpertShape {
    /// (token, slot) pairs P: the most rows the experts can receive.
    pub fn num_pairs(&self) -> usize {
        self.num_tokens * self.slots
    }
}

/// Output rows of the experts, in dispatch order: `[splits, P, d]`. With one split the rows are
/// of the input's float type; with several, each block holds f32 partial sums over a slice of
/// the depth and combine adds them.
#[derive(Clone, Debug)]
pub struct ExpertRows {
    /// `[splits, P, d]`; rows past the routed row count S are not written.
    pub rows: Handle,
    /// Blocks of partial sums (1: the rows themselves).
    pub splits: usize,
}

/// Whether the device multiplies `F` on tensor cores with f32 accumulators (`mma.sync`
/// m16n8k16 fed by `ldmatrix`, which the tensor-core path uses).
pub fn has_tensor_cores<R: Runtime, F: CubeElement>(client: &ComputeClient<R>) -> bool {
    let config = MmaConfig {
        a_type: F::cube_type(),
        b_type: F::cube_type(),
        cd_type: f32::cube_type(),
        m: MMA_M as u32,
        n: MMA_N as u32,
        k: MMA_K as u32,
    };
    size_of::<F>() == 2 && client.properties().features.matmul.mma.contains(&config)
}

/// Streaming multiprocessors of the device, where the runtime reports them (the split-K rule
/// sizes decode grids by them).
pub fn multiprocessors<R: Runtime>(client: &ComputeClient<R>) -> Option<usize> {
    client
        .properties()
        .hardware
        .num_streaming_multiprocessors
        .map(|n| n as usize)
}

/// The size rule's tiles for `shape` with floats `F` on this device: tensor cores where it has
/// them for `F`, split-K sized by its multiprocessors, the register pipeline where it has no
/// asynchronous copies, weight stages as TMA boxes where it has TMA and the class gains from
/// them.
pub fn device_config<R: Runtime, F: CubeElement>(
    client: &ComputeClient<R>,
    shape: &ExpertShape,
    activation: Activation,
) -> ExpertGemmConfig {
    let config = ExpertGemmConfig::choose(
        shape,
        activation,
        has_tensor_cores::<R, F>(client),
        multiprocessors(client),
    );
    let config = config.with_pipeline(on_device(client, config.input.pipeline));
    if has_tma(client) && config.input.tensor_cores && config.gains_from_tma() {
        // Weights only: the output projection's rows as boxes measured slower (2198 against
        // 1966 us, Mixtral T=4096 on an H100; docs/GPU.md).
        config.with_tma(shape, false)
    } else {
        config
    }
}

/// First projection of every routed row: `hidden[row] = act(x[token of row] @ w_in[e])`, a new
/// `[P, F]` buffer of `F` (rows past S not written). `params` must gather and hold the
/// activation's epilogue.
///
/// `x` is `[T, d]`, `w_in` `[E, d, input_columns(F)]`, both of `F`, contiguous.
pub fn input_projection<R: Runtime, F: Float + CubeElement, I: Int + CubeElement>(
    client: &ComputeClient<R>,
    x: &Handle,
    w_in: &Handle,
    plan: &DispatchOnDevice,
    shape: ExpertShape,
    params: &GemmParams,
) -> Result<Handle, KernelError> {
    let hidden = client.empty(shape.num_pairs() * shape.width * size_of::<F>());
    input_projection_into::<R, F, I>(client, x, w_in, plan, shape, params, &hidden)?;
    Ok(hidden)
}

/// Like [`input_projection`], into a caller-provided `[P, F]` buffer (which tests poison first).
pub fn input_projection_into<R: Runtime, F: Float + CubeElement, I: Int + CubeElement>(
    client: &ComputeClient<R>,
    x: &Handle,
    w_in: &Handle,
    plan: &DispatchOnDevice,
    shape: ExpertShape,
    params: &GemmParams,
    hidden: &Handle,
) -> Result<(), KernelError> {
    if !params.gather || params.split_k != 1 {
        return Err(KernelError::Unsupported(
            "the input projection gathers token rows and has no split".into(),
        ));
    }
    let operands = ExpertOperands {
        a: x,
        a_rows: shape.num_tokens,
        weights: w_in,
        pre: None,
        depth: shape.d_model,
        width: shape.width,
        output: hidden,
    };
    launch::<R, F, F, I>(client, &operands, plan, shape, params)
}

/// Second projection of every routed row: `rows[row] = hidden[row] @ w_out[e]`, into new buffers
/// (see [`ExpertRows`]: f32 partial sums when `params.split_k > 1`).
///
/// `hidden` is `[P, F]` (as [`input_projection`] writes it), `w_out` `[E, F, d]`, both of `F`.
pub fn output_projection<R: Runtime, F: Float + CubeElement, I: Int + CubeElement>(
    client: &ComputeClient<R>,
    hidden: &Handle,
    w_out: &Handle,
    plan: &DispatchOnDevice,
    shape: ExpertShape,
    params: &GemmParams,
) -> Result<ExpertRows, KernelError> {
    let splits = params.split_k;
    let elem = if splits > 1 {
        size_of::<f32>()
    } else {
        size_of::<F>()
    };
    let rows = client.empty(splits * shape.num_pairs() * shape.d_model * elem);
    output_projection_into::<R, F, I>(client, hidden, w_out, plan, shape, params, &rows)?;
    Ok(ExpertRows { rows, splits })
}

/// Like [`output_projection`], into a caller-provided `[splits, P, d]` buffer.
pub fn output_projection_into<R: Runtime, F: Float + CubeElement, I: Int + CubeElement>(
    client: &ComputeClient<R>,
    hidden: &Handle,
    w_out: &Handle,
    plan: &DispatchOnDevice,
    shape: ExpertShape,
    params: &GemmParams,
    rows: &Handle,
) -> Result<(), KernelError> {
    if params.gather {
        return Err(KernelError::Unsupported(
            "the output projection reads rows in dispatch order".into(),
        ));
    }
    let operands = ExpertOperands {
        a: hidden,
        a_rows: shape.num_pairs(),
        weights: w_out,
        pre: None,
        depth: shape.width,
        width: shape.d_model,
        output: rows,
    };
    if params.split_k > 1 {
        launch::<R, F, f32, I>(client, &operands, plan, shape, params)
    } else {
        launch::<R, F, F, I>(client, &operands, plan, shape, params)
    }
}

/// The buffers and sizes of one grouped GEMM: `output[row] = epilogue(a[source of row] @
/// weights[expert of row])`, with `depth` rows of weights and `width` output columns per group
/// (`params.transposed_weights`: weights stored `[E, width, depth]`).
#[derive(Clone, Copy, Debug)]
pub struct ExpertOperands<'a> {
    /// `[a_rows, depth]`: token rows (gather) or rows in dispatch order.
    pub a: &'a Handle,
    /// Rows of `a`.
    pub a_rows: usize,
    /// `[E, depth, groups * width]`, or `[E, width, depth]` transposed.
    pub weights: &'a Handle,
    /// `[P, 2 * width]`: the gate and up pre-activations the SwiGLU backward's epilogue reads
    /// (`None` for the other epilogues).
    pub pre: Option<&'a Handle>,
    /// Reduction length.
    pub depth: usize,
    /// Output columns.
    pub width: usize,
    /// `[split_k, P, width]` of the output type (`[P, 2 * width]` for the SwiGLU backward).
    pub output: &'a Handle,
}

/// One grouped GEMM on caller-provided operands with output element `O` (f32 for split-K
/// partial sums, else `F`): the training forward's pre-activations and the backward's input
/// gradients through transposed weights use it directly.
pub fn expert_matmul<
    R: Runtime,
    F: Float + CubeElement,
    O: Float + CubeElement,
    I: Int + CubeElement,
>(
    client: &ComputeClient<R>,
    operands: &ExpertOperands,
    plan: &DispatchOnDevice,
    shape: ExpertShape,
    params: &GemmParams,
) -> Result<(), KernelError> {
    launch::<R, F, O, I>(client, operands, plan, shape, params)
}

/// Validates, then launches one grouped GEMM with output element `O`.
fn launch<R: Runtime, F: Float + CubeElement, O: Float + CubeElement, I: Int + CubeElement>(
    client: &ComputeClient<R>,
    operands: &ExpertOperands,
    plan: &DispatchOnDevice,
    shape: ExpertShape,
    params: &GemmParams,
) -> Result<(), KernelError> {
    let vector = validate::<R, F, O, I>(client, operands, plan, shape, params)?;
    let num_pairs = shape.num_pairs();
    let tiles = max_tiles(num_pairs, shape.num_experts, plan.tile_rows);
    let col_blocks = operands.width.div_ceil(params.tile_cols);
    let weights_len = weights_len(operands, shape, params);
    let pre_len = match operands.pre {
        Some(_) => 2 * num_pairs * operands.width,
        None => 1,
    };
    // SAFETY: `validate` checked every buffer against these sizes; the kernel reads `a` rows
    // below `a_rows` (gathered rows are tokens of routed pairs), weights of experts below E,
    // `pre` rows below P (SwiGLU backward only), and writes rows below P of block
    // `split` < split_k.
    unsafe {
        grouped_gemm::launch_unchecked::<F, O, I, R>(
            client,
            CubeCount::Static((tiles * col_blocks) as u32, params.split_k as u32, 1),
            CubeDim::new_1d(params.units() as u32),
            vector,
            ArrayArg::from_raw_parts(
                operands.a.clone(),
                operands.a_rows * operands.depth / vector,
            ),
            rows_map::<R, F>(operands, params),
            ArrayArg::from_raw_parts(operands.weights.clone(), weights_len / vector),
            weights_map::<R, F>(operands, shape, params),
            // The other epilogues never read `pre`: any buffer of the float type serves.
            ArrayArg::from_raw_parts(operands.pre.unwrap_or(operands.a).clone(), pre_len),
            ArrayArg::from_raw_parts(plan.routed_pairs.clone(), num_pairs),
            ArrayArg::from_raw_parts(plan.expert_offsets.clone(), shape.num_experts + 1),
            ArrayArg::from_raw_parts(plan.tiles.clone(), 2 * tiles),
            ArrayArg::from_raw_parts(plan.num_tiles.clone(), 1),
            ArrayArg::from_raw_parts(operands.output.clone(), output_len(operands, shape, params)),
            operands.a_rows,
            operands.depth,
            operands.width,
            shape.slots,
            shape.num_experts,
            tiles,
            num_pairs,
            *params,
        );
    }
    Ok(())
}

/// Whether the device of `client` loads tensor-mapped boxes (TMA, sm_90): what the
/// `tma_weights` and `tma_rows` options need.
pub fn has_tma<R: Runtime>(client: &ComputeClient<R>) -> bool {
    client.features().tma.contains(Tma::Base)
}

/// The weights as a TMA map for `params.tma_weights`, with the 128-byte swizzle (`None` without
/// the option): `[E, depth, groups, width]`, boxes of `stage_depth` rows of [`TMA_BOX_COLS`]
/// columns; transposed, `[E, width, depth]`, boxes of `tile_cols` rows of [`TMA_BOX_COLS`]
/// depth columns.
fn weights_map<R: Runtime, F: Float + CubeElement>(
    operands: &ExpertOperands,
    shape: ExpertShape,
    params: &GemmParams,
) -> ComptimeOptionArgs<TensorMap<F, Tiled>, R> {
    if !params.tma_weights {
        return ComptimeOptionArgs::None;
    }
    let (depth, width, groups) = (operands.depth, operands.width, params.groups);
    let (dims, strides, tile_size) = if params.transposed_weights {
        (
            vec![shape.num_experts, width, depth],
            vec![width * depth, depth, 1],
            vec![1, params.tile_cols, TMA_BOX_COLS],
        )
    } else {
        (
            vec![shape.num_experts, depth, groups, width],
            vec![depth * groups * width, groups * width, width, 1],
            vec![1, params.stage_depth, 1, TMA_BOX_COLS],
        )
    };
    // SAFETY: the shape and strides describe the weights buffer, whose length `validate`
    // checked.
    let tensor = unsafe {
        TensorArg::from_raw_parts(
            operands.weights.clone(),
            Strides::from(strides),
            Shape::from(dims),
        )
    };
    let boxes = TiledArgs {
        tile_size: Shape::from(tile_size),
    };
    ComptimeOptionArgs::Some(
        TensorMapArg::new(boxes, tensor, F::as_type_native_unchecked())
            .with_swizzle(TensorMapSwizzle::B128),
    )
}

/// The A rows as a TMA map for `params.tma_rows`: `[a_rows, depth]`, boxes of `tile_rows` rows
/// of [`TMA_BOX_COLS`] depth columns with the 128-byte swizzle (`None` without the option).
fn rows_map<R: Runtime, F: Float + CubeElement>(
    operands: &ExpertOperands,
    params: &GemmParams,
) -> ComptimeOptionArgs<TensorMap<F, Tiled>, R> {
    if !params.tma_rows {
        return ComptimeOptionArgs::None;
    }
    let dims = Shape::from(vec![operands.a_rows, operands.depth]);
    let strides = Strides::from(vec![operands.depth, 1]);
    // SAFETY: the shape and strides describe `a`, whose length `validate` checked.
    let tensor = unsafe { TensorArg::from_raw_parts(operands.a.clone(), strides, dims) };
    let boxes = TiledArgs {
        tile_size: Shape::from(vec![params.tile_rows, TMA_BOX_COLS]),
    };
    ComptimeOptionArgs::Some(
        TensorMapArg::new(boxes, tensor, F::as_type_native_unchecked())
            .with_swizzle(TensorMapSwizzle::B128),
    )
}

/// Elements of the output: `[split_k, P, width]`, with both gradients per column for the SwiGLU
/// backward.
fn output_len(operands: &ExpertOperands, shape: ExpertShape, params: &GemmParams) -> usize {
    params.split_k * shape.num_pairs() * operands.width * params.epilogue.output_groups()
}

/// Elements of the weights of all experts.
fn weights_len(operands: &ExpertOperands, shape: ExpertShape, params: &GemmParams) -> usize {
    shape.num_experts * operands.depth * params.groups * operands.width
}

/// Checks shapes, buffers and the device's limits; returns the vector width of the loads.
fn validate<R: Runtime, F: Float + CubeElement, O: CubeElement, I: CubeElement>(
    client: &ComputeClient<R>,
    operands: &ExpertOperands,
    plan: &DispatchOnDevice,
    shape: ExpertShape,
    params: &GemmParams,
) -> Result<usize, KernelError> {
    expect_positive(&[
        ("num_tokens", shape.num_tokens),
        ("slots", shape.slots),
        ("num_experts", shape.num_experts),
        ("d_model", shape.d_model),
        ("width", shape.width),
    ])?;
    let num_pairs = shape.num_pairs();
    plan.expect_batch::<I>(num_pairs, shape.num_experts, params.tile_rows)?;

    let elem = size_of::<F>();
    let weights_len = weights_len(operands, shape, params);
    expect_len(operands.a, "a", operands.a_rows * operands.depth, elem)?;
    expect_len(operands.weights, "weights", weights_len, elem)?;
    expect_len(
        operands.output,
        "output",
        output_len(operands, shape, params),
        size_of::<O>(),
    )?;
    match (operands.pre, params.epilogue == Epilogue::SwiGluBackward) {
        (Some(pre), true) => expect_len(pre, "pre", 2 * num_pairs * operands.width, elem)?,
        (None, false) => {}
        (pre, _) => {
            return Err(InvalidValue::new(
                "pre",
                if pre.is_some() { "given" } else { "missing" },
                "the SwiGLU backward's epilogue, and only it, reads the pre-activations",
            )
            .into());
        }
    }
    let tiles = max_tiles(num_pairs, shape.num_experts, plan.tile_rows);

    let unsupported = |reason: String| Err(KernelError::Unsupported(reason));
    if params.tensor_cores && !has_tensor_cores::<R, F>(client) {
        return unsupported("this device has no tensor cores for this float type".into());
    }
    let vector = load_vector(
        client,
        params.pipeline,
        elem,
        &[operands.depth, operands.width],
        |v| params.check(v),
    )
    .or_else(unsupported)?;
    if params.tma_weights || params.tma_rows {
        if !has_tma(client) {
            return unsupported(
                "this device has no TMA (tensor memory access) for stage boxes".into(),
            );
        }
        // TMA strides are multiples of 16 bytes: the weights' rows (`width`, or `depth`
        // transposed), `a`'s (`depth`).
        let weight_row = if params.transposed_weights {
            ("depth", operands.depth)
        } else {
            ("width", operands.width)
        };
        let rows = [
            (params.tma_weights, weight_row.0, weight_row.1),
            (params.tma_rows, "depth", operands.depth),
        ];
        if let Some((_, name, len)) = rows
            .into_iter()
            .find(|&(boxed, _, len)| boxed && !(len * elem).is_multiple_of(16))
        {
            return unsupported(format!(
                "TMA boxes need rows of a multiple of 16 bytes ({name} = {len})"
            ));
        }
    }
    let properties = client.properties();
    let hardware = &properties.hardware;
    let shared = params.shared_bytes(elem);
    if shared > hardware.max_shared_memory_size {
        return unsupported(format!(
            "tiles need {shared} bytes of shared memory, the device has {}",
            hardware.max_shared_memory_size
        ));
    }
    let cubes = tiles * operands.width.div_ceil(params.tile_cols);
    expect_grid(client, [cubes, params.split_k, 1])?;
    // Indices are 32-bit: every vector and output index must fit.
    let largest = (weights_len / vector)
        .max(output_len(operands, shape, params))
        .max(operands.a_rows * operands.depth / vector);
    if largest >= i32::MAX as usize {
        return unsupported(format!("{largest} elements exceed 32-bit indexing"));
    }
    Ok(vector)
}
