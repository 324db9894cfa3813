//! Compile-time knobs of one grouped-GEMM launch, and the shared-memory and register sizes they
//! imply.

use serde::{Deserialize, Serialize};

use super::tensor_cores::{COLUMN_PAIR, MMA_K, MMA_M, PLANE_UNITS};
use crate::pipeline::Pipeline;

/// Elements of padding at the end of each shared-memory row (16 bytes in 16-bit types): the eight
/// rows an `ldmatrix` reads start in different banks, and every row stays 16-byte aligned.
pub const ROW_PADDING: usize = 8;

/// Columns of one TMA box: 128 bytes of 16-bit floats, the widest row the 128-byte swizzle
/// takes. A stage loaded by TMA is held as boxes of rows of this many columns, unpadded: the
/// swizzle, not padding, keeps `ldmatrix` free of bank conflicts.
pub const TMA_BOX_COLS: usize = 64;

/// Bytes the 128-byte swizzle pattern spans (8 rows of 128 bytes): a TMA box must start at a
/// multiple of it for the pattern to be the row's 16-byte chunk XOR the row modulo 8.
pub const TMA_SWIZZLE_SPAN: usize = 1024;

/// Bytes a stage buffer in shared memory is aligned to: the swizzle's span when TMA fills it
/// (`tma`), else 128.
pub(crate) fn stage_alignment(tma: bool) -> usize {
    if tma { TMA_SWIZZLE_SPAN } else { 128 }
}

/// Most rows of one TMA box (each box dimension is at most 256 elements).
const TMA_MAX_BOX_ROWS: usize = 256;

/// What the epilogue applies to each output element.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, Serialize, Deserialize)]
pub enum Epilogue {
    /// The product itself (the output projection, or split-K partial sums).
    Identity,
    /// `silu(gate) * up`, from column groups 0 (gate) and 1 (up).
    SwiGlu,
    /// `gelu(x)` (exact, with erf).
    Gelu,
    /// The SwiGLU backward, fused into the GEMM through `w_out` transposed: the product is the
    /// gradient of a hidden element, and the epilogue reads the row's gate and up
    /// pre-activations (`[P, 2 * width]`) and writes the gradients of both, into an output of
    /// the same layout.
    SwiGluBackward,
}

impl Epilogue {
    /// Column groups of the weights this epilogue reads (SwiGLU: gate and up).
    pub fn groups(&self) -> usize {
        match self {
            Epilogue::SwiGlu => 2,
            Epilogue::Identity | Epilogue::Gelu | Epilogue::SwiGluBackward => 1,
        }
    }

    /// Output columns per product column (the SwiGLU backward writes gate and up gradients).
    pub fn output_groups(&self) -> usize {
        match self {
            Epilogue::SwiGluBackward => 2,
            Epilogue::Identity | Epilogue::SwiGlu | Epilogue::Gelu => 1,
        }
    }
}

/// Tile shape, multiplication path and pipeline of one launch (see `kernel.rs`).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, Serialize, Deserialize)]
pub struct GemmParams {
    /// Rows per tile: the dispatch's tile rows.
    pub tile_rows: usize,
    /// Output columns per tile and column group.
    pub tile_cols: usize,
    /// Depth of one pipeline stage.
    pub stage_depth: usize,
    /// Column groups read per output column (2 for SwiGLU).
    pub groups: usize,
    /// Rows of `a` are token rows read through the routed pairs (first projection).
    pub gather: bool,
    /// What is applied before storing.
    pub epilogue: Epilogue,
    /// Multiply on tensor cores (`mma.sync`); otherwise on units with f32 registers.
    pub tensor_cores: bool,
    /// Planes along the rows of a tile (tensor cores).
    pub warps_m: usize,
    /// Planes along the columns of a tile (tensor cores).
    pub warps_n: usize,
    /// Rows each unit accumulates (portable path).
    pub unit_rows: usize,
    /// Columns each unit accumulates per group (portable path).
    pub unit_cols: usize,
    /// Slices of the depth, each summed by its own cube into its own output block.
    pub split_k: usize,
    /// Tiles whose cubes are numbered together (they share weight columns).
    pub raster_group: usize,
    /// The weights are stored `[E, width, depth]` and multiplied transposed (the backward's
    /// input gradients); their stage is then held `[tile_cols][stage_depth]` in shared memory.
    pub transposed_weights: bool,
    /// How stages reach shared memory.
    pub pipeline: Pipeline,
    /// The weight stages arrive as TMA boxes (tensor memory access, sm_90), issued by one unit,
    /// instead of `cp.async` copies by every unit (asynchronous pipeline, tensor cores; CUDA
    /// only). Boxes are [`TMA_BOX_COLS`] wide along the weights' rows: `tile_cols` a multiple of
    /// it, or, with transposed weights, `stage_depth`.
    pub tma_weights: bool,
    /// The A stages arrive as TMA boxes of [`TMA_BOX_COLS`] depth columns, issued with the
    /// weights' (rows in dispatch order, not gathered; asynchronous pipeline, tensor cores,
    /// `stage_depth` a multiple of [`TMA_BOX_COLS`]; CUDA only). Rows past the tile's expert
    /// are loaded too (they belong to the next expert) and their products never stored. A tuner
    /// candidate: the size rule does not use it (slower on an H100, docs/GPU.md).
    pub tma_rows: bool,
}

impl GemmParams {
    /// Units per cube.
    pub fn units(&self) -> usize {
        if self.tensor_cores {
            self.planes() * PLANE_UNITS
        } else {
            (self.tile_rows / self.unit_rows) * (self.tile_cols / self.unit_cols)
        }
    }

    /// Planes per cube on the tensor-core path.
    pub fn planes(&self) -> usize {
        self.warps_m * self.warps_n
    }

    /// f32 register sums per unit on the portable path (1, unused, on tensor cores).
    pub fn unit_accumulators(&self) -> usize {
        if self.tensor_cores {
            1
        } else {
            self.groups * self.unit_rows * self.unit_cols
        }
    }

    /// Elements per shared-memory row of the A stage (TMA boxes: [`TMA_BOX_COLS`], unpadded).
    pub fn a_stride(&self) -> usize {
        if self.tma_rows {
            TMA_BOX_COLS
        } else {
            self.stage_depth + ROW_PADDING
        }
    }

    /// Rows of the A stage in shared memory (TMA: every box's rows, box after box).
    fn a_stage_rows(&self) -> usize {
        if self.tma_rows {
            self.tile_rows * self.row_boxes()
        } else {
            self.tile_rows
        }
    }

    /// Elements per shared-memory row of the weight stage (rows run along the depth, or along
    /// the columns when the weights are transposed; TMA boxes: [`TMA_BOX_COLS`], unpadded).
    pub fn w_stride(&self) -> usize {
        if self.tma_weights {
            TMA_BOX_COLS
        } else if self.transposed_weights {
            self.stage_depth + ROW_PADDING
        } else {
            self.groups * self.tile_cols + ROW_PADDING
        }
    }

    /// Rows of the weight stage in shared memory: along the depth, or the columns when the
    /// weights are transposed (TMA: every box's rows, box after box).
    fn w_stage_rows(&self) -> usize {
        let rows = if self.transposed_weights {
            self.groups * self.tile_cols
        } else {
            self.stage_depth
        };
        if self.tma_weights {
            rows * self.weight_boxes()
        } else {
            rows
        }
    }

    /// TMA boxes of one weight stage, each [`TMA_BOX_COLS`] wide: over the tile's columns of
    /// every group (`stage_depth` rows each), or, transposed, over the stage's depth (the tile's
    /// columns as rows).
    pub fn weight_boxes(&self) -> usize {
        if self.transposed_weights {
            self.stage_depth / TMA_BOX_COLS
        } else {
            self.groups * self.tile_cols / TMA_BOX_COLS
        }
    }

    /// TMA boxes of one A stage: `tile_rows` rows of [`TMA_BOX_COLS`] depth columns each.
    pub fn row_boxes(&self) -> usize {
        self.stage_depth / TMA_BOX_COLS
    }

    /// Bytes one stage's TMA boxes bring, with elements of `elem_size` bytes (what the stage's
    /// barrier expects besides the units' copies).
    pub fn tma_stage_bytes(&self, elem_size: usize) -> usize {
        let weights = if self.tma_weights {
            self.stage_depth * self.groups * self.tile_cols
        } else {
            0
        };
        let rows = if self.tma_rows {
            self.tile_rows * self.stage_depth
        } else {
            0
        };
        (weights + rows) * elem_size
    }

    /// Vectors of `vector` elements in one A stage buffer (padded).
    pub fn a_stage_vectors(&self, vector: usize) -> usize {
        self.a_stage_rows() * self.a_stride() / vector
    }

    /// Vectors in one weight stage buffer (padded).
    pub fn w_stage_vectors(&self, vector: usize) -> usize {
        self.w_stage_rows() * self.w_stride() / vector
    }

    /// Vectors of A data per stage.
    pub fn a_vectors(&self, vector: usize) -> usize {
        self.tile_rows * self.stage_depth / vector
    }

    /// Vectors of weight data per stage.
    pub fn w_vectors(&self, vector: usize) -> usize {
        self.stage_depth * self.groups * self.tile_cols / vector
    }

    /// A vectors each unit loads per stage.
    pub fn a_loads_per_unit(&self, vector: usize) -> usize {
        self.a_vectors(vector).div_ceil(self.units())
    }

    /// Weight vectors each unit loads per stage.
    pub fn w_loads_per_unit(&self, vector: usize) -> usize {
        self.w_vectors(vector).div_ceil(self.units())
    }

    /// Bytes of shared memory one cube uses with elements of `elem_size` bytes (with the
    /// alignment the TMA boxes need).
    pub fn shared_bytes(&self, elem_size: usize) -> usize {
        let buffer = self.a_stage_rows() * self.a_stride() + self.w_stage_rows() * self.w_stride();
        // Alignment may pad in front of each of the two buffers.
        let alignment = stage_alignment(self.tma_rows) + stage_alignment(self.tma_weights);
        self.pipeline.buffers() * buffer * elem_size + alignment
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
        divides("stage_depth", self.stage_depth, vector)?;
        divides("tile_cols", self.tile_cols, vector)?;
        if self.groups != self.epilogue.groups() {
            return Err(format!(
                "groups = {} does not match the {:?} epilogue",
                self.groups, self.epilogue
            ));
        }
        if self.split_k == 0 || self.raster_group == 0 {
            return Err("split_k and raster_group must be >= 1".into());
        }
        if self.transposed_weights && self.groups != 1 {
            return Err("transposed weights take one column group".into());
        }
        if self.pipeline.buffers() < 2 {
            return Err("an asynchronous pipeline needs at least 2 stages".into());
        }
        if self.split_k > 1 && self.epilogue != Epilogue::Identity {
            return Err("split-K sums partial products: only the identity epilogue".into());
        }
        if self.tma_weights {
            if !self.tensor_cores || self.pipeline == Pipeline::Registers {
                return Err(
                    "TMA weight boxes need tensor cores and the asynchronous pipeline".into(),
                );
            }
            // Boxes run along the weights' rows: the tile's columns, or (transposed) the depth.
            let (along, box_rows) = if self.transposed_weights {
                (
                    ("stage_depth", self.stage_depth),
                    ("tile_cols", self.tile_cols),
                )
            } else {
                (
                    ("tile_cols", self.tile_cols),
                    ("stage_depth", self.stage_depth),
                )
            };
            divides(along.0, along.1, TMA_BOX_COLS)?;
            if box_rows.1 > TMA_MAX_BOX_ROWS {
                return Err(format!(
                    "{} = {} exceeds a TMA box's {TMA_MAX_BOX_ROWS} rows",
                    box_rows.0, box_rows.1
                ));
            }
        }
        if self.tma_rows {
            if !self.tensor_cores || self.gather || self.pipeline == Pipeline::Registers {
                return Err(
                    "TMA row boxes need tensor cores, rows in dispatch order and the \
                     asynchronous pipeline"
                        .into(),
                );
            }
            divides("stage_depth", self.stage_depth, TMA_BOX_COLS)?;
            if self.tile_rows > TMA_MAX_BOX_ROWS {
                return Err(format!(
                    "tile_rows = {} exceeds a TMA box's {TMA_MAX_BOX_ROWS} rows",
                    self.tile_rows
                ));
            }
        }
        if self.tensor_cores {
            divides("tile_rows", self.tile_rows, self.warps_m * MMA_M)?;
            divides("tile_cols", self.tile_cols, self.warps_n * COLUMN_PAIR)?;
            divides("stage_depth", self.stage_depth, MMA_K)?;
        } else {
            divides("tile_rows", self.tile_rows, self.unit_rows)?;
            divides("tile_cols", self.tile_cols, self.unit_cols)?;
            divides("unit_cols", self.unit_cols, vector)?;
        }
        Ok(())
    }
}
