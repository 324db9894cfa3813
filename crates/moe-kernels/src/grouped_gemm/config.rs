//! Which tiles each projection uses, by shape class: the size rule is written down here so that
//! every benchmark and layer run is reproducible from its shape.
//!
//! Classes, by the expected rows per touched expert `r = P / min(E, P)`:
//! - decode (`r <= 16`): 16-row tiles, so a small batch is not padded to a large block; 128-deep
//!   stages in 2 buffers stream each touched expert's weights once; the output projection splits
//!   its depth (split-K) until the grid has about [`CUBES_PER_SM`] cubes per multiprocessor, since
//!   its few column blocks alone cannot keep the memory system busy;
//! - medium (`r <= 64`): 64-row tiles, 64-deep stages;
//! - prefill: 128-row tiles, 4 planes, 64-deep stages; 128 x 128 products (input, planes 2 x 2:
//!   64 columns per group for SwiGLU's gate and up) and 128 x 128 (output, planes 1 x 4): large
//!   plane tiles, whose many independent MMAs per fragment load beat a second cube per
//!   multiprocessor;
//! - prefill fitted (`r` about one tile: [`fits_fitted_tile`]): 144-row tiles, planes 3 x 2 of
//!   48 rows, 2 buffers, so that an expert's rows fit one tile instead of spilling into a
//!   nearly empty second one.
//!
//! Medium and prefill input tiles multiply 128 columns of weights whatever the epilogue: SwiGLU
//! splits them into its two groups, GELU and the training forward's pre-activations
//! ([`ExpertGemmConfig::pre_activation`]) take them as one group, so every plane does the same
//! work per fragment load.
//!
//! On tensor cores every class copies its stages asynchronously into shared buffers (3; 2 for
//! decode and prefill fitted) (`mma.sync` m16n8k16 in 16-bit floats needs sm_80, which has
//! `cp.async`; [`device_config`](super::device_config) falls back to the register pipeline on a
//! device without it), unless `d` or `F` is odd: `cp.async` moves at least 4 bytes, two 16-bit
//! floats.
//!
//! On a device with TMA (sm_90) the prefill and medium classes take their weight stages as TMA
//! boxes ([`ExpertGemmConfig::gains_from_tma`]): one unit issues them instead of every unit
//! copying 16 bytes at a time, which left the prefill GEMMs about 15% faster on an H100, and
//! the backward's projections through transposed weights 10-18% faster. On 128 x 128 tiles
//! those take their A rows as boxes too, in 8 planes ([`ExpertGemmConfig::transposed`]).
//!
//! The picks are the fastest candidates of `examples/tune_grouped_gemm.rs` on an H100 in bf16
//! (docs/GPU.md has the table). Without tensor cores (f32, or a device without them) one
//! portable shape serves every class.

use serde::Serialize;

use super::launch::ExpertShape;
use super::params::{Epilogue, GemmParams};
use crate::Activation;
use crate::pipeline::{Pipeline, async_copy_fits};

/// Cubes per multiprocessor the decode class aims for when it chooses split-K.
pub const CUBES_PER_SM: usize = 8;
/// Most depth slices of a split-K output projection.
pub const MAX_SPLITS: usize = 8;
/// Depth of a decode stage: two stages of 128 weight rows beat three of 64 (Mixtral T=1 on an
/// H100: 184 / 99 us against 212 / 111 us for the two projections; T=16 within 4%; docs/GPU.md).
const DECODE_STAGE_DEPTH: usize = 128;
/// Shared buffers of the decode class's asynchronous pipeline (see [`DECODE_STAGE_DEPTH`]).
const DECODE_STAGES: usize = 2;
/// Weight columns one medium or prefill input tile multiplies, over all its column groups.
const INPUT_PRODUCT_COLUMNS: usize = 128;

/// Elements of one 16-byte load of 16-bit floats: the tensor-core path's vector width.
const VECTOR_16_BIT: usize = 8;
/// Rows of the prefill tiles.
const PREFILL_TILE_ROWS: usize = 128;
/// Rows of the prefill tiles for experts that get about one tile of rows (see
/// [`fits_fitted_tile`]).
pub const FITTED_TILE_ROWS: usize = 144;

/// Whether experts expecting `rows_per_expert` rows get [`FITTED_TILE_ROWS`]-row tiles rather
/// than 128-row ones: when their rows, plus one standard deviation of a random routing (about
/// the square root), overflow 128 rows but fit 144. With 128-row tiles about half of such
/// experts would spill a few rows into a second, nearly empty tile, which costs a whole tile's
/// weight copies and barriers (DeepSeek-like routing, 128 +- 11 rows per expert: GEMM 1 / 2 went
/// from 8735 / 4535 us to 7617 / 3989 us on an H100, docs/GPU.md).
pub fn fits_fitted_tile(rows_per_expert: usize) -> bool {
    let high = rows_per_expert as f64 + (rows_per_expert as f64).sqrt();
    high > PREFILL_TILE_ROWS as f64 && high <= FITTED_TILE_ROWS as f64
}

/// The output projection's knobs for an input projection's `input`: rows in dispatch order,
/// no activation, `tile_cols` columns over `warps_n` planes.
fn output_tiles(input: GemmParams, tile_cols: usize, warps_n: usize) -> GemmParams {
    GemmParams {
        tile_cols,
        warps_n,
        groups: 1,
        gather: false,
        epilogue: Epilogue::Identity,
        ..input
    }
}

/// The tiles of both expert projections of one batch (they share the dispatch's tile rows).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct ExpertGemmConfig {
    /// Shape class the rule picked (`decode`, `medium`, `prefill`, `portable`).
    pub class: &'static str,
    /// First projection: gather, gate and up (or GELU) in the epilogue.
    pub input: GemmParams,
    /// Second projection: rows in dispatch order, optional split-K.
    pub output: GemmParams,
}

impl ExpertGemmConfig {
    /// The configuration for `shape`, on tensor cores when `tensor_cores`, for a device with
    /// `multiprocessors` (when known; it sizes split-K).
    pub fn choose(
        shape: &ExpertShape,
        activation: Activation,
        tensor_cores: bool,
        multiprocessors: Option<usize>,
    ) -> Self {
        let epilogue = match activation {
            Activation::SwiGlu => Epilogue::SwiGlu,
            Activation::Gelu => Epilogue::Gelu,
        };
        let pairs = shape.num_pairs();
        let touched = shape.num_experts.min(pairs).max(1);
        let rows_per_expert = pairs.div_ceil(touched);
        let base = GemmParams {
            tile_rows: 32,
            tile_cols: 32,
            stage_depth: 16,
            groups: epilogue.groups(),
            gather: true,
            epilogue,
            tensor_cores,
            warps_m: 1,
            warps_n: 1,
            unit_rows: 4,
            unit_cols: 4,
            split_k: 1,
            raster_group: 8,
            transposed_weights: false,
            tma_weights: false,
            tma_rows: false,
            pipeline: if tensor_cores && async_copy_fits(&[shape.d_model, shape.width]) {
                Pipeline::AsyncCopy { stages: 3 }
            } else {
                Pipeline::Registers
            },
        };
        if !tensor_cores {
            return Self {
                class: "portable",
                input: base,
                output: output_tiles(base, 32, 1),
            };
        }
        if rows_per_expert <= 16 {
            let input = GemmParams {
                tile_rows: 16,
                tile_cols: 64,
                stage_depth: DECODE_STAGE_DEPTH,
                warps_m: 1,
                warps_n: 4,
                raster_group: 1,
                pipeline: base.pipeline.with_stages(DECODE_STAGES),
                ..base
            };
            let mut output = output_tiles(input, 64, 4);
            let cubes = touched * shape.d_model.div_ceil(output.tile_cols);
            let target = CUBES_PER_SM * multiprocessors.unwrap_or(132);
            let depth_stages = shape.width.div_ceil(output.stage_depth);
            output.split_k = target
                .div_ceil(cubes)
                .clamp(1, MAX_SPLITS.min(depth_stages));
            return Self {
                class: "decode",
                input,
                output,
            };
        }
        // Medium and prefill: 128 weight columns per input tile, split among the groups.
        let input_cols = INPUT_PRODUCT_COLUMNS / epilogue.groups();
        if rows_per_expert <= 64 {
            let input = GemmParams {
                tile_rows: 64,
                tile_cols: input_cols,
                stage_depth: 64,
                warps_m: 4,
                warps_n: 2,
                ..base
            };
            return Self {
                class: "medium",
                input,
                output: GemmParams {
                    warps_m: 2,
                    ..output_tiles(input, 128, 4)
                },
            };
        }
        Self::prefill(base, input_cols, fits_fitted_tile(rows_per_expert))
    }

    /// The prefill class's tiles (`fitted`: the 144-row ones) for the input projection's knobs
    /// `base` (epilogue, pipeline, ...) and `input_cols` columns per group.
    fn prefill(base: GemmParams, input_cols: usize, fitted: bool) -> Self {
        if fitted {
            // 3 x 2 planes of 48 rows; 2 buffers, so that two cubes fit a multiprocessor's
            // shared memory.
            let input = GemmParams {
                tile_rows: FITTED_TILE_ROWS,
                tile_cols: input_cols,
                stage_depth: 64,
                warps_m: 3,
                warps_n: 2,
                pipeline: base.pipeline.with_stages(2),
                ..base
            };
            return Self {
                class: "prefill fitted",
                input,
                output: output_tiles(input, 128, 2),
            };
        }
        let input = GemmParams {
            tile_rows: PREFILL_TILE_ROWS,
            tile_cols: input_cols,
            stage_depth: 64,
            warps_m: 2,
            warps_n: 2,
            pipeline: base.pipeline.with_stages(3),
            ..base
        };
        Self {
            class: "prefill",
            input,
            output: GemmParams {
                warps_m: 1,
                ..output_tiles(input, 128, 4)
            },
        }
    }

    /// Whether this class's tiles run faster with their weight stages as TMA boxes, on an
    /// H100 (docs/GPU.md): prefill (Mixtral T=4096 GEMM 1 / 2: 4067 / 2224 us with `cp.async`,
    /// 3512 / 1903 us with TMA; fine-grained 1356 / 772 against 1205 / 697 us) and medium
    /// (744 / 369 against 726 / 367 us), not decode (T=16: 700 / 346 against 681 / 377 us) or
    /// prefill fitted (DeepSeek: 7533 / 4054 against 9381 / 5168 us). Why those two lose is not
    /// measured: both keep one stage in flight (2 buffers), where a box's longer latency would
    /// show, but DeepSeek's tiles with 3 buffers lose too (8808 / 5080 us with TMA).
    pub fn gains_from_tma(&self) -> bool {
        matches!(self.class, "prefill" | "medium")
    }

    /// These tiles with the weight stages of each projection as TMA boxes, and (`rows`) the A
    /// stages of the projections whose rows are in dispatch order, where they fit: an
    /// asynchronous pipeline, tiles in whole 64-column boxes, and rows of `d` and `F` in whole
    /// 16-byte units (TMA strides). A device with TMA runs them where the class
    /// [gains from it](Self::gains_from_tma) ([`device_config`](super::device_config)).
    pub fn with_tma(self, shape: &ExpertShape, rows: bool) -> Self {
        let strides_fit = shape.d_model.is_multiple_of(VECTOR_16_BIT)
            && shape.width.is_multiple_of(VECTOR_16_BIT);
        let boxed = |p: GemmParams| {
            let with_weights = GemmParams {
                tma_weights: true,
                ..p
            };
            let with_rows = GemmParams {
                tma_rows: true,
                ..with_weights
            };
            [(rows, with_rows), (true, with_weights)]
                .into_iter()
                .find(|(wanted, q)| *wanted && strides_fit && q.check(VECTOR_16_BIT).is_ok())
                .map_or(p, |(_, q)| q)
        };
        Self {
            input: boxed(self.input),
            output: boxed(self.output),
            ..self
        }
    }

    /// These tiles with both projections moving their stages by `pipeline`.
    pub fn with_pipeline(self, pipeline: Pipeline) -> Self {
        Self {
            input: GemmParams {
                pipeline,
                ..self.input
            },
            output: GemmParams {
                pipeline,
                ..self.output
            },
            ..self
        }
    }

    /// The configurations a tuning run compares for `shape`: the size rule's choice first, then
    /// variants of its class (tile columns, stage depth, planes, split-K, pipeline) and, for
    /// prefill, tiles of 64 rows and of rows near one expert's (the other prefill tiles among
    /// them). Every other candidate keeps the class's tile rows, which both projections share.
    pub fn candidates(
        shape: &ExpertShape,
        activation: Activation,
        multiprocessors: Option<usize>,
    ) -> Vec<Self> {
        let chosen = Self::choose(shape, activation, true, multiprocessors);
        let mut all = vec![chosen];
        let push_to = |all: &mut Vec<Self>, input: GemmParams, output: GemmParams| {
            let candidate = Self {
                input,
                output,
                ..chosen
            };
            if !all.contains(&candidate) {
                all.push(candidate);
            }
        };
        let mut push = |input, output| push_to(&mut all, input, output);
        let (input, output) = (chosen.input, chosen.output);
        let depths = if chosen.class == "decode" {
            [64, 128]
        } else {
            [32, 64]
        };
        for stage_depth in depths {
            for (tile_cols, warps_m, warps_n) in [
                (64, 1, 4),
                (128, 1, 4),
                (64, 2, 2),
                (128, 2, 4),
                (64, 4, 2),
                (128, 4, 2),
                (256, 2, 4),
            ] {
                if !chosen
                    .tile_rows()
                    .is_multiple_of(warps_m * super::tensor_cores::MMA_M)
                {
                    continue;
                }
                let variant = |p: GemmParams, cols: usize| GemmParams {
                    stage_depth,
                    tile_cols: cols,
                    warps_m,
                    warps_n,
                    ..p
                };
                if tile_cols <= 128 {
                    push(variant(input, tile_cols), output);
                }
                push(input, variant(output, tile_cols));
            }
        }
        for split_k in [1, 2, 4, 8] {
            push(input, GemmParams { split_k, ..output });
        }
        // Every tile variant with the other pipeline, and the rule's tiles with each depth of
        // the asynchronous one.
        let other = |p: GemmParams| GemmParams {
            pipeline: match p.pipeline {
                Pipeline::Registers => Pipeline::AsyncCopy { stages: 3 },
                Pipeline::AsyncCopy { .. } => Pipeline::Registers,
            },
            ..p
        };
        for candidate in all.clone() {
            push_to(&mut all, other(candidate.input), other(candidate.output));
        }
        for stages in [2, 3, 4] {
            let with = |p: GemmParams| GemmParams {
                pipeline: Pipeline::AsyncCopy { stages },
                ..p
            };
            push_to(&mut all, with(input), with(output));
        }
        if chosen.class.starts_with("prefill") {
            // Both prefill tiles (128 rows, and fitted to experts of about one tile), the
            // 128-row ones at half height (less padding where experts get about one tile of
            // rows), and other tile rows near one expert's (see `fits_fitted_tile`).
            let standard = Self::prefill(input, input.tile_cols, false);
            let fitted = Self::prefill(input, input.tile_cols, true);
            for tiles in [standard, fitted] {
                push_to(&mut all, tiles.input, tiles.output);
            }
            let half = |p: GemmParams| GemmParams { tile_rows: 64, ..p };
            push_to(&mut all, half(standard.input), half(standard.output));
            for (tile_rows, warps_m, warps_n) in [(144, 9, 1), (160, 5, 1), (192, 3, 2)] {
                for stages in [2, 3] {
                    let rows = |p: GemmParams| GemmParams {
                        tile_rows,
                        warps_m,
                        warps_n,
                        pipeline: p.pipeline.with_stages(stages),
                        ..p
                    };
                    push_to(&mut all, rows(input), rows(output));
                }
            }
        }
        // Every candidate with its weight stages as TMA boxes, and with its A rows too, where
        // they fit.
        for candidate in all.clone() {
            for rows in [false, true] {
                let boxed = candidate.with_tma(shape, rows);
                push_to(&mut all, boxed.input, boxed.output);
            }
        }
        all
    }

    /// The input projection without its activation, for the training forward, which keeps the
    /// pre-activations `[P, input_columns(F)]` for the backward: the input tiles' columns of all
    /// groups as one group.
    pub fn pre_activation(&self) -> GemmParams {
        GemmParams {
            tile_cols: self.input.tile_cols * self.input.groups,
            groups: 1,
            epilogue: Epilogue::Identity,
            ..self.input
        }
    }

    /// A projection of rows in dispatch order through transposed weights, with the output
    /// projection's tiles: the backward's input gradients (`d_rows @ w_out^T`,
    /// `d_pre @ w_in^T`). Its weight stages come as TMA boxes where the output projection's do
    /// and the transposed boxes fit (stages of whole 64-element boxes of depth). On 128 x 128
    /// tiles with TMA weights its A rows come as TMA boxes too, in 8 planes (2 x 4): 21% faster
    /// with the fused SwiGLU backward and 2% faster for `d_pre @ w_in^T` than the output
    /// projection's 4 planes (Mixtral T = 4096 on an H100; docs/GPU.md, eleventh session).
    pub fn transposed(&self) -> GemmParams {
        let params = GemmParams {
            transposed_weights: true,
            split_k: 1,
            ..self.output
        };
        let rows_boxed = GemmParams {
            tma_rows: true,
            warps_m: 2,
            warps_n: 4,
            ..params
        };
        let square_with_tma =
            params.tma_weights && (params.tile_rows, params.tile_cols) == (128, 128);
        [(square_with_tma, rows_boxed), (true, params)]
            .into_iter()
            .find(|(wanted, p)| *wanted && p.check(VECTOR_16_BIT).is_ok())
            .map_or(
                GemmParams {
                    tma_weights: false,
                    ..params
                },
                |(_, p)| p,
            )
    }

    /// Rows per tile of the dispatch's tile list that both projections need.
    pub fn tile_rows(&self) -> usize {
        self.input.tile_rows
    }
}
