//! The routing stage on the kernels: the router's logits, the route, the router's training
//! pieces (its loss and the gradients through the routing weights) and the dispatch.

use burn::tensor::{Int, Tensor};
use burn_cubecl::{BoolElement, CubeRuntime, FloatElement, IntElement};
use moe_kernels::RoutingPolicy;
use moe_kernels::dispatch::dispatch as dispatch_kernel;
use moe_kernels::dispatch::reference::max_tiles;
use moe_kernels::route::route as route_kernel;
use moe_kernels::router_logits::{GateShape, router_logits as router_logits_kernel};
use moe_kernels::router_train::{
    RouterShape, router_loss as router_loss_kernel, router_loss_grad as router_loss_grad_kernel,
    routing_weights_grad as routing_weights_grad_kernel,
};

use super::launch::{KernelKey, on_kernels, same_float_type, unsupported_dtype, with_float_kernel};
use super::tensors::{Cube, contiguous_float, contiguous_int, float_tensor, int_tensor};
use crate::backend_ext::{Dispatch, LossWeights, Routing, tensor_ops};

/// `x @ weight` on the router-logits kernel at every batch size: each token's logits are summed
/// by its own cubes in one order, so a token routes the same whether it comes alone or in a
/// batch. (The kernel re-reads the gate for every token: at T = 4096 and a Mixtral gate that is
/// about 0.5 GB from L2, tens of microseconds, under 1% of the layer.)
pub(super) fn router_logits<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
    x: Tensor<Cube<R, F, I, BT>, 2>,
    weight: Tensor<Cube<R, F, I, BT>, 2>,
) -> Tensor<Cube<R, F, I, BT>, 2> {
    let [num_tokens, d_model] = x.dims();
    let [_, num_experts] = weight.dims();
    let (input, gate) = (contiguous_float(&x), contiguous_float(&weight));
    let dtype = input.dtype;
    let shape = GateShape {
        num_tokens,
        d_model,
        num_experts,
    };
    let key = KernelKey {
        dtypes: &[dtype, gate.dtype],
        sizes: &[num_tokens, d_model, num_experts],
    };
    on_kernels(
        "router logits",
        &input.client,
        key,
        || {
            same_float_type(("x", dtype), &[("gate", gate.dtype)])?;
            let logits = with_float_kernel!(dtype, K => router_logits_kernel::<R, K>(
                &input.client,
                &input.handle,
                &gate.handle,
                shape,
            ), else Err(unsupported_dtype("router logits", dtype)))?;
            Ok(float_tensor(
                &input,
                logits,
                [num_tokens, num_experts],
                dtype,
            ))
        },
        || x.clone().matmul(weight.clone()),
    )
}

/// The routing policy on the route kernel.
pub(super) fn route<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
    logits: Tensor<Cube<R, F, I, BT>, 2>,
    policy: &RoutingPolicy,
) -> Routing<Cube<R, F, I, BT>> {
    let [num_tokens, num_experts] = logits.dims();
    let input = contiguous_float(&logits);
    let dtype = input.dtype;
    let key = KernelKey {
        dtypes: &[dtype],
        sizes: &[num_tokens, num_experts],
    };
    on_kernels(
        "route",
        &input.client,
        key,
        || {
            let routed = with_float_kernel!(dtype, K => route_kernel::<R, K, I>(
                &input.client,
                &input.handle,
                num_tokens,
                num_experts,
                policy,
            ), else Err(unsupported_dtype("logits", dtype)))?;
            let slots = routed.slots;
            Ok(Routing {
                expert_ids: int_tensor(&input, routed.expert_ids, [num_tokens, slots]),
                weights: float_tensor(&input, routed.weights, [num_tokens, slots], dtype),
                token_k: int_tensor(&input, routed.token_k, [num_tokens]),
                logits: logits.clone(),
            })
        },
        || tensor_ops::route(logits.clone(), policy),
    )
}

/// The logits' gradient through the renormalised routing weights.
pub(super) fn routing_weights_grad<
    R: CubeRuntime,
    F: FloatElement,
    I: IntElement,
    BT: BoolElement,
>(
    weights: Tensor<Cube<R, F, I, BT>, 2>,
    expert_ids: Tensor<Cube<R, F, I, BT>, 2, Int>,
    d_weights: Tensor<Cube<R, F, I, BT>, 2>,
    num_experts: usize,
) -> Tensor<Cube<R, F, I, BT>, 2> {
    let [num_tokens, slots] = weights.dims();
    let shape = RouterShape {
        num_tokens,
        num_experts,
    };
    let dtype = weights.dtype();
    let (routed, ids) = (contiguous_float(&weights), contiguous_int(&expert_ids));
    let grad = contiguous_float(&d_weights.clone().cast(dtype));
    let key = KernelKey {
        dtypes: &[dtype],
        sizes: &[num_tokens, num_experts, slots],
    };
    on_kernels(
        "routing weights' gradient",
        &routed.client,
        key,
        || {
            let d_logits = with_float_kernel!(dtype, K => routing_weights_grad_kernel::<R, K, I>(
                &routed.client,
                &routed.handle,
                &ids.handle,
                &grad.handle,
                shape,
                slots,
            ), else Err(unsupported_dtype("routing weights", dtype)))?;
            Ok(float_tensor(
                &routed,
                d_logits,
                [num_tokens, num_experts],
                dtype,
            ))
        },
        || {
            tensor_ops::routing_weights_grad(
                weights.clone(),
                expert_ids.clone(),
                d_weights.clone(),
                num_experts,
            )
        },
    )
}

/// The router's auxiliary loss (balance and z terms) on its kernel.
pub(super) fn router_loss<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
    logits: Tensor<Cube<R, F, I, BT>, 2>,
    expert_counts: Tensor<Cube<R, F, I, BT>, 1, Int>,
    weights: LossWeights,
) -> Tensor<Cube<R, F, I, BT>, 1> {
    let shape = router_shape(&logits);
    let (input, counts) = (contiguous_float(&logits), contiguous_int(&expert_counts));
    let dtype = input.dtype;
    let key = KernelKey {
        dtypes: &[dtype],
        sizes: &[shape.num_tokens, shape.num_experts],
    };
    on_kernels(
        "router loss",
        &input.client,
        key,
        || {
            let loss = with_float_kernel!(dtype, K => router_loss_kernel::<R, K, I>(
                &input.client,
                &input.handle,
                &counts.handle,
                shape,
                weights,
            ), else Err(unsupported_dtype("router logits", dtype)))?;
            Ok(float_tensor(&input, loss, [1], dtype))
        },
        || tensor_ops::router_loss(logits.clone(), expert_counts.clone(), weights),
    )
}

/// The router loss's gradient with respect to the logits, on its kernel.
pub(super) fn router_loss_grad<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
    logits: Tensor<Cube<R, F, I, BT>, 2>,
    expert_counts: Tensor<Cube<R, F, I, BT>, 1, Int>,
    weights: LossWeights,
    d_loss: Tensor<Cube<R, F, I, BT>, 1>,
) -> Tensor<Cube<R, F, I, BT>, 2> {
    let shape = router_shape(&logits);
    let (input, counts) = (contiguous_float(&logits), contiguous_int(&expert_counts));
    let dtype = input.dtype;
    let grad = contiguous_float(&d_loss.clone().cast(dtype));
    let key = KernelKey {
        dtypes: &[dtype],
        sizes: &[shape.num_tokens, shape.num_experts],
    };
    on_kernels(
        "router loss's gradient",
        &input.client,
        key,
        || {
            let d_logits = with_float_kernel!(dtype, K => router_loss_grad_kernel::<R, K, I>(
                &input.client,
                &input.handle,
                &counts.handle,
                &grad.handle,
                shape,
                weights,
            ), else Err(unsupported_dtype("router logits", dtype)))?;
            let dims = [shape.num_tokens, shape.num_experts];
            Ok(float_tensor(&input, d_logits, dims, dtype))
        },
        || {
            tensor_ops::router_loss_grad(
                logits.clone(),
                expert_counts.clone(),
                weights,
                d_loss.clone(),
            )
        },
    )
}

/// The dispatch plan (expert offsets, routed pairs, rows, tiles) on its kernel.
pub(super) fn dispatch<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
    expert_ids: Tensor<Cube<R, F, I, BT>, 2, Int>,
    num_experts: usize,
    tile_rows: usize,
) -> Dispatch<Cube<R, F, I, BT>> {
    let [num_tokens, slots] = expert_ids.dims();
    let num_pairs = num_tokens * slots;
    let ids = contiguous_int(&expert_ids);
    let key = KernelKey {
        dtypes: &[],
        sizes: &[num_pairs, num_experts, tile_rows],
    };
    on_kernels(
        "dispatch",
        &ids.client,
        key,
        || {
            let plan = dispatch_kernel::<R, I>(
                &ids.client,
                &ids.handle,
                num_pairs,
                num_experts,
                tile_rows,
            )?;
            let tiles = max_tiles(num_pairs, num_experts, tile_rows);
            Ok(Dispatch {
                expert_offsets: int_tensor(&ids, plan.expert_offsets, [num_experts + 1]),
                routed_pairs: int_tensor(&ids, plan.routed_pairs, [num_pairs]),
                row_of_pair: int_tensor(&ids, plan.row_of_pair, [num_tokens, slots]),
                tiles: int_tensor(&ids, plan.tiles, [tiles, 2]),
                num_tiles: int_tensor(&ids, plan.num_tiles, [1]),
                tile_rows,
            })
        },
        || tensor_ops::dispatch(expert_ids.clone(), num_experts, tile_rows),
    )
}

/// The router's sizes from its `[T, E]` logits.
fn router_shape<B: burn::tensor::backend::Backend>(logits: &Tensor<B, 2>) -> RouterShape {
    let [num_tokens, num_experts] = logits.dims();
    RouterShape {
        num_tokens,
        num_experts,
    }
}
