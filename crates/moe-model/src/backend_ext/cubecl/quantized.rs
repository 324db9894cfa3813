//! The experts from quantized weights on the weight-only kernel: the bytes dequantized in its
//! load stage, f32 products, one block of rows in the input's type.

use burn::tensor::{DType, Tensor};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{BoolElement, CubeRuntime, FloatElement, IntElement};
use moe_kernels::grouped_gemm::ExpertShape;
use moe_kernels::quantized::{
    QuantizedOnDevice, quantized_input_projection, quantized_output_projection,
};
use moe_kernels::{Activation, KernelError};

use super::launch::{KernelKey, on_kernels, unsupported_dtype, with_float_kernel};
use super::tensors::{Cube, contiguous_float, float_tensor, plan_on_device};
use crate::backend_ext::{Dispatch, ExpertRows, dequantized_experts};
use crate::quantized_experts::{QuantizedExperts, QuantizedWeights};

/// Both expert projections from `weights`, dequantizing on the host where the kernel cannot
/// run.
pub(super) fn quantized_experts<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
    x: Tensor<Cube<R, F, I, BT>, 2>,
    dispatch: &Dispatch<Cube<R, F, I, BT>>,
    weights: &QuantizedExperts<Cube<R, F, I, BT>>,
    activation: Activation,
) -> ExpertRows<Cube<R, F, I, BT>> {
    let primitive = contiguous_float(&x);
    let (w_in, w_out) = (weights.w_in.layout, weights.w_out.layout);
    let key = KernelKey {
        dtypes: &[primitive.dtype],
        sizes: &[
            &x.dims()[..],
            &dispatch.row_of_pair.dims()[..],
            &[
                w_in.experts,
                w_in.depth,
                w_in.columns,
                w_out.depth,
                w_out.columns,
            ],
            &[activation as usize],
        ]
        .concat(),
    };
    on_kernels(
        "quantized experts",
        &primitive.client,
        key,
        || kernel_quantized_experts(&x, dispatch, weights, activation),
        || dequantized_experts(x.clone(), dispatch, weights, activation),
    )
}

/// Both projections on the weight-only quantized kernel, on the dispatch's tiles.
fn kernel_quantized_experts<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
    x: &Tensor<Cube<R, F, I, BT>, 2>,
    dispatch: &Dispatch<Cube<R, F, I, BT>>,
    weights: &QuantizedExperts<Cube<R, F, I, BT>>,
    activation: Activation,
) -> Result<ExpertRows<Cube<R, F, I, BT>>, KernelError> {
    let [num_tokens, d_model] = x.dims();
    let [_, slots] = dispatch.row_of_pair.dims();
    let layout = weights.w_out.layout;
    let shape = ExpertShape {
        num_tokens,
        slots,
        num_experts: layout.experts,
        d_model,
        width: layout.depth,
    };
    let input = contiguous_float(x);
    let (client, dtype) = (&input.client, input.dtype);
    let (in_packed, in_scales) = quantized_buffers(&weights.w_in);
    let (out_packed, out_scales) = quantized_buffers(&weights.w_out);
    let w_in = QuantizedOnDevice {
        packed: &in_packed.handle,
        scales: &in_scales.handle,
        layout: weights.w_in.layout,
    };
    let w_out = QuantizedOnDevice {
        packed: &out_packed.handle,
        scales: &out_scales.handle,
        layout,
    };
    let plan = plan_on_device(dispatch);
    let rows = with_float_kernel!(dtype, K => quantized_input_projection::<R, K, I>(
        client,
        &input.handle,
        w_in,
        &plan,
        shape,
        activation,
    )
    .and_then(|hidden| {
        quantized_output_projection::<R, K, I>(client, &hidden, w_out, &plan, shape)
    }), else Err(unsupported_dtype("x", dtype)))?;
    Ok(ExpertRows {
        blocks: float_tensor(&input, rows, [1, shape.num_pairs(), d_model], dtype),
    })
}

/// The contiguous primitives of one projection's quantized weights: the packed bytes as i32
/// words, the scales in f32 (what the kernel reads, whatever the backend's default types).
fn quantized_buffers<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
    weights: &QuantizedWeights<Cube<R, F, I, BT>>,
) -> (CubeTensor<R>, CubeTensor<R>) {
    let packed = weights.packed.clone().cast(DType::I32).into_primitive();
    let scales = weights.scales.clone().cast(DType::F32);
    (into_contiguous(packed), contiguous_float(&scales))
}
