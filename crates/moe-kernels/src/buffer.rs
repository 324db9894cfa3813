//! Checks on device buffers handed to a launcher.

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
