//! [`OffloadBackend`] for CubeCL backends: the grouped GEMMs of `backend_ext/cubecl.rs` on the
//! slot tensors, with the tile configuration the size rule picks for the full layer.
//!
//! The size rule reads the number of experts (rows per touched expert, split-K): configured
//! for the slot count, a decode batch could split its depth differently from the resident
//! layer and round differently. The configuration is therefore chosen for `full` and the
//! kernels run over the slots. Anything a kernel does not support falls back like the layer
//! does (`MoeBackend::moe_experts`, which then has no configuration to keep).

use burn::tensor::{DType, Shape, Tensor, TensorPrimitive, bf16, f16};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};
use moe_kernels::dispatch::DispatchOnDevice;
use moe_kernels::grouped_gemm::{ExpertShape, device_config, input_projection, output_projection};
use moe_kernels::{Activation, KernelError};

use super::layer::OffloadBackend;
use crate::backend_ext::{Dispatch, ExpertRows, MoeBackend};

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
        let [num_tokens, d_model] = x.dims();
        let [num_slots, width, _] = w_out.dims();
        let [_, slots] = dispatch.row_of_pair.dims();
        let shape = ExpertShape {
            num_tokens,
            slots,
            num_experts: num_slots,
            d_model,
            width,
        };
        let input = contiguous(x.clone().into_primitive().tensor());
        let w_in_primitive = contiguous(w_in.clone().into_primitive().tensor());
        let w_out_primitive = contiguous(w_out.clone().into_primitive().tensor());
        let client = &input.client;
        let dtype = input.dtype;
        let plan = plan_on_device(dispatch);
        macro_rules! projections {
            ($K:ty) => {{
                let config = device_config::<R, $K>(client, full, activation);
                input_projection::<R, $K, I>(
                    client,
                    &input.handle,
                    &w_in_primitive.handle,
                    &plan,
                    shape,
                    &config.input,
                )
                .and_then(|hidden| {
                    output_projection::<R, $K, I>(
                        client,
                        &hidden,
                        &w_out_primitive.handle,
                        &plan,
                        shape,
                        &config.output,
                    )
                })
            }};
        }
        let projections = if w_in_primitive.dtype != dtype || w_out_primitive.dtype != dtype {
            Err(KernelError::Unsupported("mixed float types".into()))
        } else {
            match dtype {
                DType::F32 => projections!(f32),
                DType::F16 => projections!(f16),
                DType::BF16 => projections!(bf16),
                other => Err(KernelError::Unsupported(format!("{other:?}"))),
            }
        };
        match projections {
            Ok(rows) => {
                let out_dtype = if rows.splits > 1 { DType::F32 } else { dtype };
                let shape = Shape::from([rows.splits, shape.num_pairs(), d_model]);
                let primitive = CubeTensor::new_contiguous(
                    input.client.clone(),
                    input.device.clone(),
                    shape,
                    rows.rows,
                    out_dtype,
                );
                ExpertRows {
                    blocks: Tensor::from_primitive(TensorPrimitive::Float(primitive)),
                }
            }
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

fn contiguous<R: CubeRuntime>(tensor: CubeTensor<R>) -> CubeTensor<R> {
    into_contiguous(tensor)
}

/// The dispatch's tensors as the kernels' device plan (ints in the kernels' type `I`).
fn plan_on_device<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
    dispatch: &Dispatch<Cube<R, F, I, BT>>,
) -> DispatchOnDevice {
    let int = |t: &Tensor<Cube<R, F, I, BT>, 1, burn::tensor::Int>| {
        into_contiguous(t.clone().cast(I::dtype()).into_primitive()).handle
    };
    let [num_tokens, slots] = dispatch.row_of_pair.dims();
    let [num_offsets] = dispatch.expert_offsets.dims();
    DispatchOnDevice {
        expert_offsets: int(&dispatch.expert_offsets),
        routed_pairs: int(&dispatch.routed_pairs),
        row_of_pair: into_contiguous(
            dispatch
                .row_of_pair
                .clone()
                .cast(I::dtype())
                .into_primitive(),
        )
        .handle,
        tiles: into_contiguous(dispatch.tiles.clone().cast(I::dtype()).into_primitive()).handle,
        num_tiles: int(&dispatch.num_tiles),
        num_pairs: num_tokens * slots,
        num_experts: num_offsets - 1,
        tile_rows: dispatch.tile_rows,
    }
}
