//! Float type of a module's parameters.
//!
//! Burn creates parameters in the device's default float type, which is fixed by the first
//! backend that touches the device in a process; a run that wants bf16 or f16 parameters next to
//! f32 ones (a benchmark, a precision test) casts them explicitly.

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{FloatDType, Tensor};

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
