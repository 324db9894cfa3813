//! Host side of the weight gradient: validate, allocate, launch.

use cubecl::prelude::*;
use cubecl::server::Handle;

use super::kernel::expert_weight_grad as weight_grad_kernel;
use super::params::WeightGradParams;
use crate::buffer::{expect_grid, expect_len, expect_positive};
use crate::dispatch::DispatchOnDevice;
use crate::grouped_gemm::{has_tensor_cores, multiprocessors};
use crate::pipeline::{load_vector, on_device, reuses_freed_shared_memory};
use crate::{InvalidValue, KernelError};

/// Sizes of one weight-gradient launch: `grad[e]` is `[a_width, b_width]` for each of the
/// `num_experts` experts, summed over the routed rows of a batch of `num_tokens` x `slots` pairs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WeightGradShape {
    /// Tokens T (rows of a gathered `a`).
    pub num_tokens: usize,
    /// Routing slots per token (P = T x slots pairs).
    pub slots: usize,
    /// Experts E.
    pub num_experts: usize,
    /// Columns m of `a`: d for `dW_in`, F for `dW_out`.
    pub a_width: usize,
    /// Columns n of `b`: the input projection's columns (2F or F) for `dW_in`, d for `dW_out`.
    pub b_width: usize,
}

impl WeightGradShape {
    /// (token, slot) pairs P: the most rows the experts can receive.
    pub fn num_pairs(&self) -> usize {
        self.num_tokens * self.slots
    }

    /// Elements of the gradient `[E, a_width, b_width]`.
    pub fn grad_len(&self) -> usize {
        self.num_experts * self.a_width * self.b_width
    }
}

/// The size rule's tiles ([`WeightGradParams::choose`]) for `shape` with floats `F` on this
/// device: tensor cores where it has them for `F`, tile sizes by its multiprocessors, the
/// register pipeline where it has no asynchronous copies.
pub fn weight_grad_config<R: Runtime, F: CubeElement>(
    client: &ComputeClient<R>,
    shape: &WeightGradShape,
) -> WeightGradParams {
    let params = WeightGradParams::choose(
        shape,
        has_tensor_cores::<R, F>(client),
        multiprocessors(client),
    );
    WeightGradParams {
        pipeline: on_device(client, params.pipeline),
        ..params
    }
}

/// Weight gradient of one expert projection, `grad[e] = sum over expert e's routed rows r of
/// outer(a[source(r)], b[r])`, into a new `[E, a_width, b_width]` buffer of `F` (f32 sums).
///
/// `gather`: `a` is `[T, a_width]` token rows and source(r) = `routed_pairs[r] / slots`
/// (`dW_in = X_e^T @ dGU_e`); otherwise `a` is `[P, a_width]` in dispatch order, source(r) = r
/// (`dW_out = H_e^T @ dRows_e`). `b` is `[P, b_width]` in dispatch order. Rows past S are never
/// read; experts with no rows get zeros. Deterministic: each element is summed by one cube.
#[allow(clippy::too_many_arguments, reason = "operands, plan, shape and knobs")]
pub fn expert_weight_grad<R: Runtime, F: Float + CubeElement, I: Int + CubeElement>(
    client: &ComputeClient<R>,
    a: &Handle,
    gather: bool,
    b: &Handle,
    plan: &DispatchOnDevice,
    shape: WeightGradShape,
    params: &WeightGradParams,
) -> Result<Handle, KernelError> {
    let grad = client.empty(shape.grad_len() * size_of::<F>());
    expert_weight_grad_into::<R, F, I>(client, a, gather, b, plan, shape, params, &grad)?;
    Ok(grad)
}

/// Like [`expert_weight_grad`], into a caller-provided `[E, a_width, b_width]` buffer (which
/// tests poison first); every element is written.
#[allow(
    clippy::too_many_arguments,
    reason = "operands, plan, shape, knobs and output"
)]
pub fn expert_weight_grad_into<R: Runtime, F: Float + CubeElement, I: Int + CubeElement>(
    client: &ComputeClient<R>,
    a: &Handle,
    gather: bool,
    b: &Handle,
    plan: &DispatchOnDevice,
    shape: WeightGradShape,
    params: &WeightGradParams,
    grad: &Handle,
) -> Result<(), KernelError> {
    let a_rows = if gather {
        shape.num_tokens
    } else {
        shape.num_pairs()
    };
    let vector = validate::<R, F, I>(client, a, a_rows, b, plan, shape, params, grad)?;
    let num_pairs = shape.num_pairs();
    let (m_blocks, n_blocks) = (
        shape.a_width.div_ceil(params.tile_m) as u32,
        shape.b_width.div_ceil(params.tile_n) as u32,
    );
    let m_fastest = m_blocks < n_blocks;
    let (fast, slow) = if m_fastest {
        (m_blocks, n_blocks)
    } else {
        (n_blocks, m_blocks)
    };
    // SAFETY: `validate` checked every buffer against these sizes; the kernel reads `a` rows
    // below `a_rows` (gathered rows are tokens of routed pairs, checked on the device), `b` and
    // `routed_pairs` rows below P (offsets are clamped to P), `expert_offsets` up to E, and
    // writes gradient elements below E x a_width x b_width.
    unsafe {
        weight_grad_kernel::launch_unchecked::<F, I, R>(
            client,
            CubeCount::Static(fast, slow, shape.num_experts as u32),
            CubeDim::new_1d(params.units() as u32),
            vector,
            ArrayArg::from_raw_parts(a.clone(), a_rows * shape.a_width / vector),
            ArrayArg::from_raw_parts(b.clone(), num_pairs * shape.b_width / vector),
            ArrayArg::from_raw_parts(plan.routed_pairs.clone(), num_pairs),
            ArrayArg::from_raw_parts(plan.expert_offsets.clone(), shape.num_experts + 1),
            ArrayArg::from_raw_parts(grad.clone(), shape.grad_len() / vector),
            a_rows,
            shape.a_width,
            shape.b_width,
            shape.slots,
            num_pairs,
            *params,
            gather,
            m_fastest,
        );
    }
    Ok(())
}

/// Checks shapes, buffers and the device's limits; returns the vector width of the loads.
#[allow(clippy::too_many_arguments, reason = "every argument of the launch")]
fn validate<R: Runtime, F: Float + CubeElement, I: CubeElement>(
    client: &ComputeClient<R>,
    a: &Handle,
    a_rows: usize,
    b: &Handle,
    plan: &DispatchOnDevice,
    shape: WeightGradShape,
    params: &WeightGradParams,
    grad: &Handle,
) -> Result<usize, KernelError> {
    expect_positive(&[
        ("num_tokens", shape.num_tokens),
        ("slots", shape.slots),
        ("num_experts", shape.num_experts),
        ("a_width", shape.a_width),
        ("b_width", shape.b_width),
    ])?;
    let num_pairs = shape.num_pairs();
    if plan.num_pairs != num_pairs || plan.num_experts != shape.num_experts {
        return Err(InvalidValue::new(
            "plan",
            format!("{} pairs over {} experts", plan.num_pairs, plan.num_experts),
            format!(
                "must be the dispatch of this batch ({num_pairs} pairs over {} experts)",
                shape.num_experts
            ),
        )
        .into());
    }

    let elem = size_of::<F>();
    expect_len(a, "a", a_rows * shape.a_width, elem)?;
    expect_len(b, "b", num_pairs * shape.b_width, elem)?;
    expect_len(grad, "grad", shape.grad_len(), elem)?;
    let int = size_of::<I>();
    expect_len(&plan.routed_pairs, "routed_pairs", num_pairs, int)?;
    expect_len(
        &plan.expert_offsets,
        "expert_offsets",
        shape.num_experts + 1,
        int,
    )?;

    let unsupported = |reason: String| Err(KernelError::Unsupported(reason));
    if params.tensor_cores && !has_tensor_cores::<R, F>(client) {
        return unsupported("this device has no tensor cores for this float type".into());
    }
    let vector = load_vector(
        client,
        params.pipeline,
        elem,
        &[shape.a_width, shape.b_width],
        |v| params.check(v),
    )
    .or_else(unsupported)?;
    let properties = client.properties();
    let hardware = &properties.hardware;
    let shared = params.shared_bytes(elem, reuses_freed_shared_memory(client));
    if shared > hardware.max_shared_memory_size {
        return unsupported(format!(
            "tiles need {shared} bytes of shared memory, the device has {}",
            hardware.max_shared_memory_size
        ));
    }
    if params.units() > hardware.max_units_per_cube as usize {
        return unsupported(format!(
            "{} units per cube, the device allows {}",
            params.units(),
            hardware.max_units_per_cube
        ));
    }
    let grid = [
        shape.b_width.div_ceil(params.tile_n),
        shape.a_width.div_ceil(params.tile_m),
        shape.num_experts,
    ];
    expect_grid(client, grid)?;
    // Indices are 32-bit: every element index must fit.
    let largest = shape
        .grad_len()
        .max(a_rows * shape.a_width)
        .max(num_pairs * shape.b_width);
    if largest >= i32::MAX as usize {
        return unsupported(format!("{largest} elements exceed 32-bit indexing"));
    }
    Ok(vector)
}
