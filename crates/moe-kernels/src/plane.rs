//! Plane (warp) operations where the device has them: kernels take a comptime flag and keep a
//! portable shared-memory path for the others (wgpu on a CPU, which CI runs).

use cubecl::ir::features::Plane;
use cubecl::prelude::*;

/// Units per plane that the plane paths require (one bit of a ballot word per unit; a team of up
/// to this many units within one plane).
pub const PLANE_UNITS: usize = 32;

/// Whether the device's planes have exactly [`PLANE_UNITS`] units and support plane operations
/// (CUDA; not wgpu on a CPU).
pub fn has_planes_of_32<R: Runtime>(client: &ComputeClient<R>) -> bool {
    let properties = client.properties();
    let hardware = &properties.hardware;
    properties.features.plane.contains(Plane::Ops)
        && hardware.plane_size_min == PLANE_UNITS as u32
        && hardware.plane_size_max == PLANE_UNITS as u32
}
