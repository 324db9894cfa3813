//! A model takes its backend's float type even when another backend fixed a wider default on
//! the device first (Burn keeps one default per device, for the whole process; hence a test
//! binary of its own). Without the cast in every `init`, these parameters would be f64.

use burn::backend::NdArray;
use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor};
use moe_model::{LmConfig, MoeLayerConfig, RoutingPolicy};

/// The float types of every parameter of a module.
struct FloatTypes(Vec<DType>);

impl<B: Backend> ModuleVisitor<B> for FloatTypes {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        self.0.push(param.val().dtype());
    }
}

fn float_types<B: Backend, M: Module<B>>(module: &M) -> Vec<DType> {
    let mut types = FloatTypes(Vec::new());
    module.visit(&mut types);
    types.0
}

#[test]
fn an_f32_model_on_a_device_an_f64_backend_set_up_first_gets_f32_parameters() {
    let device = Default::default();
    // The f64 backend touches the CPU device first: its default float type is now f64.
    let touched = Tensor::<NdArray<f64>, 1>::ones([3], &device);
    assert_eq!(touched.dtype(), DType::F64);
    assert_eq!(
        Tensor::<NdArray, 1>::ones([3], &device).dtype(),
        DType::F64,
        "the device's default is the first backend's"
    );

    let layer = MoeLayerConfig::new()
        .with_num_experts(4)
        .with_expert_width(8)
        .with_routing(RoutingPolicy::Threshold { tau: 0.5 })
        .init::<NdArray>(16, &device);
    let lm = LmConfig::new().init::<NdArray>(&device);
    for types in [float_types(&layer), float_types(&lm)] {
        assert!(types.len() >= 3, "{types:?}");
        assert!(types.iter().all(|t| *t == DType::F32), "{types:?}");
    }
}
