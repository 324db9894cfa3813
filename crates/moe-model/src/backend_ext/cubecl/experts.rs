//! The experts on the grouped GEMM kernels: both projections of the forward, the grouped
//! matmuls and the fused SwiGLU backward of the hand-written expert backward, the activation,
//! and the per-expert weight gradients.

use burn::tensor::{DType, Tensor};
use burn_cubecl::{BoolElement, CubeRuntime, FloatElement, IntElement};
use cubecl::prelude::ComputeClient;
use moe_kernels::activate::{ActivateShape, activate_rows};
use moe_kernels::expert_grad::{
    WeightGradShape, expert_weight_grad as weight_grad_kernel, weight_grad_config,
};
use moe_kernels::grouped_gemm::{
    Epilogue, ExpertGemmConfig, ExpertOperands, ExpertShape, GemmParams, device_config,
    expert_matmul as expert_matmul_kernel, input_projection, output_projection,
};
use moe_kernels::{Activation, KernelError};

use super::launch::{KernelKey, on_kernels, same_float_type, unsupported_dtype, with_float_kernel};
use super::tensors::{Cube, contiguous_float, contiguous_int, float_tensor, plan_on_device};
use crate::backend_ext::{Dispatch, ExpertRows, tensor_ops, unfused_pre_grad};
use crate::feed_forward::activate;

/// Rows per tile of the size rule's tiles for `shape` on `device`.
pub(super) fn tile_rows<R: CubeRuntime>(
    shape: &ExpertShape,
    activation: Activation,
    dtype: DType,
    device: &R::Device,
) -> usize {
    expert_config::<R>(&R::client(device), shape, activation, dtype).tile_rows()
}

/// Both expert projections of the forward.
pub(super) fn experts<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
    x: Tensor<Cube<R, F, I, BT>, 2>,
    dispatch: &Dispatch<Cube<R, F, I, BT>>,
    w_in: Tensor<Cube<R, F, I, BT>, 3>,
    w_out: Tensor<Cube<R, F, I, BT>, 3>,
    activation: Activation,
) -> ExpertRows<Cube<R, F, I, BT>> {
    let primitive = contiguous_float(&x);
    let key = KernelKey {
        dtypes: &[primitive.dtype, w_in.dtype(), w_out.dtype()],
        sizes: &[
            &x.dims()[..],
            &w_in.dims()[..],
            &dispatch.row_of_pair.dims()[..],
        ]
        .concat(),
    };
    on_kernels(
        "experts",
        &primitive.client,
        key,
        || kernel_experts(&x, dispatch, &w_in, &w_out, activation, None),
        || tensor_ops::experts(x.clone(), dispatch, w_in.clone(), w_out.clone(), activation),
    )
}

/// One grouped matmul of the expert backward (rows by their experts' weights, transposed or
/// not, gathered from the tokens or not).
pub(super) fn expert_matmul<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
    a: Tensor<Cube<R, F, I, BT>, 2>,
    gather: bool,
    dispatch: &Dispatch<Cube<R, F, I, BT>>,
    weights: Tensor<Cube<R, F, I, BT>, 3>,
    transposed: bool,
) -> Tensor<Cube<R, F, I, BT>, 2> {
    let primitive = contiguous_float(&a);
    let key = matmul_key(&a, gather, dispatch, &weights, transposed, false);
    on_kernels(
        "expert matmul",
        &primitive.client,
        KernelKey {
            dtypes: &[primitive.dtype, weights.dtype()],
            sizes: &key,
        },
        || kernel_expert_matmul(&a, gather, dispatch, &weights, transposed, None),
        || tensor_ops::expert_matmul(a.clone(), gather, dispatch, weights.clone(), transposed),
    )
}

/// The activation of the pre-activations, expert by expert.
pub(super) fn expert_activate<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
    pre: Tensor<Cube<R, F, I, BT>, 2>,
    dispatch: &Dispatch<Cube<R, F, I, BT>>,
    activation: Activation,
) -> Tensor<Cube<R, F, I, BT>, 2> {
    let [num_rows, columns] = pre.dims();
    let [offsets] = dispatch.expert_offsets.dims();
    let shape = ActivateShape {
        num_rows,
        width: columns / activation.input_columns(1),
        num_experts: offsets - 1,
    };
    let primitive = contiguous_float(&pre);
    let dtype = primitive.dtype;
    let key = KernelKey {
        dtypes: &[dtype],
        sizes: &[num_rows, columns, offsets, activation as usize],
    };
    on_kernels(
        "expert activation",
        &primitive.client,
        key,
        || {
            let offsets = contiguous_int(&dispatch.expert_offsets);
            let hidden = with_float_kernel!(dtype, K => activate_rows::<R, K, I>(
                &primitive.client,
                &primitive.handle,
                &offsets.handle,
                shape,
                activation,
            ), else Err(unsupported_dtype("pre", dtype)))?;
            Ok(float_tensor(
                &primitive,
                hidden,
                [num_rows, shape.width],
                dtype,
            ))
        },
        || activate(pre.clone(), activation),
    )
}

/// The pre-activations' gradient: SwiGLU's backward fused into the grouped GEMM's epilogue; GELU
/// (no fused epilogue) takes the GEMM kernel, then the derivative as tensor ops.
pub(super) fn expert_pre_grad<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
    d_rows: Tensor<Cube<R, F, I, BT>, 2>,
    dispatch: &Dispatch<Cube<R, F, I, BT>>,
    w_out: Tensor<Cube<R, F, I, BT>, 3>,
    pre: Tensor<Cube<R, F, I, BT>, 2>,
    activation: Activation,
) -> Tensor<Cube<R, F, I, BT>, 2> {
    let unfused = || {
        unfused_pre_grad(
            d_rows.clone(),
            dispatch,
            w_out.clone(),
            pre.clone(),
            activation,
        )
    };
    if activation != Activation::SwiGlu {
        return unfused();
    }
    let primitive = contiguous_float(&d_rows);
    let key = matmul_key(&d_rows, false, dispatch, &w_out, true, true);
    on_kernels(
        "expert SwiGLU backward",
        &primitive.client,
        KernelKey {
            dtypes: &[primitive.dtype, w_out.dtype(), pre.dtype()],
            sizes: &key,
        },
        || kernel_expert_matmul(&d_rows, false, dispatch, &w_out, true, Some(&pre)),
        unfused,
    )
}

/// The per-expert weight gradients `a_e^T b_e` over each expert's rows.
pub(super) fn expert_weight_grad<
    R: CubeRuntime,
    F: FloatElement,
    I: IntElement,
    BT: BoolElement,
>(
    a: Tensor<Cube<R, F, I, BT>, 2>,
    gather: bool,
    b: Tensor<Cube<R, F, I, BT>, 2>,
    dispatch: &Dispatch<Cube<R, F, I, BT>>,
) -> Tensor<Cube<R, F, I, BT>, 3> {
    let [_, a_width] = a.dims();
    let [_, b_width] = b.dims();
    let [num_tokens, slots] = dispatch.row_of_pair.dims();
    let [offsets] = dispatch.expert_offsets.dims();
    let shape = WeightGradShape {
        num_tokens,
        slots,
        num_experts: offsets - 1,
        a_width,
        b_width,
    };
    let (a_primitive, b_primitive) = (contiguous_float(&a), contiguous_float(&b));
    let client = &a_primitive.client;
    let dtype = a_primitive.dtype;
    let key = KernelKey {
        dtypes: &[dtype, b_primitive.dtype],
        sizes: &[
            num_tokens,
            slots,
            offsets,
            a_width,
            b_width,
            gather as usize,
        ],
    };
    on_kernels(
        "expert weight gradient",
        client,
        key,
        || {
            same_float_type(("a", dtype), &[("b", b_primitive.dtype)])?;
            let plan = plan_on_device(dispatch);
            let grad = with_float_kernel!(dtype, K => weight_grad_kernel::<R, K, I>(
                client,
                &a_primitive.handle,
                gather,
                &b_primitive.handle,
                &plan,
                shape,
                &weight_grad_config::<R, K>(client, &shape),
            ), else Err(unsupported_dtype("a", dtype)))?;
            let dims = [shape.num_experts, a_width, b_width];
            Ok(float_tensor(&a_primitive, grad, dims, dtype))
        },
        || tensor_ops::expert_weight_grad(a.clone(), gather, b.clone(), dispatch),
    )
}

/// Both expert projections on the grouped GEMM kernels: the experts' rows of a dispatch over
/// `w_in [E, d, input_columns(F)]` and `w_out [E, F, d]`, with the size rule's tiles for
/// `config_shape` (the batch's own shape when `None`; offloading passes the full layer's, since
/// it runs the kernels over its cache slots).
pub(crate) fn kernel_experts<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
    x: &Tensor<Cube<R, F, I, BT>, 2>,
    dispatch: &Dispatch<Cube<R, F, I, BT>>,
    w_in: &Tensor<Cube<R, F, I, BT>, 3>,
    w_out: &Tensor<Cube<R, F, I, BT>, 3>,
    activation: Activation,
    config_shape: Option<&ExpertShape>,
) -> Result<ExpertRows<Cube<R, F, I, BT>>, KernelError> {
    let [num_tokens, d_model] = x.dims();
    let [num_experts, width, _] = w_out.dims();
    let [_, slots] = dispatch.row_of_pair.dims();
    let shape = ExpertShape {
        num_tokens,
        slots,
        num_experts,
        d_model,
        width,
    };
    let input = contiguous_float(x);
    let (w_in_primitive, w_out_primitive) = (contiguous_float(w_in), contiguous_float(w_out));
    let client = &input.client;
    let dtype = input.dtype;
    same_float_type(
        ("x", dtype),
        &[
            ("w_in", w_in_primitive.dtype),
            ("w_out", w_out_primitive.dtype),
        ],
    )?;
    let config = expert_config::<R>(client, config_shape.unwrap_or(&shape), activation, dtype);
    let plan = plan_on_device(dispatch);
    let rows = with_float_kernel!(dtype, K => input_projection::<R, K, I>(
        client,
        &input.handle,
        &w_in_primitive.handle,
        &plan,
        shape,
        &config.input,
    )
    .and_then(|hidden| {
        output_projection::<R, K, I>(
            client,
            &hidden,
            &w_out_primitive.handle,
            &plan,
            shape,
            &config.output,
        )
    }), else Err(unsupported_dtype("x", dtype)))?;
    let dtype = if rows.splits > 1 { DType::F32 } else { dtype };
    let blocks = [rows.splits, shape.num_pairs(), d_model];
    Ok(ExpertRows {
        blocks: float_tensor(&input, rows.rows, blocks, dtype),
    })
}

/// The sizes that pick an expert matmul's kernel: operand shapes, the dispatch's, and the
/// variant (gathered, transposed, fused SwiGLU backward).
fn matmul_key<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
    a: &Tensor<Cube<R, F, I, BT>, 2>,
    gather: bool,
    dispatch: &Dispatch<Cube<R, F, I, BT>>,
    weights: &Tensor<Cube<R, F, I, BT>, 3>,
    transposed: bool,
    fused: bool,
) -> Vec<usize> {
    let variant = [gather as usize, transposed as usize, fused as usize];
    [
        &a.dims()[..],
        &weights.dims()[..],
        &dispatch.row_of_pair.dims()[..],
        &variant[..],
    ]
    .concat()
}

/// [`MoeBackend::moe_expert_matmul`](crate::backend_ext::MoeBackend::moe_expert_matmul) on the
/// kernels; with `pre` (`[P, 2F]`, weights `w_out` transposed), the SwiGLU backward fused into
/// the epilogue: the result is then the pre-activations' gradient, `[P, 2F]`.
fn kernel_expert_matmul<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
    a: &Tensor<Cube<R, F, I, BT>, 2>,
    gather: bool,
    dispatch: &Dispatch<Cube<R, F, I, BT>>,
    weights: &Tensor<Cube<R, F, I, BT>, 3>,
    transposed: bool,
    pre: Option<&Tensor<Cube<R, F, I, BT>, 2>>,
) -> Result<Tensor<Cube<R, F, I, BT>, 2>, KernelError> {
    let [a_rows, depth] = a.dims();
    let [num_experts, rows_dim, cols_dim] = weights.dims();
    let width = if transposed { rows_dim } else { cols_dim };
    let [num_tokens, slots] = dispatch.row_of_pair.dims();
    let shape = ExpertShape {
        num_tokens,
        slots,
        num_experts,
        d_model: depth,
        width,
    };
    let (input, w) = (contiguous_float(a), contiguous_float(weights));
    let pre = pre.map(contiguous_float);
    let client = &input.client;
    let dtype = input.dtype;
    // Every projection of a batch shares the dispatch's tile rows; the size rule gives them
    // from the routed rows alone, whatever the widths.
    let config = expert_config::<R>(client, &shape, Activation::Gelu, dtype);
    let mut params = match (gather, transposed) {
        (true, false) => config.pre_activation(),
        (false, false) => GemmParams {
            split_k: 1,
            ..config.output
        },
        (_, true) => GemmParams {
            gather,
            ..config.transposed()
        },
    };
    if pre.is_some() {
        params.epilogue = Epilogue::SwiGluBackward;
    }
    let columns = width * params.epilogue.output_groups();
    let pre_dtype = pre.as_ref().map(|pre| pre.dtype).unwrap_or(dtype);
    same_float_type(("a", dtype), &[("weights", w.dtype), ("pre", pre_dtype)])?;
    let plan = plan_on_device(dispatch);
    let output = client.empty(shape.num_pairs() * columns * dtype.size());
    let operands = ExpertOperands {
        a: &input.handle,
        a_rows,
        weights: &w.handle,
        pre: pre.as_ref().map(|pre| &pre.handle),
        depth,
        width,
        output: &output,
    };
    with_float_kernel!(dtype, K => expert_matmul_kernel::<R, K, K, I>(
        client, &operands, &plan, shape, &params,
    ), else Err(unsupported_dtype("a", dtype)))?;
    Ok(float_tensor(
        &input,
        output,
        [shape.num_pairs(), columns],
        dtype,
    ))
}

/// The size rule's tiles for `shape` in `dtype` on this device (tensor cores where it has them
/// for `dtype`).
fn expert_config<R: CubeRuntime>(
    client: &ComputeClient<R>,
    shape: &ExpertShape,
    activation: Activation,
    dtype: DType,
) -> ExpertGemmConfig {
    // A dtype no kernel takes gets the f32 (portable) tiles; the experts then fall back anyway.
    with_float_kernel!(dtype, K => device_config::<R, K>(client, shape, activation),
        else device_config::<R, f32>(client, shape, activation))
}
