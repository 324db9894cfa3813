//! How the GEMM kernels (grouped GEMM, weight gradients) move their stages from global to shared
//! memory, and the pieces of the asynchronous-copy pipeline they share: one barrier per shared
//! buffer, committed when a unit has issued its copies of a stage and waited on (by parity)
//! before the stage is multiplied.
//!
//! CubeCL 0.10 gives `copy_async_checked` (one `cp.async` of 4 to 16 bytes that zero-fills past
//! its source, so rows out of range load as zeros), `Barrier::shared`, `commit_copy_async`
//! (`cp.async.mbarrier.arrive`), `arrive` and `wait_parity`. Barriers cannot be indexed at run
//! time: the kernels unroll their main loop by the number of buffers and hold the barriers in a
//! comptime `Sequence`.

use cubecl::prelude::barrier::{Barrier, copy_async_checked};
use cubecl::prelude::*;
use serde::{Deserialize, Serialize};

/// How each stage travels from global to shared memory.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, Serialize, Deserialize)]
pub enum Pipeline {
    /// Loaded into registers one stage ahead and stored into one of two shared buffers (any
    /// runtime).
    Registers,
    /// Copied straight into one of `stages` shared buffers by asynchronous copies (`cp.async`,
    /// CUDA), `stages - 1` stages ahead; each buffer has a barrier that completes when its copies
    /// have landed.
    AsyncCopy {
        /// Shared-memory buffers (>= 2).
        stages: usize,
    },
}

impl Pipeline {
    /// Shared-memory buffers of one cube.
    pub fn buffers(&self) -> usize {
        match self {
            Pipeline::Registers => 2,
            Pipeline::AsyncCopy { stages } => *stages,
        }
    }

    /// This pipeline with `stages` buffers if it is asynchronous (the register pipeline has two).
    pub fn with_stages(self, stages: usize) -> Self {
        match self {
            Pipeline::AsyncCopy { .. } => Pipeline::AsyncCopy { stages },
            Pipeline::Registers => Pipeline::Registers,
        }
    }
}

/// Whether every width (elements of 16-bit floats per row) lets `cp.async` move whole 4-byte
/// pairs: the size rules' condition for the asynchronous pipeline on tensor cores.
pub fn async_copy_fits(widths: &[usize]) -> bool {
    widths.iter().all(|width| width.is_multiple_of(2))
}

/// Whether the compiler of runtime `R` places shared memory made after a `SharedMemory::free`
/// over the freed memory: CUDA's does (`cubecl-opt`'s liveness analysis, docs/DESIGN.md), wgpu's
/// keeps every array for the whole kernel.
pub fn reuses_freed_shared_memory<R: Runtime>(client: &ComputeClient<R>) -> bool {
    R::name(client) == "cuda"
}

/// `pipeline`, or the register pipeline where the device of `client` has no asynchronous copies:
/// what the size rules' device entry points run.
pub fn on_device<R: Runtime>(client: &ComputeClient<R>, pipeline: Pipeline) -> Pipeline {
    if client.properties().features.copy_async {
        pipeline
    } else {
        Pipeline::Registers
    }
}

/// The vector width (elements) of a kernel's loads on the device of `client`: the widest of 8,
/// 4, 2, 1 elements of `elem_size` bytes that moves at most 16 bytes, divides every width and
/// passes `fits`, and (asynchronous pipeline) moves at least the 4 bytes of a `cp.async`. `Err`
/// says why none does, or that the device has no asynchronous copies.
pub fn load_vector<R: Runtime>(
    client: &ComputeClient<R>,
    pipeline: Pipeline,
    elem_size: usize,
    widths: &[usize],
    fits: impl Fn(usize) -> Result<(), String>,
) -> Result<usize, String> {
    let asynchronous = pipeline != Pipeline::Registers;
    if asynchronous && !client.properties().features.copy_async {
        return Err("this device has no asynchronous copies (cp.async)".into());
    }
    [8, 4, 2, 1]
        .into_iter()
        .find(|&v| {
            v * elem_size <= 16
                && (!asynchronous || v * elem_size >= 4)
                && widths.iter().all(|width| width.is_multiple_of(v))
                && fits(v).is_ok()
        })
        .ok_or_else(|| match fits(1) {
            Err(reason) => reason,
            Ok(()) => format!(
                "asynchronous copies move 4 to 16 bytes: widths {widths:?} in {elem_size}-byte \
                 floats cannot be split that way"
            ),
        })
}

/// Where the `i`-th vector a unit moves per stage lies, in a stage of `vectors` vectors laid out
/// in rows of `row_vectors` (the cube's `units` take consecutive vectors, `units` apart per `i`),
/// and whether the unit has an `i`-th vector at all.
#[derive(CubeType, Clone, Copy)]
pub struct StageVector {
    /// Row of the stage.
    pub row: usize,
    /// Vector within the row.
    pub column: usize,
    /// The vector exists (the last round of a stage may leave some units without one).
    pub present: bool,
}

/// The `i`-th vector this unit moves per stage (see [`StageVector`]). Written so that the
/// compiler sees what does not change with `i` (when `units` is a multiple of `row_vectors`, the
/// column is the unit's own and the row steps by a constant), which keeps the address arithmetic
/// of the copies, issued once per vector and stage, to a few instructions.
#[cube]
pub fn stage_vector(
    i: usize,
    #[comptime] units: usize,
    #[comptime] vectors: usize,
    #[comptime] row_vectors: usize,
) -> StageVector {
    let unit = UNIT_POS as usize;
    let (row, column) = if comptime!(units.is_multiple_of(row_vectors)) {
        (
            unit / row_vectors + i * comptime!(units / row_vectors),
            unit % row_vectors,
        )
    } else {
        let v = unit + i * units;
        (v / row_vectors, v % row_vectors)
    };
    let mut present = true;
    if comptime!(!vectors.is_multiple_of(units)) {
        present = row < comptime!(vectors / row_vectors);
    }
    StageVector {
        row,
        column,
        present,
    }
}

/// Where vector `at` of a stage goes in shared buffer `buffer`: buffers of `stage_vectors`
/// vectors, rows `stride` vectors apart (padded).
#[cube]
pub fn stage_destination(
    at: StageVector,
    buffer: usize,
    #[comptime] stride: usize,
    #[comptime] stage_vectors: usize,
) -> usize {
    buffer * stage_vectors + at.row * stride + at.column
}

/// One barrier per shared buffer, each expecting every unit of the cube.
#[cube]
pub fn stage_barriers(#[comptime] buffers: usize) -> Sequence<Shared<Barrier>> {
    let mut barriers = Sequence::<Shared<Barrier>>::new();
    #[unroll]
    for _ in 0..buffers {
        barriers.push(Barrier::shared(CUBE_DIM, UNIT_POS == 0));
    }
    barriers
}

/// Marks this unit's copies of the stage going into buffer `buffer` as issued: the buffer's
/// barrier completes its phase once every unit has done so and the copies have landed.
#[cube]
pub fn commit_stage(barriers: &Sequence<Shared<Barrier>>, #[comptime] buffer: usize) {
    let barrier = barriers.index(buffer);
    barrier.commit_copy_async();
    barrier.arrive();
}

/// Waits until buffer `buffer` holds its stage of round `round` (the `round`-th stage it
/// receives), then for every unit of the cube, so the buffer refilled next (the one multiplied
/// before) is no longer read.
#[cube]
pub fn wait_stage(barriers: &Sequence<Shared<Barrier>>, #[comptime] buffer: usize, round: usize) {
    barriers
        .index(buffer)
        .wait_parity(u32::cast_from(round % 2));
    sync_cube();
}

/// A vector a stage reads: its index in the source array, and whether it is read at all (where
/// it is not, the stage holds zeros: rows past an expert's end, depth past a slice).
#[derive(CubeType, Clone, Copy)]
pub struct Source {
    /// Vector index in the source array (meaningful only when `live`).
    pub index: usize,
    /// The vector is read; otherwise zeros are stored.
    pub live: bool,
}

/// The vector `source` of `from`, or zeros where it is not live (register pipeline).
#[cube]
pub fn read_vector<F: Float, N: Size>(from: &Array<Vector<F, N>>, source: Source) -> Vector<F, N> {
    let mut value = Vector::<F, N>::new(F::new(0.0));
    if source.live {
        value = from[source.index];
    }
    value
}

/// One asynchronous copy of vector `source` of `from` (zeros where it is not live) into vector
/// `destination` of `to`.
#[cube]
pub fn copy_vector_async<F: Float, N: Size>(
    from: &Array<Vector<F, N>>,
    source: Source,
    to: &mut SharedMemory<Vector<F, N>>,
    destination: usize,
) {
    let n = N::value();
    let start = select(source.live, source.index, 0usize);
    let len = select(source.live, 1usize, 0usize);
    copy_async_checked(
        &from.slice(start, start + len),
        &mut to.slice_mut(destination, destination + 1),
        comptime!(n as u32),
    );
}
