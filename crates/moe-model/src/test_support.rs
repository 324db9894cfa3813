//! Shared helpers of the unit tests: seeded random inputs and host copies of tensors.

use burn::backend::NdArray;
use burn::tensor::{Int, Tensor, TensorData, backend::Backend};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

/// The CPU backend the model tests run on.
pub type TestBackend = NdArray;

/// A seeded generator: tests are random but reproducible.
pub fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

/// `len` values drawn uniformly from `[-scale, scale)`.
pub fn random_values(rng: &mut StdRng, len: usize, scale: f32) -> Vec<f32> {
    (0..len).map(|_| rng.random_range(-scale..scale)).collect()
}

/// A tensor of `shape` with values drawn uniformly from `[-scale, scale)`.
pub fn random_tensor<B: Backend, const D: usize>(
    rng: &mut StdRng,
    shape: [usize; D],
    scale: f32,
    device: &B::Device,
) -> Tensor<B, D> {
    let values = random_values(rng, shape.iter().product(), scale);
    Tensor::from_data(TensorData::new(values, shape), device)
}

/// Host copy of a float tensor, widened to f64.
pub fn host_f64<B: Backend, const D: usize>(tensor: Tensor<B, D>) -> Vec<f64> {
    tensor.into_data().iter::<f64>().collect()
}

/// Host copy of an integer tensor, widened to i64.
pub fn host_i64<B: Backend, const D: usize>(tensor: Tensor<B, D, Int>) -> Vec<i64> {
    tensor.into_data().iter::<i64>().collect()
}

/// Reference MLP in f64 for one row: `act(x W_in) W_out` with `w_in` `[d, c*F]` and `w_out`
/// `[F, d]`, both row-major.
pub fn feed_forward_f64(
    x: &[f64],
    w_in: &[f64],
    w_out: &[f64],
    width: usize,
    activation: crate::Activation,
) -> Vec<f64> {
    let d = x.len();
    let columns = activation.input_columns(width);
    let projected: Vec<f64> = (0..columns)
        .map(|j| (0..d).map(|i| x[i] * w_in[i * columns + j]).sum())
        .collect();
    let hidden: Vec<f64> = match activation {
        crate::Activation::SwiGlu => (0..width)
            .map(|j| {
                let gate = projected[j];
                gate / (1.0 + (-gate).exp()) * projected[width + j]
            })
            .collect(),
        crate::Activation::Gelu => projected
            .iter()
            .map(|&v| 0.5 * v * (1.0 + erf(v / std::f64::consts::SQRT_2)))
            .collect(),
    };
    (0..d)
        .map(|o| (0..width).map(|j| hidden[j] * w_out[j * d + o]).sum())
        .collect()
}

/// Error function (Abramowitz and Stegun 7.1.26, absolute error below 1.5e-7).
fn erf(x: f64) -> f64 {
    let t = 1.0 / (1.0 + 0.327_591_1 * x.abs());
    let poly = t
        * (0.254_829_592
            + t * (-0.284_496_736
                + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
    (1.0 - poly * (-x * x).exp()).copysign(x)
}
