//! Model files: Burn's compact record (`model.mpk`) with a CRC-32 of its bytes beside it
//! (`model.mpk.crc32`), so that a file changed after training (flipped, appended or missing
//! bytes) is refused instead of loaded, and a record that does not fit the configured model is
//! refused with the weight that differs. Every command that saves or loads a model goes through
//! [`save_model`] and [`load_model`].

use std::path::{Path, PathBuf};

use burn::module::{Module, ModuleVisitor, Param};
use burn::record::{CompactRecorder, RecorderError};
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

use crate::error::{ExperimentError, catch_panic, first_line};

/// The checksum file of `model`: `<model>.crc32`.
pub fn checksum_path(model: &Path) -> PathBuf {
    let mut name = model.as_os_str().to_owned();
    name.push(".crc32");
    PathBuf::from(name)
}

/// Saves `module` to `path` (Burn's compact recorder) and its checksum beside it.
pub fn save_model<B: Backend, M: Module<B>>(module: M, path: &Path) -> Result<(), ExperimentError> {
    module
        .save_file(path, &CompactRecorder::new())
        .map_err(|e| ExperimentError::ModelFile {
            path: path.to_path_buf(),
            action: "save",
            reason: e.to_string(),
        })?;
    let bytes = std::fs::read(path).map_err(ExperimentError::io(path))?;
    save_checksum(path, &bytes)
}

/// Writes the checksum file of `path`, whose content is `bytes`.
pub(crate) fn save_checksum(path: &Path, bytes: &[u8]) -> Result<(), ExperimentError> {
    let sum = checksum_path(path);
    std::fs::write(&sum, checksum_line(bytes)).map_err(ExperimentError::io(sum))
}

/// Loads the model saved at `path` into `fresh` (a module of the configured structure, on
/// `device`): checks the file against its checksum (a file without one, written before
/// checksums existed, is loaded with a note), then every weight's shape against `fresh`'s.
pub fn load_model<B: Backend, M: Module<B>>(
    fresh: M,
    path: &Path,
    device: &B::Device,
) -> Result<M, ExperimentError> {
    verify_checksum(path)?;
    let expected_shapes = param_shapes(&fresh);
    let load_error = |reason: String| ExperimentError::ModelFile {
        path: path.to_path_buf(),
        action: "load",
        reason,
    };
    // Burn panics when the saved structure differs from the configured one (e.g. block count).
    let loaded = catch_panic(|| fresh.load_file(path, &CompactRecorder::new(), device))
        .map_err(|_| {
            load_error(
                "the saved model's structure differs from the config's; was config.toml edited?"
                    .into(),
            )
        })?
        .map_err(|error| match error {
            RecorderError::FileNotFound(reason) => load_error(reason),
            RecorderError::DeserializeError(reason) | RecorderError::Unknown(reason) => {
                ExperimentError::DamagedFile {
                    path: path.to_path_buf(),
                    reason: decode_failure(&reason),
                }
            }
        })?;
    let saved_shapes = param_shapes(&loaded);
    if saved_shapes != expected_shapes {
        let detail = match saved_shapes
            .iter()
            .zip(&expected_shapes)
            .find(|(s, e)| s != e)
        {
            Some((saved, expected)) => {
                format!("a weight of shape {saved:?} where the config describes {expected:?}")
            }
            None => format!(
                "{} weight tensors where the config describes {}",
                saved_shapes.len(),
                expected_shapes.len()
            ),
        };
        return Err(load_error(format!(
            "the saved model has {detail}; was config.toml edited?"
        )));
    }
    Ok(loaded)
}

/// `crc32 <hex> <length>`, the checksum file's one line.
fn checksum_line(bytes: &[u8]) -> String {
    format!("crc32 {:08x} {}\n", crc32fast::hash(bytes), bytes.len())
}

/// Refuses a file whose bytes do not match its checksum file.
pub(crate) fn verify_checksum(path: &Path) -> Result<(), ExperimentError> {
    let sum = checksum_path(path);
    let expected = match std::fs::read_to_string(&sum) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!(
                "note: {} has no checksum file (saved before checksums existed); loaded unverified",
                path.display()
            );
            return Ok(());
        }
        Err(e) => return Err(ExperimentError::io(sum)(e)),
    };
    let bytes = std::fs::read(path).map_err(|e| ExperimentError::ModelFile {
        path: path.to_path_buf(),
        action: "load",
        reason: e.to_string(),
    })?;
    if checksum_line(&bytes).trim() != expected.trim() {
        return Err(ExperimentError::DamagedFile {
            path: path.to_path_buf(),
            reason: format!(
                "its bytes do not match {} (changed or damaged after it was saved)",
                sum.display()
            ),
        });
    }
    Ok(())
}

/// Why the recorder could not decode a model file, in a few words: Burn appends a paragraph about
/// record formats of version 0.14 to every decoding error, which misleads for a truncated file.
fn decode_failure(reason: &str) -> String {
    match reason.contains("UnexpectedEof") {
        true => "it ends too early".into(),
        false => first_line(reason, 160),
    }
}

/// Shapes of every float parameter of `module`, in visiting order.
fn param_shapes<B: Backend, M: Module<B>>(module: &M) -> Vec<Vec<usize>> {
    struct Shapes(Vec<Vec<usize>>);
    impl<B: Backend> ModuleVisitor<B> for Shapes {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            self.0.push(param.val().dims().to_vec());
        }
    }
    let mut shapes = Shapes(Vec::new());
    module.visit(&mut shapes);
    shapes.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_changed_byte_or_an_appended_one_fails_the_checksum() {
        let dir = std::env::temp_dir().join(format!("model-file-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let model = dir.join("model.mpk");
        let bytes = b"some record bytes".to_vec();
        std::fs::write(&model, &bytes).unwrap();
        std::fs::write(checksum_path(&model), checksum_line(&bytes)).unwrap();
        assert!(verify_checksum(&model).is_ok());
        let mut flipped = bytes.clone();
        flipped[3] ^= 1;
        std::fs::write(&model, &flipped).unwrap();
        assert!(verify_checksum(&model).is_err());
        let mut appended = bytes.clone();
        appended.push(0);
        std::fs::write(&model, &appended).unwrap();
        assert!(verify_checksum(&model).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
