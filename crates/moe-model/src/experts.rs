//! The experts of one MoE layer, stored as stacked tensors so kernels can take them as one buffer.

use burn::module::{Module, Param};
use burn::tensor::{Tensor, backend::Backend};

use crate::feed_forward::{Activation, feed_forward};
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

    /// Runs expert `e` on rows `expert_offsets[e]..expert_offsets[e + 1]` of `rows`, for every
    /// expert with rows; empty experts cost nothing.
    ///
    /// # Shapes
    /// - `rows`: `[S, d]` in expert-contiguous order, `expert_offsets`: `[E + 1]`
    /// - returns `[S, d]`
    pub fn forward_grouped(&self, rows: Tensor<B, 2>, expert_offsets: &[usize]) -> Tensor<B, 2> {
        let outputs: Vec<Tensor<B, 2>> = expert_offsets
            .windows(2)
            .enumerate()
            .filter(|(_, range)| range[1] > range[0])
            .map(|(expert, range)| {
                let expert_rows = rows.clone().slice([range[0]..range[1]]); // [n_e, d]
                let w_in = self.w_in.val().slice([expert..expert + 1]).squeeze_dim(0); // [d, c*F]
                let w_out = self.w_out.val().slice([expert..expert + 1]).squeeze_dim(0); // [F, d]
                feed_forward(expert_rows, w_in, w_out, self.activation)
            })
            .collect();
        Tensor::cat(outputs, 0)
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
