//! Compile-time knobs of one quantized grouped-GEMM launch and the sizes they imply.

use serde::{Deserialize, Serialize};

use super::format::QuantFormat;
use crate::grouped_gemm::Epilogue;

/// Output columns of one tile (per column group).
const TILE_COLS: usize = 32;
/// Columns each unit accumulates (per group).
const UNIT_COLS: usize = 2;
/// Most units along a tile's rows.
const MAX_ROW_UNITS: usize = 16;
/// Depth of one shared-memory stage.
const STAGE_DEPTH: usize = 16;

/// Tile shape, weight format and epilogue of one launch (see `kernel.rs`).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuantGemmParams {
    /// Rows per tile: the dispatch's tile rows.
    pub tile_rows: usize,
    /// Output columns per tile and column group.
    pub tile_cols: usize,
    /// Depth of one shared-memory stage.
    pub stage_depth: usize,
    /// Rows each unit accumulates.
    pub unit_rows: usize,
    /// Columns each unit accumulates per group.
    pub unit_cols: usize,
    /// Column groups read per output column (2 for SwiGLU: gate and up).
    pub groups: usize,
    /// Rows of `a` are token rows read through the routed pairs (first projection).
    pub gather: bool,
    /// What is applied before storing: identity, SwiGLU or GELU.
    pub epilogue: Epilogue,
    /// How the weight bytes and scales decode.
    pub format: QuantFormat,
}

impl QuantGemmParams {
    /// The knobs for tiles of `tile_rows` rows (the dispatch's): up to 16 units along the rows
    /// (the largest count dividing `tile_rows`), 16 along 32 columns, stages 16 deep.
    pub fn new(tile_rows: usize, epilogue: Epilogue, gather: bool, format: QuantFormat) -> Self {
        let row_units = (1..=MAX_ROW_UNITS.min(tile_rows.max(1)))
            .rev()
            .find(|units| tile_rows.is_multiple_of(*units))
            .unwrap_or(1);
        Self {
            tile_rows,
            tile_cols: TILE_COLS,
            stage_depth: STAGE_DEPTH,
            unit_rows: tile_rows.max(1) / row_units,
            unit_cols: UNIT_COLS,
            groups: epilogue.groups(),
            gather,
            epilogue,
            format,
        }
    }

    /// Units per cube.
    pub fn units(&self) -> usize {
        (self.tile_rows / self.unit_rows) * (self.tile_cols / self.unit_cols)
    }

    /// f32 sums per unit.
    pub fn accumulators(&self) -> usize {
        self.groups * self.unit_rows * self.unit_cols
    }

    /// Values of one A stage: `tile_rows` rows, `stage_depth` deep.
    pub fn a_stage(&self) -> usize {
        self.tile_rows * self.stage_depth
    }

    /// Values of one weight stage: `stage_depth` rows of the tile's columns of every group.
    pub fn w_stage(&self) -> usize {
        self.stage_depth * self.groups * self.tile_cols
    }

    /// Bytes of shared memory one cube uses (both stages in f32).
    pub fn shared_bytes(&self) -> usize {
        (self.a_stage() + self.w_stage()) * size_of::<f32>()
    }

    /// Why these knobs cannot run, if they cannot.
    pub fn check(&self) -> Result<(), String> {
        if self.epilogue == Epilogue::SwiGluBackward {
            return Err("the quantized GEMM runs forward epilogues only".into());
        }
        if self.groups != self.epilogue.groups() {
            return Err(format!(
                "groups = {} does not match the {:?} epilogue",
                self.groups, self.epilogue
            ));
        }
        let divides = |what: &str, value: usize, by: usize| match by > 0 && value % by == 0 {
            true => Ok(()),
            false => Err(format!("{what} = {value} must be a multiple of {by}")),
        };
        divides("tile_rows", self.tile_rows, self.unit_rows)?;
        divides("tile_cols", self.tile_cols, self.unit_cols)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_tile_row_count_gets_a_valid_unit_grid() {
        for tile_rows in [1, 7, 16, 32, 64, 100, 144, 256] {
            let params = QuantGemmParams::new(tile_rows, Epilogue::SwiGlu, true, QuantFormat::Int8);
            assert_eq!(params.check(), Ok(()), "{tile_rows}");
            assert!(
                params.units() <= 256,
                "{tile_rows}: {} units",
                params.units()
            );
        }
        assert_eq!(
            QuantGemmParams::new(144, Epilogue::Identity, false, QuantFormat::Fp8).unit_rows,
            9
        );
    }
}
