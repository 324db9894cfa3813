//! The experts of one MoE layer, stored as stacked tensors so kernels can take them as one buffer.

use std::ops::Range;

use burn::module::{Module, Param};
use burn::tensor::{Tensor, backend::Backend};
use moe_kernels::quantized::QuantFormat;

use crate::InvalidValue;
use crate::feed_forward::Activation;
use crate::init::projection;
use crate::precision::{FloatType, in_compute_type};
use crate::quantized_experts::QuantizedExperts;

/// E independent MLPs of hidden width F.
#[derive(Module, Debug)]
pub struct Experts<B: Backend> {
    /// Input projections of all experts. `[E, d, input_columns(F)]`
    pub w_in: Param<Tensor<B, 3>>,
    /// Output projections of all experts. `[E, F, d]`
    pub w_out: Param<Tensor<B, 3>>,
    /// The same weights quantized, when the layer serves from them (`None`: the float weights
    /// run). Constants, not parameters: a quantized layer is for inference.
    pub quantized: Option<QuantizedExperts<B>>,
    #[module(skip)]
    activation: Activation,
    #[module(skip)]
    compute_type: Option<FloatType>,
}

impl<B: Backend> Experts<B> {
    /// `num_experts` experts of hidden `width` over rows of width `d_model`, whose products run
    /// in `compute_type` (`None`: the parameters' type).
    pub fn new(
        num_experts: usize,
        d_model: usize,
        width: usize,
        activation: Activation,
        compute_type: Option<FloatType>,
        device: &B::Device,
    ) -> Self {
        let columns = activation.input_columns(width);
        Self {
            w_in: projection([num_experts, d_model, columns], d_model, device),
            w_out: projection([num_experts, width, d_model], width, device),
            quantized: None,
            activation,
            compute_type,
        }
    }

    /// The experts' nonlinearity.
    pub fn activation(&self) -> Activation {
        self.activation
    }

    /// The float type the experts' products run in, when it is not the parameters'.
    pub fn compute_type(&self) -> Option<FloatType> {
        self.compute_type
    }

    /// `(w_in, w_out)` in the products' type.
    pub fn compute_weights(&self) -> (Tensor<B, 3>, Tensor<B, 3>) {
        (
            in_compute_type(self.w_in.val(), self.compute_type),
            in_compute_type(self.w_out.val(), self.compute_type),
        )
    }

    /// The experts numbered `experts` alone, sharing these weights' values: one rank's shard
    /// under expert parallelism (`crate::expert_parallel`). The shard serves the float weights
    /// (quantized shards are not supported yet).
    pub fn shard(&self, experts: Range<usize>) -> Self {
        Self {
            w_in: Param::from_tensor(self.w_in.val().slice([experts.clone()])),
            w_out: Param::from_tensor(self.w_out.val().slice([experts])),
            activation: self.activation,
            compute_type: self.compute_type,
            quantized: None,
        }
    }

    /// Serves from these experts' weights quantized to `format` from now on (the float weights
    /// are kept: they are the module's parameters).
    pub fn quantize(&mut self, format: QuantFormat) {
        let quantized = QuantizedExperts::quantize(self.w_in.val(), self.w_out.val(), format);
        self.quantized = Some(quantized);
    }

    /// Serves from `quantized` (read from a file) from now on; an error, changing nothing, when
    /// its shapes are not those of the float weights.
    pub fn set_quantized(&mut self, quantized: QuantizedExperts<B>) -> Result<(), InvalidValue> {
        let (w_in, w_out) = (&quantized.w_in.layout, &quantized.w_out.layout);
        let found = [
            [w_in.experts, w_in.depth, w_in.columns],
            [w_out.experts, w_out.depth, w_out.columns],
        ];
        let expected = [self.w_in.dims(), self.w_out.dims()];
        if found != expected {
            return Err(InvalidValue::new(
                "quantized experts",
                format!("{found:?}"),
                format!("must have the layer's shapes {expected:?} (w_in, w_out)"),
            ));
        }
        self.quantized = Some(quantized);
        Ok(())
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
