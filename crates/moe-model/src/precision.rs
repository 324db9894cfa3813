//! Float types: of a module's parameters, and of a feed-forward's matrix products.
//!
//! Burn creates parameters in the device's default float type, which is fixed by the first
//! backend that touches the device in a process; a run that wants bf16 or f16 parameters next to
//! f32 ones (a benchmark, a precision test) casts them explicitly. Mixed-precision training keeps
//! the parameters in f32 and runs the products in a 16-bit [`ComputeType`].

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{DType, FloatDType, Tensor};
use serde::{Deserialize, Serialize};

/// The float type a feed-forward's matrix products run in when it is not the parameters' own
/// (`compute_type = "bf16"` in a config): mixed precision. The parameters, the optimizer, the
/// router and everything outside the products stay in the backend's type (f32 master weights);
/// the inputs and weights are cast for the products (tensor cores on CUDA) and the products'
/// output is cast back. The casts are differentiable, so gradients reach the parameters in their
/// own type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ComputeType {
    /// bfloat16: f32's range with 8 bits of mantissa.
    Bf16,
    /// IEEE half precision: 11 bits of mantissa, magnitudes up to 65504.
    F16,
}

impl ComputeType {
    /// Burn's float type.
    pub fn dtype(self) -> FloatDType {
        match self {
            ComputeType::Bf16 => FloatDType::BF16,
            ComputeType::F16 => FloatDType::F16,
        }
    }

    /// The name configs use.
    pub fn name(self) -> &'static str {
        match self {
            ComputeType::Bf16 => "bf16",
            ComputeType::F16 => "f16",
        }
    }
}

/// `tensor` in the products' type `compute`, or unchanged when `None` (or already that type).
pub fn in_compute_type<B: Backend, const D: usize>(
    tensor: Tensor<B, D>,
    compute: Option<ComputeType>,
) -> Tensor<B, D> {
    match compute {
        Some(compute) => tensor.cast(compute.dtype()),
        None => tensor,
    }
}

/// `tensor` in the float `dtype`; unchanged (no cast, so no autodiff node) when it already is.
pub fn in_dtype<B: Backend, const D: usize>(tensor: Tensor<B, D>, dtype: DType) -> Tensor<B, D> {
    match tensor.dtype() == dtype {
        true => tensor,
        false => tensor.cast(dtype),
    }
}

/// `module` with every float parameter cast to `dtype` (int and bool parameters unchanged).
pub fn cast_float_params<B: Backend, M: Module<B>>(module: M, dtype: FloatDType) -> M {
    module.map(&mut CastFloats { dtype })
}

struct CastFloats {
    dtype: FloatDType,
}

impl<B: Backend> ModuleMapper<B> for CastFloats {
    /// Casts at initialisation when the parameter is still lazy, so the default-type copy of a
    /// large weight never coexists with every other weight.
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let dtype = self.dtype;
        param.init_mapper(move |tensor| tensor.cast(dtype))
    }
}

#[cfg(test)]
mod tests {
    use burn::backend::NdArray;
    use burn::tensor::DType;

    use super::*;
    use crate::MoeLayerConfig;

    #[test]
    fn every_float_parameter_takes_the_type_and_keeps_its_values() {
        let device = Default::default();
        let layer = MoeLayerConfig::new()
            .with_num_experts(4)
            .with_expert_width(8)
            .init::<NdArray>(16, &device);
        let before = layer
            .experts
            .w_in
            .val()
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        // NdArray has no 16-bit floats; f64 exercises the same mapping.
        let layer = cast_float_params(layer, FloatDType::F64);
        assert_eq!(layer.router.gate.weight.val().dtype(), DType::F64);
        assert_eq!(layer.experts.w_out.val().dtype(), DType::F64);
        let after = layer
            .experts
            .w_in
            .val()
            .into_data()
            .to_vec::<f64>()
            .unwrap();
        assert_eq!(
            after,
            before.iter().map(|&v| f64::from(v)).collect::<Vec<_>>()
        );
    }
}
