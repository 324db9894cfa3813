//! The device's copy bandwidth: the yardstick of every memory floor in the benchmark tables.

use cubecl::prelude::*;

use super::time_per_call;

/// Copies `input` to `output`, one element per unit and grid-stride.
#[cube(launch_unchecked)]
fn copy_kernel(input: &Array<f32>, output: &mut Array<f32>, len: usize) {
    let stride = CUBE_COUNT * CUBE_DIM as usize;
    let mut index = ABSOLUTE_POS;
    while index < len {
        output[index] = input[index];
        index += stride;
    }
}

/// Bytes read plus bytes written per second by a device-to-device copy of a large buffer.
pub fn copy_bandwidth<R: Runtime>(client: &ComputeClient<R>, quick: bool) -> f64 {
    let len: usize = if quick { 1 << 22 } else { 1 << 28 }; // 16 MiB or 1 GiB of f32
    let input = client.empty(len * size_of::<f32>());
    let output = client.empty(len * size_of::<f32>());
    let cubes = len.div_ceil(256).min(65_535) as u32;
    let time = time_per_call(client, if quick { 5 } else { 20 }, || unsafe {
        // SAFETY: both buffers hold `len` f32 values; the kernel indexes below `len`.
        copy_kernel::launch_unchecked::<R>(
            client,
            CubeCount::Static(cubes, 1, 1),
            CubeDim::new_1d(256),
            ArrayArg::from_raw_parts(input.clone(), len),
            ArrayArg::from_raw_parts(output.clone(), len),
            len,
        );
    });
    2.0 * (len * size_of::<f32>()) as f64 / time.as_secs_f64()
}
