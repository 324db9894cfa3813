//! A run's quantized experts: `quantized-experts.bin` beside `model.mpk`, with a checksum file
//! as the model has. `experiments quantize` writes it; `eval` and `generate` serve from it when
//! it is there. The model's own record is left as trained (the quantized weights are constants
//! of the layer, not parameters).
//!
//! Layout (little-endian): the magic `MOEQEXP1`, the number of MoE blocks (u32), then for each
//! block `w_in` and `w_out`, each as: format (u8: 0 int8, 1 fp8, 2 fp8-block), experts, depth,
//! columns (u64 each), one byte per weight, the number of scales (u64), the scales (f32).

use std::path::Path;

use burn::tensor::backend::Backend;
use moe_kernels::quantized::{QuantFormat, QuantLayout, QuantizedMatrix};
use moe_model::QuantizedExperts;
use moe_model::experts::Experts;

use crate::error::ExperimentError;
use crate::model_file::{save_checksum, verify_checksum};

/// The file name of a run's quantized experts.
pub const QUANTIZED_FILE: &str = "quantized-experts.bin";

const MAGIC: &[u8; 8] = b"MOEQEXP1";

/// One MoE block's quantized projections, `(w_in, w_out)`.
pub type QuantizedBlock = (QuantizedMatrix, QuantizedMatrix);

/// Writes `blocks` to `path`, and its checksum beside it.
pub fn save_quantized(blocks: &[QuantizedBlock], path: &Path) -> Result<(), ExperimentError> {
    let mut bytes = MAGIC.to_vec();
    bytes.extend((blocks.len() as u32).to_le_bytes());
    for matrix in blocks.iter().flat_map(|(w_in, w_out)| [w_in, w_out]) {
        let layout = matrix.layout();
        let format = QuantFormat::ALL.iter().position(|&f| f == layout.format);
        bytes.push(format.expect("a listed format") as u8);
        for size in [layout.experts, layout.depth, layout.columns] {
            bytes.extend((size as u64).to_le_bytes());
        }
        bytes.extend(matrix.bytes());
        bytes.extend((matrix.scales().len() as u64).to_le_bytes());
        bytes.extend(matrix.scales().iter().flat_map(|s| s.to_le_bytes()));
    }
    std::fs::write(path, &bytes).map_err(ExperimentError::io(path))?;
    save_checksum(path, &bytes)
}

/// Reads the blocks saved at `path`; a file that does not match its checksum, is cut short,
/// has bytes left over or holds scales of another shape than its layout's is damaged.
pub fn load_quantized(path: &Path) -> Result<Vec<QuantizedBlock>, ExperimentError> {
    verify_checksum(path)?;
    let bytes = std::fs::read(path).map_err(ExperimentError::io(path))?;
    let damaged = |reason: String| ExperimentError::DamagedFile {
        path: path.to_path_buf(),
        reason,
    };
    let mut reader = Reader { bytes: &bytes };
    if reader.take(MAGIC.len()).map_err(&damaged)? != MAGIC {
        return Err(damaged("it is not a quantized-experts file".into()));
    }
    let blocks = u32::from_le_bytes(reader.array().map_err(&damaged)?) as usize;
    let mut matrix = || -> Result<QuantizedMatrix, String> {
        let format = *reader.take(1)?.first().expect("one byte");
        let format = *QuantFormat::ALL
            .get(format as usize)
            .ok_or_else(|| format!("unknown format code {format}"))?;
        let mut size = || reader.array().map(|b| u64::from_le_bytes(b) as usize);
        let layout = QuantLayout {
            format,
            experts: size()?,
            depth: size()?,
            columns: size()?,
        };
        layout.validate().map_err(|e| e.to_string())?;
        let weights = reader.take(layout.num_weights())?.to_vec();
        let num_scales = u64::from_le_bytes(reader.array()?) as usize;
        let scales = reader
            .take(num_scales.saturating_mul(4))?
            .chunks(4)
            .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")))
            .collect();
        QuantizedMatrix::new(layout, weights, scales).map_err(|e| e.to_string())
    };
    let mut loaded = Vec::new();
    for _ in 0..blocks {
        let w_in = matrix().map_err(&damaged)?;
        let w_out = matrix().map_err(&damaged)?;
        loaded.push((w_in, w_out));
    }
    if !reader.bytes.is_empty() {
        return Err(damaged(format!(
            "{} bytes after the last block",
            reader.bytes.len()
        )));
    }
    Ok(loaded)
}

/// Serves `experts` (a model's MoE blocks, in order) from the quantized experts saved in `run`,
/// if it has them: their format, or `None` (the float experts run). A file whose blocks do not
/// fit the model is an error naming it.
pub fn attach_quantized<B: Backend>(
    experts: Vec<&mut Experts<B>>,
    run: &Path,
    device: &B::Device,
) -> Result<Option<QuantFormat>, ExperimentError> {
    let path = run.join(QUANTIZED_FILE);
    if !path.exists() {
        return Ok(None);
    }
    let blocks = load_quantized(&path)?;
    let mismatch = |reason: String| ExperimentError::ModelFile {
        path: path.clone(),
        action: "load",
        reason,
    };
    if blocks.len() != experts.len() {
        return Err(mismatch(format!(
            "it holds {} MoE blocks, the model has {}; quantize the run again",
            blocks.len(),
            experts.len()
        )));
    }
    let mut format = None;
    for (layer, (w_in, w_out)) in experts.into_iter().zip(&blocks) {
        let quantized = QuantizedExperts::from_matrices(w_in, w_out, device)
            .map_err(|e| mismatch(e.to_string()))?;
        format = Some(quantized.format());
        layer
            .set_quantized(quantized)
            .map_err(|e| mismatch(e.to_string()))?;
    }
    eprintln!(
        "note: the experts run quantized ({}) from {}",
        format.map_or("-", QuantFormat::name),
        path.display()
    );
    Ok(format)
}

/// A cursor over a file's bytes that says what it needed when the file ends too early.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, len: usize) -> Result<&'a [u8], String> {
        if len > self.bytes.len() {
            return Err(format!(
                "it ends too early ({len} bytes needed, {} left)",
                self.bytes.len()
            ));
        }
        let (head, rest) = self.bytes.split_at(len);
        self.bytes = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        Ok(self.take(N)?.try_into().expect("N bytes"))
    }
}

#[cfg(test)]
mod tests {
    use moe_kernels::quantized::reference::quantize;

    use super::*;
    use crate::model_file::checksum_path;

    fn block(format: QuantFormat) -> QuantizedBlock {
        let matrix = |depth, columns| {
            let layout = QuantLayout {
                format,
                experts: 3,
                depth,
                columns,
            };
            let weights: Vec<f32> = (0..layout.num_weights())
                .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 0.999)
                .collect();
            quantize(&weights, layout)
        };
        (matrix(130, 20), matrix(10, 130))
    }

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir =
            std::env::temp_dir().join(format!("quantized-file-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join(QUANTIZED_FILE)
    }

    #[test]
    fn blocks_round_trip_in_every_format() {
        let path = scratch("round-trip");
        let blocks: Vec<_> = QuantFormat::ALL.into_iter().map(block).collect();
        save_quantized(&blocks, &path).unwrap();
        assert_eq!(load_quantized(&path).unwrap(), blocks);
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    /// Scales of the wrong shape, a cut file and a changed byte are damaged files: error values
    /// naming the file and what is wrong, never a panic.
    #[test]
    fn wrong_scales_a_cut_file_or_a_changed_byte_are_errors() {
        let path = scratch("damaged");
        save_quantized(&[block(QuantFormat::Fp8Block)], &path).unwrap();
        let good = std::fs::read(&path).unwrap();
        let rewrite = |bytes: &[u8]| {
            std::fs::write(&path, bytes).unwrap();
            save_checksum(&path, bytes).unwrap();
            load_quantized(&path).unwrap_err().to_string()
        };
        // The first matrix's scale count: after magic, count, format and sizes, and its bytes.
        let at = 8 + 4 + 1 + 24 + 3 * 130 * 20;
        let mut wrong_scales = good.clone();
        wrong_scales[at] -= 1; // one scale fewer than fp8-block [3, 130, 20] needs
        let error = rewrite(&wrong_scales);
        assert!(error.contains("[3, 2, 1]"), "{error}");
        let error = rewrite(&good[..good.len() - 3]);
        assert!(error.contains("ends too early"), "{error}");

        std::fs::write(&path, &good).unwrap();
        std::fs::write(checksum_path(&path), "crc32 00000000 1\n").unwrap();
        assert!(matches!(
            load_quantized(&path),
            Err(ExperimentError::DamagedFile { .. })
        ));
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }
}
