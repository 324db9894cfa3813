//! Host side of combine: validate, allocate, launch.

use cubecl::prelude::*;
use cubecl::server::Handle;

use super::kernel::combine_kernel;
use crate::buffer::{expect_len, expect_positive};
use crate::{InvalidValue, KernelError};

/// Units per cube of the combine kernel.
const CUBE_UNITS: usize = 256;
/// Most cubes launched; larger outputs are covered by a grid-stride loop.
const MAX_CUBES: usize = 65_535;

/// Shapes of one combine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CombineShape {
    /// Tokens T.
    pub num_tokens: usize,
    /// Slots per token.
    pub slots: usize,
    /// Rows of each block of `expert_rows` (at least S, at most T * slots).
    pub num_rows: usize,
    /// Model width d.
    pub d_model: usize,
    /// Blocks of `expert_rows` whose rows are summed (split-K partial sums; 1 for plain rows).
    pub splits: usize,
}

/// `out[t] = sum_s weights[t, s] * sum_b expert_rows[b, row_of_pair[t, s]]` as a new `[T, d]`
/// buffer of `F`.
///
/// `expert_rows` is `[splits, num_rows, d]` of `E`, `weights` `[T, slots]` of `F`, `row_of_pair`
/// `[T, slots]` of `I` (-1 for unused slots), all contiguous. A row at or past `num_rows` is
/// treated as an unused slot (checked on the device).
pub fn combine<R: Runtime, F: Float + CubeElement, E: Float + CubeElement, I: Int + CubeElement>(
    client: &ComputeClient<R>,
    expert_rows: &Handle,
    weights: &Handle,
    row_of_pair: &Handle,
    shape: CombineShape,
) -> Result<Handle, KernelError> {
    let output = client.empty(shape.num_tokens * shape.d_model * size_of::<F>());
    combine_into::<R, F, E, I>(client, expert_rows, weights, row_of_pair, &output, shape)?;
    Ok(output)
}

/// Like [`combine`], into a caller-provided `[T, d]` buffer (which tests poison first).
pub fn combine_into<
    R: Runtime,
    F: Float + CubeElement,
    E: Float + CubeElement,
    I: Int + CubeElement,
>(
    client: &ComputeClient<R>,
    expert_rows: &Handle,
    weights: &Handle,
    row_of_pair: &Handle,
    output: &Handle,
    shape: CombineShape,
) -> Result<(), KernelError> {
    let CombineShape {
        num_tokens,
        slots,
        num_rows,
        d_model,
        splits,
    } = shape;
    expect_positive(&[
        ("num_tokens", num_tokens),
        ("slots", slots),
        ("d_model", d_model),
        ("splits", splits),
    ])?;
    if num_rows > num_tokens * slots {
        return Err(KernelError::from(InvalidValue::new(
            "num_rows",
            num_rows,
            format!("must be at most T * slots = {}", num_tokens * slots),
        )));
    }
    expect_len(
        expert_rows,
        "expert_rows",
        splits * num_rows * d_model,
        size_of::<E>(),
    )?;
    expect_len(weights, "weights", num_tokens * slots, size_of::<F>())?;
    expect_len(
        row_of_pair,
        "row_of_pair",
        num_tokens * slots,
        size_of::<I>(),
    )?;
    expect_len(output, "output", num_tokens * d_model, size_of::<F>())?;

    let cubes = (num_tokens * d_model).div_ceil(CUBE_UNITS).min(MAX_CUBES) as u32;
    // SAFETY: sizes checked above; the kernel reads only rows below `num_rows`.
    unsafe {
        combine_kernel::launch_unchecked::<F, E, I, R>(
            client,
            CubeCount::Static(cubes, 1, 1),
            CubeDim::new_1d(CUBE_UNITS as u32),
            ArrayArg::from_raw_parts(expert_rows.clone(), splits * num_rows.max(1) * d_model),
            ArrayArg::from_raw_parts(weights.clone(), num_tokens * slots),
            ArrayArg::from_raw_parts(row_of_pair.clone(), num_tokens * slots),
            ArrayArg::from_raw_parts(output.clone(), num_tokens * d_model),
            num_tokens,
            num_rows,
            d_model,
            slots,
            splits,
        );
    }
    Ok(())
}
