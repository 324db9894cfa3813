//! Host side of the quantized grouped GEMM: validate, allocate, launch.

use cubecl::prelude::*;
use cubecl::server::Handle;

use super::format::QuantLayout;
use super::kernel::quantized_gemm;
use super::params::QuantGemmParams;
use crate::buffer::{expect_grid, expect_len, expect_positive};
use crate::dispatch::DispatchOnDevice;
use crate::dispatch::reference::max_tiles;
use crate::grouped_gemm::{Epilogue, ExpertShape};
use crate::{Activation, InvalidValue, KernelError};

/// One projection's quantized weights on the device.
#[derive(Clone, Copy, Debug)]
pub struct QuantizedOnDevice<'a> {
    /// The bytes `[E, depth, columns]`, four per 32-bit word (`format::pack_bytes`).
    pub packed: &'a Handle,
    /// f32 scales, `[E, scale rows, scale columns]` (`QuantLayout::scale_shape`).
    pub scales: &'a Handle,
    /// Shape and format.
    pub layout: QuantLayout,
}

/// The buffers of one quantized grouped GEMM: `output[row] = epilogue(a[source of row] @
/// dequantize(weights[expert of row]))`, `layout.depth` deep, `width` output columns per group.
#[derive(Clone, Copy, Debug)]
pub struct QuantizedOperands<'a> {
    /// `[a_rows, depth]` of the float type: token rows (gather) or rows in dispatch order.
    pub a: &'a Handle,
    /// Rows of `a`.
    pub a_rows: usize,
    /// `[E, depth, groups * width]`, quantized.
    pub weights: QuantizedOnDevice<'a>,
    /// Output columns.
    pub width: usize,
    /// `[P, width]` of the float type.
    pub output: &'a Handle,
}

/// First projection of every routed row, weights quantized: `hidden[row] = act(x[token of row]
/// @ dequantize(w_in[e]))`, a new `[P, F]` buffer of `F` (rows past S not written), on tiles of
/// the plan's rows.
///
/// `x` is `[T, d]` of `F`; `w_in` holds `[E, d, input_columns(F)]`.
pub fn quantized_input_projection<R: Runtime, F: Float + CubeElement, I: Int + CubeElement>(
    client: &ComputeClient<R>,
    x: &Handle,
    w_in: QuantizedOnDevice,
    plan: &DispatchOnDevice,
    shape: ExpertShape,
    activation: Activation,
) -> Result<Handle, KernelError> {
    let epilogue = match activation {
        Activation::SwiGlu => Epilogue::SwiGlu,
        Activation::Gelu => Epilogue::Gelu,
    };
    let hidden = client.empty(shape.num_pairs() * shape.width * size_of::<F>());
    let operands = QuantizedOperands {
        a: x,
        a_rows: shape.num_tokens,
        weights: w_in,
        width: shape.width,
        output: &hidden,
    };
    let params = QuantGemmParams::new(plan.tile_rows, epilogue, true, w_in.layout.format);
    quantized_matmul::<R, F, I>(client, &operands, plan, shape, &params)?;
    Ok(hidden)
}

/// Second projection of every routed row, weights quantized: `rows[row] = hidden[row] @
/// dequantize(w_out[e])`, a new `[P, d]` buffer of `F` (rows past S not written).
///
/// `hidden` is `[P, F]` of `F` (as [`quantized_input_projection`] writes it); `w_out` holds
/// `[E, F, d]`.
pub fn quantized_output_projection<R: Runtime, F: Float + CubeElement, I: Int + CubeElement>(
    client: &ComputeClient<R>,
    hidden: &Handle,
    w_out: QuantizedOnDevice,
    plan: &DispatchOnDevice,
    shape: ExpertShape,
) -> Result<Handle, KernelError> {
    let rows = client.empty(shape.num_pairs() * shape.d_model * size_of::<F>());
    let operands = QuantizedOperands {
        a: hidden,
        a_rows: shape.num_pairs(),
        weights: w_out,
        width: shape.d_model,
        output: &rows,
    };
    let params = QuantGemmParams::new(
        plan.tile_rows,
        Epilogue::Identity,
        false,
        w_out.layout.format,
    );
    quantized_matmul::<R, F, I>(client, &operands, plan, shape, &params)?;
    Ok(rows)
}

/// One quantized grouped GEMM on caller-provided operands (which tests poison first).
pub fn quantized_matmul<R: Runtime, F: Float + CubeElement, I: Int + CubeElement>(
    client: &ComputeClient<R>,
    operands: &QuantizedOperands,
    plan: &DispatchOnDevice,
    shape: ExpertShape,
    params: &QuantGemmParams,
) -> Result<(), KernelError> {
    validate::<R, F, I>(client, operands, plan, shape, params)?;
    let layout = operands.weights.layout;
    let num_pairs = shape.num_pairs();
    let tiles = max_tiles(num_pairs, shape.num_experts, plan.tile_rows);
    let col_blocks = operands.width.div_ceil(params.tile_cols);
    // SAFETY: `validate` checked every buffer against these sizes; the kernel reads `a` rows
    // below `a_rows` (gathered rows are tokens of routed pairs), weights and scales of experts
    // below E, and writes rows below P.
    unsafe {
        quantized_gemm::launch_unchecked::<F, I, R>(
            client,
            CubeCount::Static(tiles as u32, col_blocks as u32, 1),
            CubeDim::new_1d(params.units() as u32),
            ArrayArg::from_raw_parts(operands.a.clone(), operands.a_rows * layout.depth),
            ArrayArg::from_raw_parts(operands.weights.packed.clone(), layout.num_words()),
            ArrayArg::from_raw_parts(operands.weights.scales.clone(), layout.num_scales()),
            ArrayArg::from_raw_parts(plan.routed_pairs.clone(), num_pairs),
            ArrayArg::from_raw_parts(plan.expert_offsets.clone(), shape.num_experts + 1),
            ArrayArg::from_raw_parts(plan.tiles.clone(), 2 * tiles),
            ArrayArg::from_raw_parts(plan.num_tiles.clone(), 1),
            ArrayArg::from_raw_parts(operands.output.clone(), num_pairs * operands.width),
            operands.a_rows,
            layout.depth,
            operands.width,
            shape.slots,
            shape.num_experts,
            num_pairs,
            *params,
        );
    }
    Ok(())
}

/// Checks shapes, the weights' layout, buffers and the device's limits.
fn validate<R: Runtime, F: CubeElement, I: CubeElement>(
    client: &ComputeClient<R>,
    operands: &QuantizedOperands,
    plan: &DispatchOnDevice,
    shape: ExpertShape,
    params: &QuantGemmParams,
) -> Result<(), KernelError> {
    expect_positive(&[
        ("num_tokens", shape.num_tokens),
        ("slots", shape.slots),
        ("num_experts", shape.num_experts),
        ("d_model", shape.d_model),
        ("width", shape.width),
        ("tile_rows", plan.tile_rows),
    ])?;
    let num_pairs = shape.num_pairs();
    plan.expect_batch::<I>(num_pairs, shape.num_experts, params.tile_rows)?;
    let layout = operands.weights.layout;
    layout.validate()?;
    let columns = params.groups * operands.width;
    if layout.experts != shape.num_experts || layout.columns != columns {
        return Err(InvalidValue::new(
            "weights",
            layout,
            format!(
                "must be {} experts of {columns} columns ({} group(s) of {})",
                shape.num_experts, params.groups, operands.width
            ),
        )
        .into());
    }

    let elem = size_of::<F>();
    expect_len(operands.a, "a", operands.a_rows * layout.depth, elem)?;
    expect_len(
        operands.weights.packed,
        "packed weights",
        layout.num_words(),
        size_of::<u32>(),
    )?;
    expect_len(
        operands.weights.scales,
        "scales",
        layout.num_scales(),
        size_of::<f32>(),
    )?;
    expect_len(operands.output, "output", num_pairs * operands.width, elem)?;
    let tiles = max_tiles(num_pairs, shape.num_experts, plan.tile_rows);

    let unsupported = |reason: String| Err(KernelError::Unsupported(reason));
    params.check().or_else(unsupported)?;
    let properties = client.properties();
    let hardware = &properties.hardware;
    if params.shared_bytes() > hardware.max_shared_memory_size {
        return unsupported(format!(
            "tiles need {} bytes of shared memory, the device has {}",
            params.shared_bytes(),
            hardware.max_shared_memory_size
        ));
    }
    if params.units() > hardware.max_units_per_cube as usize {
        return unsupported(format!(
            "tiles need {} units per cube, the device has {}",
            params.units(),
            hardware.max_units_per_cube
        ));
    }
    expect_grid(
        client,
        [tiles, operands.width.div_ceil(params.tile_cols), 1],
    )?;
    // Indices are 32-bit: every element index must fit.
    let largest = (operands.a_rows * layout.depth).max(num_pairs * operands.width);
    if largest >= i32::MAX as usize {
        return unsupported(format!("{largest} elements exceed 32-bit indexing"));
    }
    Ok(())
}
