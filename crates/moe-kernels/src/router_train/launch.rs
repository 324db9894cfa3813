//! Host side of the router's training kernels: validate, allocate, launch.

use cubecl::prelude::*;
use cubecl::server::Handle;

use super::kernel::{router_loss_grad_kernel, router_loss_kernel, routing_weights_grad_kernel};
use crate::buffer::{expect_len, expect_positive};
use crate::{InvalidValue, KernelError};

/// Units per cube (a power of two: the loss sums its units in halving rounds).
const CUBE_UNITS: usize = 256;
/// Most cubes launched; more tokens are covered by a grid-stride loop.
const MAX_CUBES: usize = 65_535;

/// Sizes of the router's logits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RouterShape {
    /// Tokens T.
    pub num_tokens: usize,
    /// Experts E.
    pub num_experts: usize,
}

impl RouterShape {
    fn check(&self) -> Result<(), InvalidValue> {
        expect_positive(&[
            ("num_tokens", self.num_tokens),
            ("num_experts", self.num_experts),
        ])
    }

    fn logits(&self) -> usize {
        self.num_tokens * self.num_experts
    }

    /// Cubes of one unit per token.
    fn token_cubes(&self) -> u32 {
        self.num_tokens.div_ceil(CUBE_UNITS).min(MAX_CUBES) as u32
    }
}

/// Weights of the two auxiliary losses in the router loss (`balance_loss_coef`, `z_loss_coef`
/// in config files; a method other than the Switch loss passes a zero balance weight).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LossWeights {
    /// Weight of the Switch load-balancing loss.
    pub balance: f64,
    /// Weight of the router z-loss.
    pub z: f64,
}

impl LossWeights {
    fn check(&self) -> Result<(), InvalidValue> {
        for (name, value) in [("balance", self.balance), ("z", self.z)] {
            if !value.is_finite() {
                return Err(InvalidValue::new(name, value, "must be finite"));
            }
        }
        Ok(())
    }
}

/// Checks the logits and counts every router-loss launch reads.
fn check_loss_inputs<F, I>(
    logits: &Handle,
    expert_counts: &Handle,
    shape: RouterShape,
    weights: LossWeights,
) -> Result<(), InvalidValue> {
    shape.check()?;
    weights.check()?;
    expect_len(logits, "logits", shape.logits(), size_of::<F>())?;
    expect_len(
        expert_counts,
        "expert_counts",
        shape.num_experts,
        size_of::<I>(),
    )
}

/// The weighted auxiliary loss of router `logits` (`[T, E]` of `F`) routed as `expert_counts`
/// (`[E]` of `I`), as a new one-value buffer of `F` (formula: [`super::reference::router_loss`]).
pub fn router_loss<R: Runtime, F: Float + CubeElement, I: Int + CubeElement>(
    client: &ComputeClient<R>,
    logits: &Handle,
    expert_counts: &Handle,
    shape: RouterShape,
    weights: LossWeights,
) -> Result<Handle, KernelError> {
    check_loss_inputs::<F, I>(logits, expert_counts, shape, weights)?;
    let loss = client.empty(size_of::<F>());
    // SAFETY: sizes checked above; the kernel reads T x E logits and E counts, writes one value.
    unsafe {
        router_loss_kernel::launch_unchecked::<F, I, R>(
            client,
            CubeCount::Static(1, 1, 1),
            CubeDim::new_1d(CUBE_UNITS as u32),
            ArrayArg::from_raw_parts(logits.clone(), shape.logits()),
            ArrayArg::from_raw_parts(expert_counts.clone(), shape.num_experts),
            ArrayArg::from_raw_parts(loss.clone(), 1),
            shape.num_tokens,
            shape.num_experts,
            weights.balance as f32,
            weights.z as f32,
            CUBE_UNITS,
        );
    }
    Ok(loss)
}

/// The gradient of [`router_loss`] with respect to the logits, scaled by the loss's own gradient
/// `d_loss` (one value of `F` on the device), as a new `[T, E]` buffer of `F`.
pub fn router_loss_grad<R: Runtime, F: Float + CubeElement, I: Int + CubeElement>(
    client: &ComputeClient<R>,
    logits: &Handle,
    expert_counts: &Handle,
    d_loss: &Handle,
    shape: RouterShape,
    weights: LossWeights,
) -> Result<Handle, KernelError> {
    let d_logits = client.empty(shape.logits() * size_of::<F>());
    router_loss_grad_into::<R, F, I>(
        client,
        logits,
        expert_counts,
        d_loss,
        &d_logits,
        shape,
        weights,
    )?;
    Ok(d_logits)
}

/// Like [`router_loss_grad`], into a caller-provided `[T, E]` buffer (which tests poison first).
pub fn router_loss_grad_into<R: Runtime, F: Float + CubeElement, I: Int + CubeElement>(
    client: &ComputeClient<R>,
    logits: &Handle,
    expert_counts: &Handle,
    d_loss: &Handle,
    d_logits: &Handle,
    shape: RouterShape,
    weights: LossWeights,
) -> Result<(), KernelError> {
    check_loss_inputs::<F, I>(logits, expert_counts, shape, weights)?;
    expect_len(d_loss, "d_loss", 1, size_of::<F>())?;
    expect_len(d_logits, "d_logits", shape.logits(), size_of::<F>())?;
    // SAFETY: sizes checked above; units stop at the last token.
    unsafe {
        router_loss_grad_kernel::launch_unchecked::<F, I, R>(
            client,
            CubeCount::Static(shape.token_cubes(), 1, 1),
            CubeDim::new_1d(CUBE_UNITS as u32),
            ArrayArg::from_raw_parts(logits.clone(), shape.logits()),
            ArrayArg::from_raw_parts(expert_counts.clone(), shape.num_experts),
            ArrayArg::from_raw_parts(d_loss.clone(), 1),
            ArrayArg::from_raw_parts(d_logits.clone(), shape.logits()),
            shape.num_tokens,
            shape.num_experts,
            weights.balance as f32,
            weights.z as f32,
        );
    }
    Ok(())
}

/// The gradient with respect to the logits of routing `weights` that are the softmax of each
/// token's chosen logits, from the weights' gradient `d_weights` (both `[T, slots]` of `F`, with
/// `expert_ids` `[T, slots]` of `I`, -1 unused), as a new `[T, E]` buffer of `F` (formula:
/// [`super::reference::routing_weights_grad`]).
pub fn routing_weights_grad<R: Runtime, F: Float + CubeElement, I: Int + CubeElement>(
    client: &ComputeClient<R>,
    weights: &Handle,
    expert_ids: &Handle,
    d_weights: &Handle,
    shape: RouterShape,
    slots: usize,
) -> Result<Handle, KernelError> {
    let d_logits = client.empty(shape.logits() * size_of::<F>());
    routing_weights_grad_into::<R, F, I>(
        client, weights, expert_ids, d_weights, &d_logits, shape, slots,
    )?;
    Ok(d_logits)
}

/// Like [`routing_weights_grad`], into a caller-provided `[T, E]` buffer (which tests poison
/// first).
pub fn routing_weights_grad_into<R: Runtime, F: Float + CubeElement, I: Int + CubeElement>(
    client: &ComputeClient<R>,
    weights: &Handle,
    expert_ids: &Handle,
    d_weights: &Handle,
    d_logits: &Handle,
    shape: RouterShape,
    slots: usize,
) -> Result<(), KernelError> {
    shape.check()?;
    expect_positive(&[("slots", slots)])?;
    let pairs = shape.num_tokens * slots;
    expect_len(weights, "weights", pairs, size_of::<F>())?;
    expect_len(expert_ids, "expert_ids", pairs, size_of::<I>())?;
    expect_len(d_weights, "d_weights", pairs, size_of::<F>())?;
    expect_len(d_logits, "d_logits", shape.logits(), size_of::<F>())?;
    // SAFETY: sizes checked above; units stop at the last token and the kernel skips expert ids
    // outside 0..E.
    unsafe {
        routing_weights_grad_kernel::launch_unchecked::<F, I, R>(
            client,
            CubeCount::Static(shape.token_cubes(), 1, 1),
            CubeDim::new_1d(CUBE_UNITS as u32),
            ArrayArg::from_raw_parts(weights.clone(), pairs),
            ArrayArg::from_raw_parts(expert_ids.clone(), pairs),
            ArrayArg::from_raw_parts(d_weights.clone(), pairs),
            ArrayArg::from_raw_parts(d_logits.clone(), shape.logits()),
            shape.num_tokens,
            shape.num_experts,
            slots,
        );
    }
    Ok(())
}
