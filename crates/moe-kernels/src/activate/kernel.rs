//! `hidden[row, c] = act(pre[row])[c]` for the routed rows, and the element functions the grouped
//! GEMM's epilogue shares.
//!
//! One unit per hidden element (grid-stride loop), so loads and stores are coalesced along the
//! row; f32 arithmetic whatever the storage type. The routed rows S are read from
//! `expert_offsets[E]` on the device (clamped to the rows of the buffers), so the launch needs no
//! host read and rows past S are left as they are.

use cubecl::prelude::*;

/// `silu(gate) * up`.
#[cube]
pub fn swiglu(gate: f32, up: f32) -> f32 {
    gate / (1.0 + f32::exp(-gate)) * up
}

/// The exact GELU, `x Phi(x)` with erf.
#[cube]
pub fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + Erf::erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// Hidden rows from pre-activation rows (`[P, 2F]` gate then up when `gated`, else `[P, F]`).
#[cube(launch_unchecked)]
pub fn activate_kernel<F: Float, I: Int>(
    pre: &Array<F>,            // [P, input_columns(F)]
    expert_offsets: &Array<I>, // [E + 1]: the last is S
    hidden: &mut Array<F>,     // [P, F]
    num_rows: usize,
    width: usize,
    num_experts: usize,
    #[comptime] gated: bool,
) {
    let routed = min(
        u32::cast_from(expert_offsets[num_experts]) as usize,
        num_rows,
    );
    let total = routed * width;
    let stride = CUBE_COUNT * CUBE_DIM as usize;
    let mut index = ABSOLUTE_POS;
    while index < total {
        if comptime!(gated) {
            let at = index + (index / width) * width; // row * 2F + column
            hidden[index] = F::cast_from(swiglu(
                f32::cast_from(pre[at]),
                f32::cast_from(pre[at + width]),
            ));
        } else {
            hidden[index] = F::cast_from(gelu(f32::cast_from(pre[index])));
        }
        index += stride;
    }
}
