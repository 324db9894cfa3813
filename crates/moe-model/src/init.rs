//! Weight initialisation shared by the modules.

use burn::module::{Initializer, Param};
use burn::tensor::{Shape, Tensor, backend::Backend};

/// A projection weight drawn from N(0, 1/fan_in): keeps activations at unit scale.
pub fn projection<B: Backend, const D: usize>(
    shape: impl Into<Shape>,
    fan_in: usize,
    device: &B::Device,
) -> Param<Tensor<B, D>> {
    let std = 1.0 / (fan_in as f64).sqrt();
    Initializer::Normal { mean: 0.0, std }.init(shape, device)
}
