//! Checks a launcher makes on its sizes and on the device buffers it is handed.

use cubecl::prelude::*;
use cubecl::server::Handle;

use crate::{InvalidValue, KernelError};

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

/// Fails (unsupported on this device) unless a launch of `grid` cubes (x, y, z) fits the
/// device's grid.
pub fn expect_grid<R: Runtime>(
    client: &ComputeClient<R>,
    grid: [usize; 3],
) -> Result<(), KernelError> {
    let (max_x, max_y, max_z) = client.properties().hardware.max_cube_count;
    let max = [max_x, max_y, max_z].map(|m| m as usize);
    if grid.iter().zip(max).any(|(&cubes, max)| cubes > max) {
        return Err(KernelError::Unsupported(format!(
            "{grid:?} cubes exceed the device's grid {max:?}"
        )));
    }
    Ok(())
}
