//! [`OffloadBackend`] for CubeCL backends: the grouped GEMMs of `backend_ext/cubecl.rs` on the
//! slot tensors, with the tile configuration the size rule picks for the full layer.
//!
//! The size rule reads the number of experts (rows per touched expert, split-K): configured
//! for the slot count, a decode batch could split its depth differently from the resident
//! layer and round differently. The configuration is therefore chosen for `full` and the
//! kernels run over the slots. Anything a kernel does not support falls back like the layer
//! does (`MoeBackend::moe_experts`, which then has no configuration to keep).

use burn::tensor::Tensor;
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};
use moe_kernels::grouped_gemm::ExpertShape;
use moe_kernels::{Activation, KernelError};

use super::layer::OffloadBackend;
use crate::backend_ext::{Dispatch, ExpertRows, MoeBackend, kernel_experts};

type Cube<R, F, I, BT> = CubeBackend<R, F, I, BT>;

impl<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement> OffloadBackend
    for Cube<R, F, I, BT>
{
    fn offload_experts(
        x: Tensor<Self, 2>,
        dispatch: &Dispatch<Self>,
        w_in: Tensor<Self, 3>,
        w_out: Tensor<Self, 3>,
        activation: Activation,
        full: &ExpertShape,
    ) -> ExpertRows<Self> {
        match kernel_experts(&x, dispatch, &w_in, &w_out, activation, Some(full)) {
            Ok(rows) => rows,
            // The layer's own path notes the fallback (once) and runs tensor ops.
            Err(KernelError::Unsupported(_)) => {
                Self::moe_experts(x, dispatch, w_in, w_out, activation)
            }
            Err(KernelError::Invalid(error)) => {
                panic!("offloaded experts got invalid input: {error}")
            }
        }
    }
}
