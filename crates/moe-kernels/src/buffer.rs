//! Checks a launcher makes on its sizes and on the device buffers it is handed.

use cubecl::server::Handle;

use crate::InvalidValue;

/// Fails unless `handle` holds at least `elements` values of `elem_size` bytes.
pub fn expect_len(
    handle: &Handle,
    name: &str,
    elements: usize,
    elem_size: usize,
) -> Result<(), InvalidValue> {
    let bytes = handle.size_in_used() as usize;
    if bytes < elements * elem_size {
        return Err(InvalidValue::new(
            format!("{name} buffer"),
            format!("{} elements", bytes / elem_size),
            format!("must hold at least {elements} elements"),
        ));
    }
    Ok(())
}

/// Fails on the first of `sizes` (name, value) that is zero.
pub fn expect_positive(sizes: &[(&str, usize)]) -> Result<(), InvalidValue> {
    match sizes.iter().find(|(_, value)| *value == 0) {
        Some((name, _)) => Err(InvalidValue::new(*name, 0, "must be >= 1")),
        None => Ok(()),
    }
}
