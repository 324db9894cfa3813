//! Host side of the activation kernel: validate, allocate, launch.

use cubecl::prelude::*;
use cubecl::server::Handle;

use super::kernel::activate_kernel;
use crate::buffer::{expect_len, expect_positive};
use crate::{Activation, KernelError};

/// Units per cube.
const CUBE_UNITS: usize = 256;
/// Most cubes launched; larger outputs are covered by a grid-stride loop.
const MAX_CUBES: usize = 65_535;

/// Sizes of one activation launch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ActivateShape {
    /// Rows of the buffers: the (token, slot) pairs P; the first S are routed.
    pub num_rows: usize,
    /// Hidden width F.
    pub width: usize,
    /// Experts E (`expert_offsets` holds E + 1 values, the last S).
    pub num_experts: usize,
}

/// `hidden[row] = activation(pre[row])` for the routed rows, as a new `[P, F]` buffer of `F`
/// (rows past S not written).
///
/// `pre` is `[P, input_columns(F)]` of `F`, `expert_offsets` `[E + 1]` of `I`, both contiguous.
pub fn activate_rows<R: Runtime, F: Float + CubeElement, I: Int + CubeElement>(
    client: &ComputeClient<R>,
    pre: &Handle,
    expert_offsets: &Handle,
    shape: ActivateShape,
    activation: Activation,
) -> Result<Handle, KernelError> {
    let hidden = client.empty(shape.num_rows * shape.width * size_of::<F>());
    activate_rows_into::<R, F, I>(client, pre, expert_offsets, &hidden, shape, activation)?;
    Ok(hidden)
}

/// Like [`activate_rows`], into a caller-provided `[P, F]` buffer (which tests poison first).
pub fn activate_rows_into<R: Runtime, F: Float + CubeElement, I: Int + CubeElement>(
    client: &ComputeClient<R>,
    pre: &Handle,
    expert_offsets: &Handle,
    hidden: &Handle,
    shape: ActivateShape,
    activation: Activation,
) -> Result<(), KernelError> {
    let ActivateShape {
        num_rows,
        width,
        num_experts,
    } = shape;
    expect_positive(&[
        ("num_rows", num_rows),
        ("width", width),
        ("num_experts", num_experts),
    ])?;
    let columns = activation.input_columns(width);
    expect_len(pre, "pre", num_rows * columns, size_of::<F>())?;
    expect_len(
        expert_offsets,
        "expert_offsets",
        num_experts + 1,
        size_of::<I>(),
    )?;
    expect_len(hidden, "hidden", num_rows * width, size_of::<F>())?;

    let cubes = (num_rows * width).div_ceil(CUBE_UNITS).min(MAX_CUBES) as u32;
    // SAFETY: sizes checked above; the kernel clamps S to `num_rows`, so it reads `pre` and
    // writes `hidden` below `num_rows` rows only.
    unsafe {
        activate_kernel::launch_unchecked::<F, I, R>(
            client,
            CubeCount::Static(cubes, 1, 1),
            CubeDim::new_1d(CUBE_UNITS as u32),
            ArrayArg::from_raw_parts(pre.clone(), num_rows * columns),
            ArrayArg::from_raw_parts(expert_offsets.clone(), num_experts + 1),
            ArrayArg::from_raw_parts(hidden.clone(), num_rows * width),
            num_rows,
            width,
            num_experts,
            activation == Activation::SwiGlu,
        );
    }
    Ok(())
}
