//! `MoeBackend` for CubeCL backends (CUDA, wgpu): the `moe-kernels` route, dispatch, grouped
//! GEMMs and combine, with no host round trip between them.
//!
//! The kernels run in the element type of the tensors they are given (f32, f16 or bf16), not in
//! the backend's default float type: Burn keeps default dtypes per device, so a tensor on a
//! `CubeBackend<R, bf16>` can hold f32 values when another backend set up the device first.
//!
//! A kernel that reports an input it does not support (e.g. more slots than the route kernel
//! keeps in registers) hands the operation to the tensor ops, and the fallback is printed once
//! (`fallback.rs`). An invalid input means the layer built wrong arguments: that is a bug, and it
//! panics with the kernel's message rather than hiding behind the slow path.

use burn::tensor::{DType, Int, Shape, Tensor, TensorPrimitive, bf16, f16};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};
use cubecl::server::Handle;
use moe_kernels::activate::{ActivateShape, activate_rows};
use moe_kernels::combine::{CombineShape, combine};
use moe_kernels::dispatch::reference::max_tiles;
use moe_kernels::dispatch::{DispatchOnDevice, dispatch};
use moe_kernels::expert_grad::{WeightGradShape, expert_weight_grad, weight_grad_config};
use moe_kernels::grouped_gemm::{
    Epilogue, ExpertGemmConfig, ExpertOperands, ExpertShape, GemmParams, device_config,
    expert_matmul, input_projection, output_projection,
};
use moe_kernels::quantized::{
    QuantizedOnDevice, quantized_input_projection, quantized_output_projection,
};
use moe_kernels::route::route;
use moe_kernels::router_logits::{DECODE_TOKENS, GateShape, router_logits};
use moe_kernels::router_train::{RouterShape, router_loss, router_loss_grad, routing_weights_grad};
use moe_kernels::{Activation, KernelError, RoutingPolicy};

use super::fallback::note_fallback;
use super::{
    Dispatch, ExpertRows, LossWeights, MoeBackend, Routing, dequantized_experts, tensor_ops,
    unfused_pre_grad,
};
use crate::feed_forward::activate;
use crate::quantized_experts::{QuantizedExperts, QuantizedWeights};

type Cube<R, F, I, BT> = CubeBackend<R, F, I, BT>;

/// Evaluates `$body` with the type `$K` set to the kernel element of the float `$dtype` (f32,
/// f16, bf16), or `$other` for a dtype the kernels do not take.
macro_rules! with_float_kernel {
    ($dtype:expr, $K:ident => $body:expr, else $other:expr) => {
        match $dtype {
            DType::F32 => {
                type $K = f32;
                $body
            }
            DType::F16 => {
                type $K = f16;
                $body
            }
            DType::BF16 => {
                type $K = bf16;
                $body
            }
            _ => $other,
        }
    };
}

impl<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement> MoeBackend
    for Cube<R, F, I, BT>
{
    const ROUTING_KERNELS: bool = true;

    /// The decode kernel for up to [`DECODE_TOKENS`] tokens; Burn's matmul (tuned GEMM tiles)
    /// for larger batches, where each weight is reused across tokens.
    fn moe_router_logits(x: Tensor<Self, 2>, weight: Tensor<Self, 2>) -> Tensor<Self, 2> {
        let [num_tokens, d_model] = x.dims();
        let [_, num_experts] = weight.dims();
        let dtype = x.dtype();
        if num_tokens > DECODE_TOKENS {
            return x.matmul(weight);
        }
        let (input, gate) = (contiguous_float(&x), contiguous_float(&weight));
        let shape = GateShape {
            num_tokens,
            d_model,
            num_experts,
        };
        let logits = same_float_type(("x", dtype), &[("gate", gate.dtype)]).and_then(|()| {
            with_float_kernel!(dtype, K => router_logits::<R, K>(
                &input.client,
                &input.handle,
                &gate.handle,
                shape,
            ), else Err(unsupported_dtype("router logits", dtype)))
        });
        match logits {
            Ok(logits) => float_tensor(&input, logits, [num_tokens, num_experts], dtype),
            Err(error) => {
                fall_back("router logits", error);
                x.matmul(weight)
            }
        }
    }

    fn moe_route(logits: Tensor<Self, 2>, policy: &RoutingPolicy) -> Routing<Self> {
        let [num_tokens, num_experts] = logits.dims();
        let input = contiguous_float(&logits);
        let routed = with_float_kernel!(input.dtype, K => route::<R, K, I>(
            &input.client,
            &input.handle,
            num_tokens,
            num_experts,
            policy,
        ), else Err(unsupported_dtype("logits", input.dtype)));
        let routed = match routed {
            Ok(routed) => routed,
            Err(error) => {
                fall_back("route", error);
                return tensor_ops::route(logits, policy);
            }
        };
        let slots = routed.slots;
        Routing {
            expert_ids: int_tensor(&input, routed.expert_ids, [num_tokens, slots]),
            weights: float_tensor(&input, routed.weights, [num_tokens, slots], input.dtype),
            token_k: int_tensor(&input, routed.token_k, [num_tokens]),
            logits,
        }
    }

    fn moe_routing_weights_grad(
        weights: Tensor<Self, 2>,
        expert_ids: Tensor<Self, 2, Int>,
        d_weights: Tensor<Self, 2>,
        num_experts: usize,
    ) -> Tensor<Self, 2> {
        let [num_tokens, slots] = weights.dims();
        let shape = RouterShape {
            num_tokens,
            num_experts,
        };
        let dtype = weights.dtype();
        let (routed, ids) = (contiguous_float(&weights), contiguous_int(&expert_ids));
        let grad = contiguous_float(&d_weights.clone().cast(dtype));
        let d_logits = with_float_kernel!(dtype, K => routing_weights_grad::<R, K, I>(
            &routed.client,
            &routed.handle,
            &ids.handle,
            &grad.handle,
            shape,
            slots,
        ), else Err(unsupported_dtype("routing weights", dtype)));
        match d_logits {
            Ok(d_logits) => float_tensor(&routed, d_logits, [num_tokens, num_experts], dtype),
            Err(error) => {
                fall_back("routing weights' gradient", error);
                tensor_ops::routing_weights_grad(weights, expert_ids, d_weights, num_experts)
            }
        }
    }

    fn moe_router_loss(
        logits: Tensor<Self, 2>,
        expert_counts: Tensor<Self, 1, Int>,
        weights: LossWeights,
    ) -> Tensor<Self, 1> {
        let shape = router_shape(&logits);
        let (input, counts) = (contiguous_float(&logits), contiguous_int(&expert_counts));
        let loss = with_float_kernel!(input.dtype, K => router_loss::<R, K, I>(
            &input.client,
            &input.handle,
            &counts.handle,
            shape,
            weights,
        ), else Err(unsupported_dtype("router logits", input.dtype)));
        match loss {
            Ok(loss) => float_tensor(&input, loss, [1], input.dtype),
            Err(error) => {
                fall_back("router loss", error);
                tensor_ops::router_loss(logits, expert_counts, weights)
            }
        }
    }

    fn moe_router_loss_grad(
        logits: Tensor<Self, 2>,
        expert_counts: Tensor<Self, 1, Int>,
        weights: LossWeights,
        d_loss: Tensor<Self, 1>,
    ) -> Tensor<Self, 2> {
        let shape = router_shape(&logits);
        let (input, counts) = (contiguous_float(&logits), contiguous_int(&expert_counts));
        let grad = contiguous_float(&d_loss.clone().cast(input.dtype));
        let d_logits = with_float_kernel!(input.dtype, K => router_loss_grad::<R, K, I>(
            &input.client,
            &input.handle,
            &counts.handle,
            &grad.handle,
            shape,
            weights,
        ), else Err(unsupported_dtype("router logits", input.dtype)));
        match d_logits {
            Ok(d_logits) => float_tensor(
                &input,
                d_logits,
                [shape.num_tokens, shape.num_experts],
                input.dtype,
            ),
            Err(error) => {
                fall_back("router loss's gradient", error);
                tensor_ops::router_loss_grad(logits, expert_counts, weights, d_loss)
            }
        }
    }

    fn moe_tile_rows(
        shape: &ExpertShape,
        activation: Activation,
        dtype: DType,
        device: &Self::Device,
    ) -> usize {
        expert_config::<R>(&R::client(device), shape, activation, dtype).tile_rows()
    }

    fn moe_dispatch(
        expert_ids: Tensor<Self, 2, Int>,
        num_experts: usize,
        tile_rows: usize,
    ) -> Dispatch<Self> {
        let [num_tokens, slots] = expert_ids.dims();
        let num_pairs = num_tokens * slots;
        let ids = contiguous_int(&expert_ids);
        let plan =
            match dispatch::<R, I>(&ids.client, &ids.handle, num_pairs, num_experts, tile_rows) {
                Ok(plan) => plan,
                Err(error) => {
                    fall_back("dispatch", error);
                    return tensor_ops::dispatch(expert_ids, num_experts, tile_rows);
                }
            };
        let tiles = max_tiles(num_pairs, num_experts, tile_rows);
        Dispatch {
            expert_offsets: int_tensor(&ids, plan.expert_offsets, [num_experts + 1]),
            routed_pairs: int_tensor(&ids, plan.routed_pairs, [num_pairs]),
            row_of_pair: int_tensor(&ids, plan.row_of_pair, [num_tokens, slots]),
            tiles: int_tensor(&ids, plan.tiles, [tiles, 2]),
            num_tiles: int_tensor(&ids, plan.num_tiles, [1]),
            tile_rows,
        }
    }

    fn moe_experts(
        x: Tensor<Self, 2>,
        dispatch: &Dispatch<Self>,
        w_in: Tensor<Self, 3>,
        w_out: Tensor<Self, 3>,
        activation: Activation,
    ) -> ExpertRows<Self> {
        match kernel_experts(&x, dispatch, &w_in, &w_out, activation, None) {
            Ok(rows) => rows,
            Err(error) => {
                fall_back("experts", error);
                tensor_ops::experts(x, dispatch, w_in, w_out, activation)
            }
        }
    }

    fn moe_quantized_experts(
        x: Tensor<Self, 2>,
        dispatch: &Dispatch<Self>,
        weights: &QuantizedExperts<Self>,
        activation: Activation,
    ) -> ExpertRows<Self> {
        match kernel_quantized_experts(&x, dispatch, weights, activation) {
            Ok(rows) => rows,
            Err(error) => {
                fall_back("quantized experts", error);
                dequantized_experts(x, dispatch, weights, activation)
            }
        }
    }

    const EXPERT_BACKWARD_KERNELS: bool = true;

    fn moe_expert_matmul(
        a: Tensor<Self, 2>,
        gather: bool,
        dispatch: &Dispatch<Self>,
        weights: Tensor<Self, 3>,
        transposed: bool,
    ) -> Tensor<Self, 2> {
        match kernel_expert_matmul(&a, gather, dispatch, &weights, transposed, None) {
            Ok(output) => output,
            Err(error) => {
                fall_back("expert matmul", error);
                tensor_ops::expert_matmul(a, gather, dispatch, weights, transposed)
            }
        }
    }

    /// SwiGLU: one grouped GEMM with the activation's backward in its epilogue. GELU (no fused
    /// epilogue) and a fused launch that falls back take the GEMM kernel, then the derivative
    /// as tensor ops.
    fn moe_expert_activate(
        pre: Tensor<Self, 2>,
        dispatch: &Dispatch<Self>,
        activation: Activation,
    ) -> Tensor<Self, 2> {
        let [num_rows, _] = pre.dims();
        let [offsets] = dispatch.expert_offsets.dims();
        let shape = ActivateShape {
            num_rows,
            width: pre.dims()[1] / activation.input_columns(1),
            num_experts: offsets - 1,
        };
        let primitive = contiguous_float(&pre);
        let client = &primitive.client;
        let dtype = primitive.dtype;
        let offsets = contiguous_int(&dispatch.expert_offsets);
        let hidden = with_float_kernel!(dtype, K => activate_rows::<R, K, I>(
            client,
            &primitive.handle,
            &offsets.handle,
            shape,
            activation,
        ), else Err(unsupported_dtype("pre", dtype)));
        match hidden {
            Ok(hidden) => float_tensor(&primitive, hidden, [num_rows, shape.width], dtype),
            Err(error) => {
                fall_back("expert activation", error);
                activate(pre, activation)
            }
        }
    }

    fn moe_expert_pre_grad(
        d_rows: Tensor<Self, 2>,
        dispatch: &Dispatch<Self>,
        w_out: Tensor<Self, 3>,
        pre: Tensor<Self, 2>,
        activation: Activation,
    ) -> Tensor<Self, 2> {
        if activation == Activation::SwiGlu {
            match kernel_expert_matmul(&d_rows, false, dispatch, &w_out, true, Some(&pre)) {
                Ok(d_pre) => return d_pre,
                Err(error) => fall_back("expert SwiGLU backward", error),
            }
        }
        unfused_pre_grad(d_rows, dispatch, w_out, pre, activation)
    }

    fn moe_expert_weight_grad(
        a: Tensor<Self, 2>,
        gather: bool,
        b: Tensor<Self, 2>,
        dispatch: &Dispatch<Self>,
    ) -> Tensor<Self, 3> {
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
        let plan = plan_on_device(dispatch);
        let grad = same_float_type(("a", dtype), &[("b", b_primitive.dtype)]).and_then(|()| {
            with_float_kernel!(dtype, K => expert_weight_grad::<R, K, I>(
                client,
                &a_primitive.handle,
                gather,
                &b_primitive.handle,
                &plan,
                shape,
                &weight_grad_config::<R, K>(client, &shape),
            ), else Err(unsupported_dtype("a", dtype)))
        });
        match grad {
            Ok(grad) => float_tensor(
                &a_primitive,
                grad,
                [shape.num_experts, a_width, b_width],
                dtype,
            ),
            Err(error) => {
                fall_back("expert weight gradient", error);
                tensor_ops::expert_weight_grad(a, gather, b, dispatch)
            }
        }
    }

    fn moe_combine(
        rows: ExpertRows<Self>,
        weights: Tensor<Self, 2>,
        dispatch: &Dispatch<Self>,
    ) -> Tensor<Self, 2> {
        let [splits, num_rows, d_model] = rows.blocks.dims();
        let [num_tokens, slots] = weights.dims();
        let blocks = contiguous_float(&rows.blocks);
        let row_weights = contiguous_float(&weights);
        let row_of_pair = contiguous_int(&dispatch.row_of_pair);
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
        let combined = with_float_kernel!(dtype, K => with_float_kernel!(blocks.dtype, E =>
            combine::<R, K, E, I>(
                &blocks.client,
                &blocks.handle,
                &row_weights.handle,
                &row_of_pair.handle,
                shape,
            ), else Err(unsupported_dtype("expert rows", blocks.dtype))
        ), else Err(unsupported_dtype("routing weights", dtype)));
        match combined {
            Ok(output) => float_tensor(&blocks, output, [num_tokens, d_model], dtype),
            Err(error) => {
                fall_back("combine", error);
                tensor_ops::combine(rows, weights, dispatch)
            }
        }
    }
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

/// Both expert projections on the weight-only quantized kernel (bytes dequantized in its load
/// stage, f32 products), on the dispatch's tiles: one block of rows in `x`'s type.
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
        quantized_output_projection::<R, K, I>(
            client,
            &hidden,
            w_out,
            &plan,
            shape,
        )
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

/// [`MoeBackend::moe_expert_matmul`] on the kernels; with `pre` (`[P, 2F]`, weights `w_out`
/// transposed), the SwiGLU backward fused into the epilogue: the result is then the
/// pre-activations' gradient, `[P, 2F]`.
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
    with_float_kernel!(dtype, K => expert_matmul::<R, K, K, I>(
        client, &operands, &plan, shape, &params,
    ), else Err(unsupported_dtype("a", dtype)))?;
    Ok(float_tensor(
        &input,
        output,
        [shape.num_pairs(), columns],
        dtype,
    ))
}

/// The router's sizes from its `[T, E]` logits.
fn router_shape<B: burn::tensor::backend::Backend>(logits: &Tensor<B, 2>) -> RouterShape {
    let [num_tokens, num_experts] = logits.dims();
    RouterShape {
        num_tokens,
        num_experts,
    }
}

/// The size rule's tiles for `shape` in `dtype` on this device (tensor cores where it has them
/// for `dtype`).
fn expert_config<R: CubeRuntime>(
    client: &cubecl::prelude::ComputeClient<R>,
    shape: &ExpertShape,
    activation: Activation,
    dtype: DType,
) -> ExpertGemmConfig {
    // A dtype no kernel takes gets the f32 (portable) tiles; the experts then fall back anyway.
    with_float_kernel!(dtype, K => device_config::<R, K>(client, shape, activation),
        else device_config::<R, f32>(client, shape, activation))
}

/// `Unsupported` when an operand of `others` (name, float type) differs from `first`'s type: the
/// kernels take one float type for all their operands.
fn same_float_type(first: (&str, DType), others: &[(&str, DType)]) -> Result<(), KernelError> {
    match others.iter().find(|(_, dtype)| *dtype != first.1) {
        Some((name, dtype)) => Err(KernelError::Unsupported(format!(
            "mixed float types: {} {:?}, {name} {dtype:?}",
            first.0, first.1
        ))),
        None => Ok(()),
    }
}

/// The error for a float tensor whose dtype no kernel takes (e.g. f64).
fn unsupported_dtype(name: &str, dtype: DType) -> KernelError {
    KernelError::Unsupported(format!(
        "{name} in {dtype:?} (the kernels take f32, f16, bf16)"
    ))
}

/// Falls back on an unsupported input (said once); panics on an invalid one, which is a bug of
/// the layer.
fn fall_back(op: &'static str, error: KernelError) {
    match error {
        KernelError::Unsupported(reason) => note_fallback(op, reason),
        KernelError::Invalid(error) => panic!("MoE {op} kernel got invalid input: {error}"),
    }
}

/// The dispatch's tensors as the kernels' device plan.
fn plan_on_device<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
    dispatch: &Dispatch<Cube<R, F, I, BT>>,
) -> DispatchOnDevice {
    let [num_tokens, slots] = dispatch.row_of_pair.dims();
    let [num_offsets] = dispatch.expert_offsets.dims();
    DispatchOnDevice {
        expert_offsets: contiguous_int(&dispatch.expert_offsets).handle,
        routed_pairs: contiguous_int(&dispatch.routed_pairs).handle,
        row_of_pair: contiguous_int(&dispatch.row_of_pair).handle,
        tiles: contiguous_int(&dispatch.tiles).handle,
        num_tiles: contiguous_int(&dispatch.num_tiles).handle,
        num_pairs: num_tokens * slots,
        num_experts: num_offsets - 1,
        tile_rows: dispatch.tile_rows,
    }
}

/// The contiguous CubeCL primitive of a float tensor.
fn contiguous_float<
    R: CubeRuntime,
    F: FloatElement,
    I: IntElement,
    BT: BoolElement,
    const D: usize,
>(
    tensor: &Tensor<Cube<R, F, I, BT>, D>,
) -> CubeTensor<R> {
    into_contiguous(tensor.clone().into_primitive().tensor())
}

/// The contiguous CubeCL primitive of an int tensor in the kernels' int type `I` (a dispatch by
/// tensor ops holds the device's default int type).
fn contiguous_int<
    R: CubeRuntime,
    F: FloatElement,
    I: IntElement,
    BT: BoolElement,
    const D: usize,
>(
    tensor: &Tensor<Cube<R, F, I, BT>, D, Int>,
) -> CubeTensor<R> {
    into_contiguous(tensor.clone().cast(I::dtype()).into_primitive())
}

/// A float tensor of `dtype` over a kernel's output buffer, on the device of `like`.
fn float_tensor<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement, const D: usize>(
    like: &CubeTensor<R>,
    handle: Handle,
    shape: [usize; D],
    dtype: DType,
) -> Tensor<Cube<R, F, I, BT>, D> {
    let primitive = wrap(like, handle, Shape::from(shape), dtype);
    Tensor::from_primitive(TensorPrimitive::Float(primitive))
}

/// An int tensor over a kernel's output buffer, on the device of `like`.
fn int_tensor<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement, const D: usize>(
    like: &CubeTensor<R>,
    handle: Handle,
    shape: [usize; D],
) -> Tensor<Cube<R, F, I, BT>, D, Int> {
    Tensor::from_primitive(wrap(like, handle, Shape::from(shape), I::dtype()))
}

fn wrap<R: CubeRuntime>(
    like: &CubeTensor<R>,
    handle: Handle,
    shape: Shape,
    dtype: DType,
) -> CubeTensor<R> {
    CubeTensor::new_contiguous(
        like.client.clone(),
        like.device.clone(),
        shape,
        handle,
        dtype,
    )
}
