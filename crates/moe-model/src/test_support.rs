//! Shared helpers of the unit tests: seeded random inputs and host copies of tensors.

use burn::backend::NdArray;
use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::{DType, Int, Tensor, TensorData, backend::Backend};
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

/// `module` with every randomly initialised float parameter drawn again from `seed`, uniformly
/// within its largest magnitude (the bound of Burn's uniform initialisers); constant parameters
/// (norm scales and offsets) unchanged. Burn's initialisers draw from one process-wide generator
/// seeded by the OS, so a test running beside others cannot reproduce their values.
pub fn reseeded<B: Backend, M: Module<B>>(module: M, seed: u64) -> M {
    module.map(&mut Reseed { rng: rng(seed) })
}

struct Reseed {
    rng: StdRng,
}

impl<B: Backend> ModuleMapper<B> for Reseed {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        let values = host_f64(tensor.clone());
        let (low, high) = values
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), &v| {
                (l.min(v), h.max(v))
            });
        if low == high {
            return Param::from_mapped_value(id, tensor, mapper);
        }
        let bound = low.abs().max(high.abs()) as f32;
        let shape: [usize; D] = tensor.shape().dims();
        let redrawn = random_tensor::<B, D>(&mut self.rng, shape, bound, &tensor.device());
        Param::from_mapped_value(
            id,
            redrawn.set_require_grad(tensor.is_require_grad()),
            mapper,
        )
    }
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

/// A tensor of `shape` holding `values` in `dtype`, on the default device.
pub fn float_tensor<B: Backend, const D: usize>(
    values: &[f32],
    shape: [usize; D],
    dtype: DType,
) -> Tensor<B, D> {
    float_tensor_on(values, shape, dtype, &Default::default())
}

/// A tensor of `shape` holding `values` in `dtype`, on `device`. Created in `dtype` directly:
/// the first backend to use a device fixes its default float type for the whole process, and
/// tests of 16-bit backends share the process with f32 ones.
pub fn float_tensor_on<B: Backend, const D: usize>(
    values: &[f32],
    shape: [usize; D],
    dtype: DType,
    device: &B::Device,
) -> Tensor<B, D> {
    Tensor::from_data(TensorData::new(values.to_vec(), shape), (device, dtype))
}

/// ||got - want|| / ||want||.
pub fn relative_error(got: &[f64], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len());
    let diff: f64 = got.iter().zip(want).map(|(g, w)| (g - w).powi(2)).sum();
    let norm: f64 = want.iter().map(|w| w * w).sum();
    (diff / norm.max(1e-300)).sqrt()
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
    let hidden = activation.hidden_f64(&projected, width);
    (0..d)
        .map(|o| (0..width).map(|j| hidden[j] * w_out[j * d + o]).sum())
        .collect()
}
