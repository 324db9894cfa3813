//! The combine on its kernel: each token's output is the weighted sum of its experts' rows.

use burn::tensor::Tensor;
use burn_cubecl::{BoolElement, CubeRuntime, FloatElement, IntElement};
use moe_kernels::combine::{CombineShape, combine as combine_kernel};

use super::launch::{KernelKey, on_kernels, unsupported_dtype, with_float_kernel};
use super::tensors::{Cube, contiguous_float, contiguous_int, float_tensor};
use crate::backend_ext::{Dispatch, ExpertRows, tensor_ops};

/// The layer's output `[T, d]` from the experts' rows and the routing weights.
pub(super) fn combine<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
    rows: ExpertRows<Cube<R, F, I, BT>>,
    weights: Tensor<Cube<R, F, I, BT>, 2>,
    dispatch: &Dispatch<Cube<R, F, I, BT>>,
) -> Tensor<Cube<R, F, I, BT>, 2> {
    let [splits, num_rows, d_model] = rows.blocks.dims();
    let [num_tokens, slots] = weights.dims();
    let blocks = contiguous_float(&rows.blocks);
    let row_weights = contiguous_float(&weights);
    let shape = CombineShape {
        num_tokens,
        slots,
        num_rows,
        d_model,
        splits,
    };
    // The rows may be in another type than the weights and output: f32 split-K sums, or the
    // products' type under mixed precision.
    let dtype = row_weights.dtype;
    let key = KernelKey {
        dtypes: &[dtype, blocks.dtype],
        sizes: &[splits, num_rows, d_model, num_tokens, slots],
    };
    on_kernels(
        "combine",
        &blocks.client,
        key,
        || {
            let row_of_pair = contiguous_int(&dispatch.row_of_pair);
            let output = with_float_kernel!(dtype, K => with_float_kernel!(blocks.dtype, E =>
                combine_kernel::<R, K, E, I>(
                    &blocks.client,
                    &blocks.handle,
                    &row_weights.handle,
                    &row_of_pair.handle,
                    shape,
                ), else Err(unsupported_dtype("expert rows", blocks.dtype))
            ), else Err(unsupported_dtype("routing weights", dtype)))?;
            Ok(float_tensor(&blocks, output, [num_tokens, d_model], dtype))
        },
        || tensor_ops::combine(rows.clone(), weights.clone(), dispatch),
    )
}
