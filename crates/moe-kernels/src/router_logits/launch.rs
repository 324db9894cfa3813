//! Host side of the router-logits kernel: validate, allocate, launch.

use cubecl::prelude::*;
use cubecl::server::Handle;

use super::kernel::router_logits_kernel;
use crate::KernelError;
use crate::buffer::{expect_grid, expect_len, expect_positive};

/// Units per cube (a power of two: the cube sums its units in halving rounds).
const CUBE_UNITS: usize = 256;
/// Experts one cube computes for its token.
const EXPERTS_PER_CUBE: usize = 8;

/// Sizes of the router's gate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GateShape {
    /// Tokens T.
    pub num_tokens: usize,
    /// Model width d.
    pub d_model: usize,
    /// Experts E.
    pub num_experts: usize,
}

/// The router logits `[T, E]` of `x` (`[T, d]`) through the gate `weight` (`[d, E]`), in a new
/// buffer of `F`.
pub fn router_logits<R: Runtime, F: Float + CubeElement>(
    client: &ComputeClient<R>,
    x: &Handle,
    weight: &Handle,
    shape: GateShape,
) -> Result<Handle, KernelError> {
    let logits = client.empty(shape.num_tokens * shape.num_experts * size_of::<F>());
    router_logits_into::<R, F>(client, x, weight, shape, &logits)?;
    Ok(logits)
}

/// Like [`router_logits`], into a caller-provided `[T, E]` buffer (which tests poison first).
pub fn router_logits_into<R: Runtime, F: Float + CubeElement>(
    client: &ComputeClient<R>,
    x: &Handle,
    weight: &Handle,
    shape: GateShape,
    logits: &Handle,
) -> Result<(), KernelError> {
    expect_positive(&[
        ("num_tokens", shape.num_tokens),
        ("d_model", shape.d_model),
        ("num_experts", shape.num_experts),
    ])?;
    let elem = size_of::<F>();
    expect_len(x, "x", shape.num_tokens * shape.d_model, elem)?;
    expect_len(weight, "weight", shape.d_model * shape.num_experts, elem)?;
    expect_len(logits, "logits", shape.num_tokens * shape.num_experts, elem)?;
    let expert_blocks = shape.num_experts.div_ceil(EXPERTS_PER_CUBE);
    // One row of cubes per token.
    expect_grid(client, [expert_blocks, shape.num_tokens, 1])?;
    // SAFETY: the buffers hold the sizes checked above; cube (b, t) reads row t of `x`, columns
    // below E of every weight row, and writes row t of `logits`.
    unsafe {
        router_logits_kernel::launch_unchecked::<F, R>(
            client,
            CubeCount::Static(expert_blocks as u32, shape.num_tokens as u32, 1),
            CubeDim::new_1d(CUBE_UNITS as u32),
            ArrayArg::from_raw_parts(x.clone(), shape.num_tokens * shape.d_model),
            ArrayArg::from_raw_parts(weight.clone(), shape.d_model * shape.num_experts),
            ArrayArg::from_raw_parts(logits.clone(), shape.num_tokens * shape.num_experts),
            shape.d_model,
            shape.num_experts,
            CUBE_UNITS,
            EXPERTS_PER_CUBE,
        );
    }
    Ok(())
}
