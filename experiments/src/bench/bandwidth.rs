//! The device's memory bandwidth, the yardstick of every memory floor in the benchmark tables,
//! measured two ways on one large buffer: a copy with 4-byte loads and stores, and a read stream
//! with 16-byte vector loads. The floors divide by the read stream's: it reads the way a fast
//! kernel's loader does, where the copy (about 2.5 TB/s on an H100 that streams about 3.0 TB/s)
//! put tuned kernels under 1.0x their floor.

use cubecl::prelude::*;
use cubecl::server::Handle;

use super::time_per_call;

/// f32 values per load of the read stream: 16-byte vector loads, as a tuned loader issues.
pub const READ_VECTOR: usize = 4;

/// Units per cube of the grid-stride kernels of the bench (the yardsticks and the L2 flush).
pub const CUBE_UNITS: usize = 256;

/// Cubes of a grid-stride launch over `len` elements: one unit per element up to CUDA's 65,535
/// cubes per dimension, at least one.
pub fn grid_stride_cubes(len: usize) -> u32 {
    len.div_ceil(CUBE_UNITS).clamp(1, 65_535) as u32
}

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

/// Sums `input` grid-stride, one vector per load, and writes each unit's sum to
/// `partial_sums[unit]`: the written sums keep the compiler from dropping the loads.
#[cube(launch_unchecked)]
fn read_stream_kernel<N: Size>(
    input: &Array<Vector<f32, N>>, // [vectors]
    partial_sums: &mut Array<f32>, // [units of the grid]
    vectors: usize,
) {
    let stride = CUBE_COUNT * CUBE_DIM as usize;
    let mut index = ABSOLUTE_POS;
    let mut sum = Vector::<f32, N>::new(f32::new(0.0));
    while index < vectors {
        sum += input[index];
        index += stride;
    }
    let mut total = f32::new(0.0);
    #[unroll]
    for lane in 0..N::value() {
        total += sum[lane];
    }
    partial_sums[ABSOLUTE_POS] = total;
}

/// The two bandwidths of one run, in bytes per second.
#[derive(Clone, Copy, Debug)]
pub struct Bandwidths {
    /// Bytes read plus bytes written per second by a copy with 4-byte loads and stores.
    pub copy: f64,
    /// Bytes read per second by the read stream (16-byte loads).
    pub read: f64,
}

/// Which bandwidth the floors divide by, as `bench.json` names its field.
pub const FLOOR_BANDWIDTH_FIELD: &str = "read_bandwidth_gb_s";

impl Bandwidths {
    /// Measures both on one 1 GiB buffer (16 MiB if `quick`).
    pub fn measure<R: Runtime>(client: &ComputeClient<R>, quick: bool) -> Self {
        let len = stream_len(quick);
        let input = client.empty(len * size_of::<f32>());
        Self {
            copy: copy_bandwidth(client, &input, len, quick),
            read: read_bandwidth(client, &input, len, quick),
        }
    }

    /// Bytes per second the memory floors divide by: the read stream's (see the module docs).
    pub fn floor(&self) -> f64 {
        self.read
    }
}

/// f32 values of the measured buffer: 1 GiB, well above any L2, or 16 MiB if `quick`.
fn stream_len(quick: bool) -> usize {
    if quick { 1 << 22 } else { 1 << 28 }
}

/// Back-to-back calls a bandwidth is the mean of.
fn stream_iterations(quick: bool) -> usize {
    if quick { 5 } else { 20 }
}

/// Bytes read plus bytes written per second by a device-to-device copy of the `len` f32 of
/// `input`.
fn copy_bandwidth<R: Runtime>(
    client: &ComputeClient<R>,
    input: &Handle,
    len: usize,
    quick: bool,
) -> f64 {
    let output = client.empty(len * size_of::<f32>());
    let cubes = grid_stride_cubes(len);
    let time = time_per_call(client, stream_iterations(quick), || unsafe {
        // SAFETY: both buffers hold `len` f32 values; the kernel indexes below `len`.
        copy_kernel::launch_unchecked::<R>(
            client,
            CubeCount::Static(cubes, 1, 1),
            CubeDim::new_1d(CUBE_UNITS as u32),
            ArrayArg::from_raw_parts(input.clone(), len),
            ArrayArg::from_raw_parts(output.clone(), len),
            len,
        );
    });
    2.0 * (len * size_of::<f32>()) as f64 / time.as_secs_f64()
}

/// Bytes read per second by the read stream over the `len` f32 of `input`.
fn read_bandwidth<R: Runtime>(
    client: &ComputeClient<R>,
    input: &Handle,
    len: usize,
    quick: bool,
) -> f64 {
    let partial_sums = read_stream_output(client);
    let time = time_per_call(client, stream_iterations(quick), || {
        read_stream_into(client, input, len, &partial_sums).expect("the stream is whole vectors");
    });
    (len * size_of::<f32>()) as f64 / time.as_secs_f64()
}

/// Cubes of the read stream: 8 per multiprocessor (2048 units, a full SM on recent NVIDIA GPUs)
/// where the runtime reports them, else 1024.
fn read_stream_cubes<R: Runtime>(client: &ComputeClient<R>) -> usize {
    client
        .properties()
        .hardware
        .num_streaming_multiprocessors
        .map_or(1024, |sms| 8 * sms as usize)
}

/// The read stream's output: one f32 per unit of its grid.
fn read_stream_output<R: Runtime>(client: &ComputeClient<R>) -> Handle {
    client.empty(read_stream_cubes(client) * CUBE_UNITS * size_of::<f32>())
}

/// Reads the first `len` f32 of `input` with [`READ_VECTOR`]-wide loads and returns one partial
/// sum per unit of the grid (f32; together they add up to the sum of the values read). `len`
/// must be a whole number of vectors and lie within `input`. (The bench times
/// [`read_stream_into`], which allocates nothing; tests read this one's sums back.)
#[cfg(test)]
pub fn read_stream<R: Runtime>(
    client: &ComputeClient<R>,
    input: &Handle,
    len: usize,
) -> Result<Handle, String> {
    let partial_sums = read_stream_output(client);
    read_stream_into(client, input, len, &partial_sums)?;
    Ok(partial_sums)
}

/// [`read_stream`] into `partial_sums` (from [`read_stream_output`]), so that timed calls
/// allocate nothing.
fn read_stream_into<R: Runtime>(
    client: &ComputeClient<R>,
    input: &Handle,
    len: usize,
    partial_sums: &Handle,
) -> Result<(), String> {
    if !len.is_multiple_of(READ_VECTOR) {
        return Err(format!(
            "the read stream loads {READ_VECTOR} f32 at a time; {len} values are not whole loads"
        ));
    }
    let bytes = len * size_of::<f32>();
    if bytes as u64 > input.size_in_used() {
        return Err(format!(
            "the read stream's {bytes} bytes exceed the {}-byte buffer",
            input.size_in_used()
        ));
    }
    let vectors = len / READ_VECTOR;
    let cubes = read_stream_cubes(client);
    let units = cubes * CUBE_UNITS;
    // SAFETY: `input` holds `vectors` whole vectors (checked above) and the kernel loads below
    // `vectors`; `partial_sums` holds one f32 per unit of the grid (`read_stream_output`).
    unsafe {
        read_stream_kernel::launch_unchecked::<R>(
            client,
            CubeCount::Static(cubes as u32, 1, 1),
            CubeDim::new_1d(CUBE_UNITS as u32),
            READ_VECTOR,
            ArrayArg::from_raw_parts(input.clone(), vectors),
            ArrayArg::from_raw_parts(partial_sums.clone(), units),
            vectors,
        );
    }
    Ok(())
}
