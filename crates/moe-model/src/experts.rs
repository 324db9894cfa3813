//! The experts of one MoE layer, stored as stacked tensors so kernels can take them as one buffer.

use burn::module::{Module, Param};
use burn::tensor::{Tensor, backend::Backend};

use crate::feed_forward::Activation;
use crate::init::projection;

/// E independent MLPs of hidden width F.
#[derive(Module, Debug)]
pub struct Experts<B: Backend> {
    /// Input projections of all experts. `[E, d, input_columns(F)]`
    pub w_in: Param<Tensor<B, 3>>,
    /// Output projections of all experts. `[E, F, d]`
    pub w_out: Param<Tensor<B, 3>>,
    #[module(skip)]
    activation: Activation,
}

impl<B: Backend> Experts<B> {
    /// `num_experts` experts of hidden `width` over rows of width `d_model`.
    pub fn new(
        num_experts: usize,
        d_model: usize,
        width: usize,
        activation: Activation,
        device: &B::Device,
    ) -> Self {
        let columns = activation.input_columns(width);
        Self {
            w_in: projection([num_experts, d_model, columns], d_model, device),
            w_out: projection([num_experts, width, d_model], width, device),
            activation,
        }
    }

    /// The experts' nonlinearity.
    pub fn activation(&self) -> Activation {
        self.activation
    }

    /// Number of experts E.
    pub fn num_experts(&self) -> usize {
        self.w_in.val().dims()[0]
    }

    /// Parameters of one expert.
    pub fn params_per_expert(&self) -> usize {
        (self.w_in.val().shape().num_elements() + self.w_out.val().shape().num_elements())
            / self.num_experts()
    }
}
