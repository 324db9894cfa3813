//! Writing a file so that a failed write never leaves it half written: the text goes to a
//! temporary file beside it, which is then renamed over it (the earlier file survives a failure).

use std::path::Path;

use crate::error::ExperimentError;

/// Writes `text` to `path` through a temporary file in the same directory (created if missing).
pub fn write_atomically(path: &Path, text: &str) -> Result<(), ExperimentError> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(ExperimentError::io(parent))?;
    }
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(format!(".tmp-{}", std::process::id()));
    let temporary = Path::new(&temporary);
    std::fs::write(temporary, text).map_err(ExperimentError::io(temporary))?;
    std::fs::rename(temporary, path).map_err(|e| {
        let _ = std::fs::remove_file(temporary);
        ExperimentError::io(path)(e)
    })
}
