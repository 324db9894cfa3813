//! Compile-time knobs of one weight-gradient launch, their shared-memory and register sizes, and
//! the size rule that picks them.
//!
//! Size rule ([`WeightGradParams::choose`]):
//! - without tensor cores (f32, wgpu): 32 x 32 output tiles, 16-row stages, 4 x 4 sums per unit
//!   (64 units), the grouped GEMM's portable shape;
//! - tensor cores (CUDA, f16/bf16): 128 x 128 tiles, 32-row stages, 4 planes as 2 x 2 (each plane
//!   64 x 64); a side is halved to 64 (planes 2 x 2 of 32 x 32, or 4 x 2 / 2 x 4 of 32 x 32)
//!   while the grid has fewer than [`CUBES_PER_SM`] x multiprocessors cubes, or when the width
//!   is at most 64.
//!
//! Stages are copied asynchronously into 3 buffers on tensor cores when both widths are even
//! (`cp.async` moves at least two 16-bit floats), as in the grouped GEMM. The tensor-core tiles
//! were the fastest of [`WeightGradParams::candidates`] for `dW_in` and `dW_out` on an H100 in
//! bf16; planes of 64 x 64 beat 8 planes of 64 x 32 by 6-8% (docs/GPU.md, eleventh session).

use serde::{Deserialize, Serialize};

use super::launch::WeightGradShape;
use super::tensor_cores::{COLUMN_PAIR, MMA_K, MMA_M, PLANE_UNITS};
use crate::pipeline::{Pipeline, async_copy_fits};

/// Elements of padding at the end of each shared-memory row (16 bytes in 16-bit types): the eight
/// rows an `ldmatrix` reads start in different banks, and every row stays 16-byte aligned.
pub const ROW_PADDING: usize = 8;

/// Cubes per multiprocessor the size rule aims for before it shrinks tiles.
pub const CUBES_PER_SM: usize = 2;

/// The most shared memory a candidate uses: two cubes fit on an SM of an H100 (227 KiB).
const CANDIDATE_SHARED_BYTES: usize = 112 * 1024;

/// Tile shape and multiplication path of one launch (see `kernel.rs`): each cube owns a
/// `tile_m` x `tile_n` block of one expert's gradient and sums it over all of the expert's rows,
/// `stage_rows` at a time.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, Serialize, Deserialize)]
pub struct WeightGradParams {
    /// Gradient rows per tile (columns of `a`).
    pub tile_m: usize,
    /// Gradient columns per tile (columns of `b`).
    pub tile_n: usize,
    /// Routed rows per pipeline stage (the reduction depth of one stage).
    pub stage_rows: usize,
    /// Multiply on tensor cores (`mma.sync`); otherwise on units with f32 registers.
    pub tensor_cores: bool,
    /// Planes along the tile's rows (tensor cores).
    pub warps_m: usize,
    /// Planes along the tile's columns (tensor cores).
    pub warps_n: usize,
    /// Gradient rows each unit sums (portable path).
    pub unit_m: usize,
    /// Gradient columns each unit sums (portable path).
    pub unit_n: usize,
    /// How stages reach shared memory.
    pub pipeline: Pipeline,
}

impl WeightGradParams {
    /// The portable shape: 32 x 32 tiles, 16-row stages, 4 x 4 sums per unit.
    pub const PORTABLE: Self = Self {
        tile_m: 32,
        tile_n: 32,
        stage_rows: 16,
        tensor_cores: false,
        warps_m: 1,
        warps_n: 1,
        unit_m: 4,
        unit_n: 4,
        pipeline: Pipeline::Registers,
    };

    /// The tensor-core shape for large gradients: 128 x 128 tiles, 32-row stages, planes 2 x 2
    /// (each 64 x 64), asynchronous copies into 3 buffers.
    pub const TENSOR_CORES: Self = Self {
        tile_m: 128,
        tile_n: 128,
        stage_rows: 32,
        tensor_cores: true,
        warps_m: 2,
        warps_n: 2,
        unit_m: 1,
        unit_n: 1,
        pipeline: Pipeline::AsyncCopy { stages: 3 },
    };

    /// The size rule (module docs) for `shape`, on tensor cores when `tensor_cores`, for a device
    /// with `multiprocessors` (132 when unknown).
    pub fn choose(
        shape: &WeightGradShape,
        tensor_cores: bool,
        multiprocessors: Option<usize>,
    ) -> Self {
        if !tensor_cores {
            return Self::PORTABLE;
        }
        let target = CUBES_PER_SM * multiprocessors.unwrap_or(132);
        let mut params = Self::TENSOR_CORES;
        if !async_copy_fits(&[shape.a_width, shape.b_width]) {
            params.pipeline = Pipeline::Registers;
        }
        if shape.a_width <= 64 {
            params = params.with_tile(64, params.tile_n);
        }
        if shape.b_width <= 64 {
            params = params.with_tile(params.tile_m, 64);
        }
        while params.cubes(shape) < target && (params.tile_m > 64 || params.tile_n > 64) {
            params = if params.tile_n >= params.tile_m {
                params.with_tile(params.tile_m, params.tile_n / 2)
            } else {
                params.with_tile(params.tile_m / 2, params.tile_n)
            };
        }
        params
    }

    /// What a tuning run should time for `shape` on tensor cores: the rule's choice first, then
    /// tiles of 64 to 256 per side with their plane grids (and with planes of 64 x 64 where
    /// that gives at least 2) and stages of 16, 32 and 64 rows, in
    /// the register pipeline and (where the rule's choice copies asynchronously) with 3
    /// asynchronous buffers, then the rule's tiles with 2 and 4 buffers; all where their buffers
    /// of 16-bit floats fit in 112 KiB of shared memory.
    pub fn candidates(shape: &WeightGradShape, multiprocessors: Option<usize>) -> Vec<Self> {
        let chosen = Self::choose(shape, true, multiprocessors);
        let mut all = vec![chosen];
        let mut pipelines = vec![Pipeline::Registers];
        if chosen.pipeline != Pipeline::Registers {
            pipelines.push(Pipeline::AsyncCopy { stages: 3 });
            for stages in [2, 4] {
                all.push(Self {
                    pipeline: Pipeline::AsyncCopy { stages },
                    ..chosen
                });
            }
        }
        for pipeline in pipelines {
            for stage_rows in [32, 16, 64] {
                for (tile_m, tile_n) in [(128, 128), (64, 128), (128, 64), (64, 64), (128, 256)] {
                    let tiles = Self {
                        stage_rows,
                        pipeline,
                        ..Self::TENSOR_CORES.with_tile(tile_m, tile_n)
                    };
                    // The same tiles in planes of 64 x 64, the forward's best plane tile: more
                    // MMAs per fragment load, fewer planes per cube.
                    let square = Self {
                        warps_m: tile_m / 64,
                        warps_n: tile_n / 64,
                        ..tiles
                    };
                    for candidate in [tiles, square] {
                        if candidate.warps_m * candidate.warps_n >= 2
                            && candidate.shared_bytes(2, true) <= CANDIDATE_SHARED_BYTES
                            && !all.contains(&candidate)
                        {
                            all.push(candidate);
                        }
                    }
                }
            }
        }
        all
    }

    /// Tensor-core tiles of `tile_m` x `tile_n` with 8 planes (4 for 64 x 64), each plane at
    /// least 32 wide on both sides.
    fn with_tile(self, tile_m: usize, tile_n: usize) -> Self {
        let (warps_m, warps_n) = match (tile_m, tile_n) {
            (64, 64) => (2, 2),
            (m, n) if m > n => (4, 2),
            _ => (2, 4),
        };
        Self {
            tile_m,
            tile_n,
            warps_m,
            warps_n,
            ..self
        }
    }

    /// Cubes of one launch: experts x row blocks x column blocks.
    pub fn cubes(&self, shape: &WeightGradShape) -> usize {
        shape.num_experts
            * shape.a_width.div_ceil(self.tile_m)
            * shape.b_width.div_ceil(self.tile_n)
    }

    /// Units per cube.
    pub fn units(&self) -> usize {
        if self.tensor_cores {
            self.warps_m * self.warps_n * PLANE_UNITS
        } else {
            (self.tile_m / self.unit_m) * (self.tile_n / self.unit_n)
        }
    }

    /// f32 register sums per unit on the portable path (1, unused, on tensor cores).
    pub fn unit_accumulators(&self) -> usize {
        if self.tensor_cores {
            1
        } else {
            self.unit_m * self.unit_n
        }
    }

    /// Elements per shared-memory row of the `a` stage (`[stage_rows][tile_m]`, padded).
    pub fn a_stride(&self) -> usize {
        self.tile_m + ROW_PADDING
    }

    /// Elements per shared-memory row of the `b` stage (`[stage_rows][tile_n]`, padded).
    pub fn b_stride(&self) -> usize {
        self.tile_n + ROW_PADDING
    }

    /// Elements per shared-memory row of the gradient tile the epilogue stages
    /// (`[tile_m][tile_n]`, padded).
    pub fn out_stride(&self) -> usize {
        self.tile_n + ROW_PADDING
    }

    /// Elements of the epilogue's gradient tile in shared memory (padded).
    pub fn out_tile_len(&self) -> usize {
        self.tile_m * self.out_stride()
    }

    /// Vectors of `vector` elements in one `a` stage buffer (padded).
    pub fn a_stage_vectors(&self, vector: usize) -> usize {
        self.stage_rows * self.a_stride() / vector
    }

    /// Vectors in one `b` stage buffer (padded).
    pub fn b_stage_vectors(&self, vector: usize) -> usize {
        self.stage_rows * self.b_stride() / vector
    }

    /// Vectors of `a` data per stage.
    pub fn a_vectors(&self, vector: usize) -> usize {
        self.stage_rows * self.tile_m / vector
    }

    /// Vectors of `b` data per stage.
    pub fn b_vectors(&self, vector: usize) -> usize {
        self.stage_rows * self.tile_n / vector
    }

    /// `a` vectors each unit loads per stage.
    pub fn a_loads_per_unit(&self, vector: usize) -> usize {
        self.a_vectors(vector).div_ceil(self.units())
    }

    /// `b` vectors each unit loads per stage.
    pub fn b_loads_per_unit(&self, vector: usize) -> usize {
        self.b_vectors(vector).div_ceil(self.units())
    }

    /// Bytes of shared memory one cube uses with elements of `elem_size` bytes: the stage
    /// buffers and the gradient tile, which takes the buffers' place where the compiler reuses
    /// freed shared memory (`reuses_freed`).
    pub fn shared_bytes(&self, elem_size: usize, reuses_freed: bool) -> usize {
        let stages =
            self.pipeline.buffers() * self.stage_rows * (self.a_stride() + self.b_stride());
        let elements = if reuses_freed {
            stages.max(self.out_tile_len())
        } else {
            stages + self.out_tile_len()
        };
        elements * elem_size
    }

    /// Why these knobs cannot run with `vector`-wide loads, if they cannot.
    pub fn check(&self, vector: usize) -> Result<(), String> {
        let divides = |what: &str, value: usize, by: usize| {
            if by == 0 || !value.is_multiple_of(by) {
                Err(format!("{what} = {value} must be a multiple of {by}"))
            } else {
                Ok(())
            }
        };
        if self.stage_rows == 0 {
            return Err("stage_rows must be >= 1".into());
        }
        if self.pipeline.buffers() < 2 {
            return Err("an asynchronous pipeline needs at least 2 stages".into());
        }
        divides("tile_m", self.tile_m, vector)?;
        divides("tile_n", self.tile_n, vector)?;
        if self.tensor_cores {
            divides("tile_m", self.tile_m, self.warps_m * MMA_M)?;
            divides("tile_n", self.tile_n, self.warps_n * COLUMN_PAIR)?;
            divides("stage_rows", self.stage_rows, MMA_K)?;
        } else {
            divides("tile_m", self.tile_m, self.unit_m)?;
            divides("tile_n", self.tile_n, self.unit_n)?;
            divides("unit_m", self.unit_m, vector)?;
            divides("unit_n", self.unit_n, vector)?;
        }
        Ok(())
    }
}
