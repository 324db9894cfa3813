//! The L2 flush between timed repetitions: a kernel writes a buffer several times the size of the
//! L2 cache (50 MB on an H100), so that weights a repetition left in L2 are gone when the next one
//! starts, as in a model where other layers run between two calls of this one. The buffer is
//! allocated once per bench run; cuBLAS's repetitions are flushed the same way on its own stream
//! (`cublas.rs`).

use cubecl::prelude::*;
use cubecl::server::Handle;

use super::bandwidth::{CUBE_UNITS, grid_stride_cubes};

/// Bytes the flush writes: 256 MiB (five times an H100's L2), or 4 MiB under `--quick`, where
/// the device is CPU-emulated and the numbers are not the point.
pub fn flush_bytes(quick: bool) -> usize {
    if quick { 4 << 20 } else { 256 << 20 }
}

/// What the flush writes to every element; any value serves, only the writes matter.
pub const FLUSH_VALUE: f32 = 1.0;

/// Writes `value` to every element of `buffer`, one element per unit and grid-stride.
#[cube(launch_unchecked)]
fn fill_kernel(buffer: &mut Array<f32>, value: f32, len: usize) {
    let stride = CUBE_COUNT * CUBE_DIM as usize;
    let mut index = ABSOLUTE_POS;
    while index < len {
        buffer[index] = value;
        index += stride;
    }
}

/// A buffer larger than the L2 cache and the kernel that overwrites it.
pub struct L2Flush<R: Runtime> {
    client: ComputeClient<R>,
    buffer: Handle,
    /// f32 values of `buffer`.
    len: usize,
}

impl<R: Runtime> L2Flush<R> {
    /// Allocates a flush of `bytes` (a multiple of 4).
    pub fn new(client: &ComputeClient<R>, bytes: usize) -> Self {
        let len = bytes / size_of::<f32>();
        Self::over(client, client.empty(len * size_of::<f32>()), len)
            .expect("a new buffer holds its own length")
    }

    /// A flush that overwrites the first `len` f32 of `buffer`; an error if `buffer` is shorter.
    pub fn over(client: &ComputeClient<R>, buffer: Handle, len: usize) -> Result<Self, String> {
        let bytes = len * size_of::<f32>();
        if bytes as u64 > buffer.size_in_used() {
            return Err(format!(
                "a flush of {bytes} bytes does not fit the {}-byte buffer",
                buffer.size_in_used()
            ));
        }
        Ok(Self {
            client: client.clone(),
            buffer,
            len,
        })
    }

    /// The client the flush launches on (the one timings use).
    pub fn client(&self) -> &ComputeClient<R> {
        &self.client
    }

    /// Bytes one flush writes.
    pub fn bytes(&self) -> usize {
        self.len * size_of::<f32>()
    }

    /// Queues the flush: [`FLUSH_VALUE`] written to every element of the buffer.
    pub fn flush(&self) {
        let cubes = grid_stride_cubes(self.len);
        // SAFETY: the buffer holds `len` f32 values (checked in `over`); the kernel writes below
        // `len`.
        unsafe {
            fill_kernel::launch_unchecked::<R>(
                &self.client,
                CubeCount::Static(cubes, 1, 1),
                CubeDim::new_1d(CUBE_UNITS as u32),
                ArrayArg::from_raw_parts(self.buffer.clone(), self.len),
                FLUSH_VALUE,
                self.len,
            );
        }
    }
}
