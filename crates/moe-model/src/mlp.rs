//! The dense MLP baseline: what every token would cost without experts.

use burn::config::Config;
use burn::module::{Module, Param};
use burn::tensor::{Tensor, backend::Backend};

use crate::InvalidValue;
use crate::feed_forward::{Activation, feed_forward};
use crate::init::projection;
use crate::precision::{FloatType, in_backend_float_type, in_compute_type};

/// Configuration of [`DenseMlp`]; the model width `d` is given by the host model at `init`.
#[derive(Config, Debug)]
pub struct DenseMlpConfig {
    /// Hidden width F.
    #[config(default = 256)]
    pub width: usize,
    /// Nonlinearity.
    #[config(default = "Activation::SwiGlu")]
    pub activation: Activation,
    /// Float type of the matrix products when it is not the parameters' (mixed precision, see
    /// [`FloatType`]); `None`: the parameters' own type.
    #[config(default = "None")]
    pub compute_type: Option<FloatType>,
}

impl DenseMlpConfig {
    /// Checks the sizes.
    pub fn validate(&self) -> Result<(), InvalidValue> {
        if self.width == 0 {
            return Err(InvalidValue::new("width", 0, "must be >= 1"));
        }
        Ok(())
    }

    /// A freshly initialised MLP over rows of width `d_model`.
    pub fn init<B: Backend>(&self, d_model: usize, device: &B::Device) -> DenseMlp<B> {
        let columns = self.activation.input_columns(self.width);
        let mlp = DenseMlp {
            w_in: projection([d_model, columns], d_model, device),
            w_out: projection([self.width, d_model], self.width, device),
            activation: self.activation,
            compute_type: self.compute_type,
        };
        in_backend_float_type(mlp, device)
    }
}

/// A two-layer MLP applied to every token (no routing).
#[derive(Module, Debug)]
pub struct DenseMlp<B: Backend> {
    /// Input projection. `[d, input_columns(F)]`
    pub w_in: Param<Tensor<B, 2>>,
    /// Output projection. `[F, d]`
    pub w_out: Param<Tensor<B, 2>>,
    #[module(skip)]
    activation: Activation,
    #[module(skip)]
    compute_type: Option<FloatType>,
}

impl<B: Backend> DenseMlp<B> {
    /// # Shapes
    /// - `x`: `[T, d]` -> `[T, d]`
    pub fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let (dtype, compute) = (x.dtype(), self.compute_type);
        feed_forward(
            in_compute_type(x, compute),
            in_compute_type(self.w_in.val(), compute),
            in_compute_type(self.w_out.val(), compute),
            self.activation,
        )
        .cast(dtype)
    }

    /// Parameters (and multiply-adds) one token uses.
    pub fn num_params(&self) -> usize {
        self.w_in.val().shape().num_elements() + self.w_out.val().shape().num_elements()
    }
}
