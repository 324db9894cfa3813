//! How quantized expert weights are laid out: the element format, where the f32 scales sit, and
//! the checks that a set of bytes and scales fits the weights it claims to be.
//!
//! A projection's weights `[E, depth, columns]` (the grouped GEMM's `[E, d, input_columns(F)]`
//! or `[E, F, d]`, depth rows, output columns) are stored as one byte per weight, row-major,
//! and a weight is `decode(byte) * scale`. Per output channel: one scale per column of each
//! expert, `[E, columns]`. Blocks: one scale per 128 x 128 block of each expert's matrix,
//! `[E, ceil(depth / 128), ceil(columns / 128)]` (DeepSeek-V3's layout; blocks at the right and
//! bottom edges are partial). For SwiGLU the input projection's columns are the gate columns
//! followed by the up columns, and blocks run over that stored matrix as it is.

use serde::{Deserialize, Serialize};

use crate::InvalidValue;

/// Rows and columns of one scale block of [`QuantFormat::Fp8Block`].
pub const SCALE_BLOCK: usize = 128;

/// The element type and scale granularity of quantized weights.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum QuantFormat {
    /// Symmetric int8 (-127..=127), one scale per output channel.
    Int8,
    /// FP8 e4m3 (OCP "e4m3fn": no infinities, +-448 largest), one scale per output channel.
    Fp8,
    /// FP8 e4m3, one scale per 128 x 128 block.
    Fp8Block,
}

impl QuantFormat {
    /// Every format, in the order the command line lists them.
    pub const ALL: [QuantFormat; 3] = [QuantFormat::Int8, QuantFormat::Fp8, QuantFormat::Fp8Block];

    /// The name the command line and files use (`int8`, `fp8`, `fp8-block`).
    pub fn name(self) -> &'static str {
        match self {
            QuantFormat::Int8 => "int8",
            QuantFormat::Fp8 => "fp8",
            QuantFormat::Fp8Block => "fp8-block",
        }
    }

    /// The format called `name`, or an error listing the names.
    pub fn parse(name: &str) -> Result<Self, InvalidValue> {
        Self::ALL
            .into_iter()
            .find(|format| format.name() == name)
            .ok_or_else(|| {
                let names: Vec<_> = Self::ALL.iter().map(|f| f.name()).collect();
                InvalidValue::new(
                    "format",
                    name,
                    format!("must be one of {}", names.join(", ")),
                )
            })
    }

    /// Whether the bytes are FP8 e4m3 (else int8).
    pub fn is_fp8(self) -> bool {
        self != QuantFormat::Int8
    }

    /// Whether the scales are per 128 x 128 block (else per output channel).
    pub fn is_block(self) -> bool {
        self == QuantFormat::Fp8Block
    }

    /// Largest magnitude a byte encodes: the scale maps each channel's or block's largest weight
    /// onto it.
    pub fn max_code(self) -> f64 {
        if self.is_fp8() { 448.0 } else { 127.0 }
    }
}

impl std::fmt::Display for QuantFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The shape of one quantized projection: `experts` matrices of `depth` rows and `columns`
/// output columns, in `format`.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuantLayout {
    /// Element type and scale granularity.
    pub format: QuantFormat,
    /// Experts E.
    pub experts: usize,
    /// Rows of each expert's matrix (the GEMM's reduction length).
    pub depth: usize,
    /// Columns of each expert's matrix (output channels).
    pub columns: usize,
}

impl QuantLayout {
    /// Weights (and bytes) of all experts.
    pub fn num_weights(&self) -> usize {
        self.experts * self.depth * self.columns
    }

    /// Scale rows and columns per expert: `(1, columns)` per channel, the block counts for
    /// blocks.
    pub fn scale_grid(&self) -> (usize, usize) {
        if self.format.is_block() {
            (
                self.depth.div_ceil(SCALE_BLOCK),
                self.columns.div_ceil(SCALE_BLOCK),
            )
        } else {
            (1, self.columns)
        }
    }

    /// The scales' shape, `[E, scale rows, scale columns]`.
    pub fn scale_shape(&self) -> [usize; 3] {
        let (rows, cols) = self.scale_grid();
        [self.experts, rows, cols]
    }

    /// Scales of all experts.
    pub fn num_scales(&self) -> usize {
        self.scale_shape().iter().product()
    }

    /// Index into the scales of the weight at row `k`, column `column` of expert `expert`.
    pub fn scale_index(&self, expert: usize, k: usize, column: usize) -> usize {
        let (rows, cols) = self.scale_grid();
        if self.format.is_block() {
            (expert * rows + k / SCALE_BLOCK) * cols + column / SCALE_BLOCK
        } else {
            expert * cols + column
        }
    }

    /// 32-bit words holding the bytes, four per word (the last one padded with zeros).
    pub fn num_words(&self) -> usize {
        self.num_weights().div_ceil(4)
    }

    /// Checks sizes: non-zero, and indices that fit 32 bits on the device.
    pub fn validate(&self) -> Result<(), InvalidValue> {
        for (field, value) in [
            ("experts", self.experts),
            ("depth", self.depth),
            ("columns", self.columns),
        ] {
            if value == 0 {
                return Err(InvalidValue::new(field, 0, "must be >= 1"));
            }
        }
        if self.num_weights() >= i32::MAX as usize {
            return Err(InvalidValue::new(
                "weights",
                self.num_weights(),
                "must be below 2^31 per projection (32-bit indices)",
            ));
        }
        Ok(())
    }

    /// Checks that `bytes` and `scales` hold exactly this layout's weights and scales, and that
    /// every scale is a finite positive number.
    pub fn check_parts(&self, bytes: usize, scales: &[f32]) -> Result<(), InvalidValue> {
        self.validate()?;
        if bytes != self.num_weights() {
            return Err(InvalidValue::new(
                "bytes",
                bytes,
                format!(
                    "must be {} (E x depth x columns = {self})",
                    self.num_weights()
                ),
            ));
        }
        if scales.len() != self.num_scales() {
            return Err(InvalidValue::new(
                "scales",
                format!("{} values", scales.len()),
                format!(
                    "must be {:?} = {} values for {self}",
                    self.scale_shape(),
                    self.num_scales()
                ),
            ));
        }
        if let Some(bad) = scales.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
            return Err(InvalidValue::new(
                "scales",
                bad,
                "every scale must be finite and > 0",
            ));
        }
        Ok(())
    }
}

impl std::fmt::Display for QuantLayout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} [{}, {}, {}]",
            self.format, self.experts, self.depth, self.columns
        )
    }
}

/// One projection's quantized weights on the host: a byte per weight and the f32 scales, checked
/// against their layout when built (what files store and the layer uploads).
#[derive(Clone, Debug, PartialEq)]
pub struct QuantizedMatrix {
    layout: QuantLayout,
    bytes: Vec<u8>,
    scales: Vec<f32>,
}

impl QuantizedMatrix {
    /// The weights of `layout` from their `bytes` (`[E, depth, columns]`) and `scales` (see
    /// [`QuantLayout::scale_shape`]); an error when either does not fit the layout.
    pub fn new(
        layout: QuantLayout,
        bytes: Vec<u8>,
        scales: Vec<f32>,
    ) -> Result<Self, InvalidValue> {
        layout.check_parts(bytes.len(), &scales)?;
        Ok(Self {
            layout,
            bytes,
            scales,
        })
    }

    /// Shape and format.
    pub fn layout(&self) -> QuantLayout {
        self.layout
    }

    /// One byte per weight, `[E, depth, columns]`.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The scales, `[E, scale rows, scale columns]`.
    pub fn scales(&self) -> &[f32] {
        &self.scales
    }

    /// The bytes four per 32-bit word, as the kernels read them ([`pack_bytes`]).
    pub fn packed(&self) -> Vec<u32> {
        pack_bytes(&self.bytes)
    }
}

/// `bytes` four per little-endian 32-bit word (byte `i` in bits `8 (i % 4)..` of word `i / 4`),
/// the last word padded with zeros: how the kernels read bytes on runtimes without 8-bit
/// buffers (WGSL has none).
pub fn pack_bytes(bytes: &[u8]) -> Vec<u32> {
    bytes
        .chunks(4)
        .map(|chunk| {
            let mut word = [0u8; 4];
            word[..chunk.len()].copy_from_slice(chunk);
            u32::from_le_bytes(word)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_an_unknown_one_is_an_error() {
        for format in QuantFormat::ALL {
            assert_eq!(QuantFormat::parse(format.name()), Ok(format));
        }
        let error = QuantFormat::parse("fp4").unwrap_err();
        assert!(
            error.to_string().contains("int8, fp8, fp8-block"),
            "{error}"
        );
    }

    #[test]
    fn block_scales_cover_partial_edge_blocks() {
        let layout = QuantLayout {
            format: QuantFormat::Fp8Block,
            experts: 3,
            depth: 130,
            columns: 256,
        };
        assert_eq!(layout.scale_shape(), [3, 2, 2]);
        assert_eq!(layout.scale_index(2, 129, 255), (2 * 2 + 1) * 2 + 1);
        let channel = QuantLayout {
            format: QuantFormat::Int8,
            ..layout
        };
        assert_eq!(channel.scale_shape(), [3, 1, 256]);
        assert_eq!(channel.scale_index(1, 100, 7), 256 + 7);
    }

    #[test]
    fn parts_of_the_wrong_size_or_bad_scales_are_errors() {
        let layout = QuantLayout {
            format: QuantFormat::Fp8Block,
            experts: 2,
            depth: 200,
            columns: 5,
        };
        let scales = vec![1.0; 4];
        assert!(layout.check_parts(2000, &scales).is_ok());
        assert!(layout.check_parts(1999, &scales).is_err());
        let error = layout.check_parts(2000, &scales[..3]).unwrap_err();
        assert!(error.to_string().contains("[2, 2, 1]"), "{error}");
        assert!(layout.check_parts(2000, &[1.0, 0.0, 1.0, 1.0]).is_err());
        assert!(
            layout
                .check_parts(2000, &[1.0, f32::NAN, 1.0, 1.0])
                .is_err()
        );
    }

    #[test]
    fn bytes_pack_little_endian_with_a_padded_tail() {
        assert_eq!(
            pack_bytes(&[1, 2, 3, 4, 0xff]),
            vec![0x0403_0201, 0x0000_00ff]
        );
    }
}
