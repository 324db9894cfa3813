//! The router-logits kernel: one cube per (token, block of `experts_per_cube` experts). Each unit
//! sums a strided share of the depth for every expert of the block in f32 registers (unit `u`
//! reads rows `u, u + units, ...` of the weights, so a plane reads consecutive rows), then the
//! cube adds its units' sums in shared memory in halving rounds.

use cubecl::prelude::*;

/// `logits[t, e] = sum_k x[t, k] * weight[k, e]` for the cube's token and experts.
#[cube(launch_unchecked)]
pub fn router_logits_kernel<F: Float>(
    x: &Array<F>,          // [T, d]
    weight: &Array<F>,     // [d, E]
    logits: &mut Array<F>, // [T, E]
    d_model: usize,
    num_experts: usize,
    #[comptime] units: usize,
    #[comptime] experts_per_cube: usize,
) {
    let token = CUBE_POS_Y as usize;
    let first_expert = CUBE_POS_X as usize * experts_per_cube;
    let unit = UNIT_POS as usize;

    let mut sums = Array::<f32>::new(experts_per_cube);
    #[unroll]
    for j in 0..experts_per_cube {
        sums[j] = 0.0;
    }
    let mut k = unit;
    while k < d_model {
        let value = f32::cast_from(x[token * d_model + k]);
        let row = k * num_experts + first_expert;
        #[unroll]
        for j in 0..experts_per_cube {
            if first_expert + j < num_experts {
                sums[j] += value * f32::cast_from(weight[row + j]);
            }
        }
        k += units;
    }

    let mut shared = SharedMemory::<f32>::new(comptime!(units * experts_per_cube));
    #[unroll]
    for j in 0..experts_per_cube {
        shared[j * units + unit] = sums[j];
    }
    sync_cube();
    let mut half = CUBE_DIM as usize / 2;
    while half > 0 {
        if unit < half {
            #[unroll]
            for j in 0..experts_per_cube {
                shared[j * units + unit] += shared[j * units + unit + half];
            }
        }
        sync_cube();
        half /= 2;
    }
    if unit < experts_per_cube && first_expert + unit < num_experts {
        logits[token * num_experts + first_expert + unit] = F::cast_from(shared[unit * units]);
    }
}
