//! Float types: of a module's parameters, and of a feed-forward's matrix products.
//!
//! Burn creates parameters in the device's default float type, which is fixed by the first
//! backend that touches the device in a process; a run that wants bf16 or f16 parameters next to
//! f32 ones (a benchmark, a precision test) casts them explicitly. Mixed-precision training keeps
//! the parameters in f32 and runs the products in a 16-bit [`FloatType`].

use std::fmt;
use std::str::FromStr;

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Element, FloatDType, Tensor, get_device_settings};
use serde::{Deserialize, Serialize};

/// A float type, from the command line (`--dtype`) and the configs (`compute_type`) down to the
/// kernels: the type of a run's tensors, or the type a feed-forward's matrix products run in when
/// it is not the parameters' own (mixed precision: the parameters, the optimizer, the router and
/// everything outside the products stay in the parameters' type; the inputs and weights are cast
/// for the products, tensor cores on CUDA, and the products' output is cast back; the casts are
/// differentiable, so gradients reach the parameters in their own type).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum FloatType {
    /// 32-bit IEEE floats (every backend).
    #[default]
    F32,
    /// bfloat16: f32's range with 8 bits of mantissa (tensor cores on CUDA).
    Bf16,
    /// IEEE half precision: 11 bits of mantissa, magnitudes up to 65504 (tensor cores on CUDA).
    F16,
}

impl FloatType {
    /// Every float type, in the order the command line lists them.
    pub const ALL: [FloatType; 3] = [FloatType::F32, FloatType::Bf16, FloatType::F16];

    /// The name the command line and the configs use.
    pub fn name(self) -> &'static str {
        match self {
            FloatType::F32 => "f32",
            FloatType::Bf16 => "bf16",
            FloatType::F16 => "f16",
        }
    }

    /// Bytes per value.
    pub fn size(self) -> usize {
        self.dtype().size()
    }

    /// Burn's float type.
    pub fn float_dtype(self) -> FloatDType {
        match self {
            FloatType::F32 => FloatDType::F32,
            FloatType::Bf16 => FloatDType::BF16,
            FloatType::F16 => FloatDType::F16,
        }
    }

    /// Burn's data type.
    pub fn dtype(self) -> DType {
        self.float_dtype().into()
    }
}

impl fmt::Display for FloatType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A name that is not a float type; the message lists the names that are.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown float type {0:?}; expected f32, bf16 or f16")]
pub struct UnknownFloatType(pub String);

impl FromStr for FloatType {
    type Err = UnknownFloatType;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        FloatType::ALL
            .into_iter()
            .find(|t| t.name() == name)
            .ok_or_else(|| UnknownFloatType(name.to_string()))
    }
}

/// `tensor` in the products' type `compute`, or unchanged when `None` (or already that type).
pub fn in_compute_type<B: Backend, const D: usize>(
    tensor: Tensor<B, D>,
    compute: Option<FloatType>,
) -> Tensor<B, D> {
    match compute {
        Some(compute) => in_dtype(tensor, compute.dtype()),
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

/// `module` with its float parameters in the backend's own float type when the device's default
/// is wider. Burn gives every new parameter the device's default type, fixed by the first
/// backend that touched the device in the process, so a `CubeBackend<Cuda, bf16>` model on a
/// device an f32 backend set up first would get f32 parameters quietly (right outputs, no tensor
/// cores, twice the memory). A narrower default is the caller's choice (`--dtype bf16` on an f32
/// backend, through `set_default_dtypes`) and is kept. Every model's `init` ends with this.
pub fn in_backend_float_type<B: Backend, M: Module<B>>(module: M, device: &B::Device) -> M {
    let backend: FloatDType = <B::FloatElem as Element>::dtype().into();
    let default = get_device_settings::<B>(device).float_dtype;
    match DType::from(default).size() > DType::from(backend).size() {
        true => cast_float_params(module, backend),
        false => module,
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
    fn float_type_names_round_trip_and_an_unknown_name_lists_the_known_ones() {
        for float in FloatType::ALL {
            assert_eq!(float.name().parse::<FloatType>(), Ok(float));
            assert_eq!(float.dtype(), DType::from(float.float_dtype()));
            assert_eq!(float.size(), float.dtype().size());
        }
        let error = "fp8".parse::<FloatType>().unwrap_err().to_string();
        assert_eq!(
            error,
            "unknown float type \"fp8\"; expected f32, bf16 or f16"
        );
    }

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
