//! `MoeBackend` for CubeCL backends (CUDA, wgpu): the `moe-kernels` route, dispatch and combine.
//!
//! A shape a kernel does not support (e.g. more slots than it keeps in registers) falls back to
//! the tensor-op default, so every configuration the layer accepts runs.

use burn::tensor::activation::softmax;
use burn::tensor::{DType, Int, Shape, Tensor, TensorPrimitive};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};
use cubecl::server::Handle;
use moe_kernels::RoutingPolicy;
use moe_kernels::combine::{CombineShape, combine};
use moe_kernels::dispatch::dispatch;
use moe_kernels::dispatch::reference::max_tiles;
use moe_kernels::route::route;

use super::MoeBackend;
use crate::dispatch::{Dispatch, combine_with_tensor_ops, dispatch_with_tensor_ops};
use crate::router::{Routing, route as route_with_tensor_ops};

type Cube<R, F, I, BT> = CubeBackend<R, F, I, BT>;

impl<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement> MoeBackend
    for Cube<R, F, I, BT>
{
    const ROUTING_KERNELS: bool = true;

    fn moe_route(logits: Tensor<Self, 2>, policy: &RoutingPolicy) -> Routing<Self> {
        let [num_tokens, num_experts] = logits.dims();
        let input = contiguous_float(&logits);
        let Ok(routed) = route::<R, F, I>(
            &input.client,
            &input.handle,
            num_tokens,
            num_experts,
            policy,
        ) else {
            return route_with_tensor_ops(logits, policy);
        };
        let slots = routed.slots;
        Routing {
            probs: softmax(logits.clone(), 1),
            expert_ids: int_tensor::<R, F, I, BT, 2>(
                &input,
                routed.expert_ids,
                [num_tokens, slots],
            ),
            weights: float_tensor::<R, F, I, BT, 2>(&input, routed.weights, [num_tokens, slots]),
            token_k: int_tensor::<R, F, I, BT, 1>(&input, routed.token_k, [num_tokens]),
            logits,
        }
    }

    fn moe_dispatch(expert_ids: Tensor<Self, 2, Int>, num_experts: usize) -> Dispatch<Self> {
        let [num_tokens, slots] = expert_ids.dims();
        let num_pairs = num_tokens * slots;
        let ids = into_contiguous(expert_ids.clone().into_primitive());
        let Ok(plan) = dispatch::<R, I>(&ids.client, &ids.handle, num_pairs, num_experts) else {
            return dispatch_with_tensor_ops(expert_ids, num_experts);
        };
        let tiles = max_tiles(num_pairs, num_experts);
        Dispatch {
            expert_offsets: int_tensor::<R, F, I, BT, 1>(
                &ids,
                plan.expert_offsets,
                [num_experts + 1],
            ),
            routed_pairs: int_tensor::<R, F, I, BT, 1>(&ids, plan.routed_pairs, [num_pairs]),
            row_of_pair: int_tensor::<R, F, I, BT, 2>(&ids, plan.row_of_pair, [num_tokens, slots]),
            tiles: int_tensor::<R, F, I, BT, 2>(&ids, plan.tiles, [tiles, 2]),
            num_tiles: int_tensor::<R, F, I, BT, 1>(&ids, plan.num_tiles, [1]),
        }
    }

    fn moe_combine(
        expert_rows: Tensor<Self, 2>,
        weights: Tensor<Self, 2>,
        dispatch: &Dispatch<Self>,
    ) -> Tensor<Self, 2> {
        let [num_rows, d_model] = expert_rows.dims();
        let [num_tokens, slots] = weights.dims();
        let rows = contiguous_float(&expert_rows);
        let row_weights = contiguous_float(&weights);
        let row_of_pair = into_contiguous(dispatch.row_of_pair.clone().into_primitive());
        let shape = CombineShape {
            num_tokens,
            slots,
            num_rows,
            d_model,
        };
        match combine::<R, F, I>(
            &rows.client,
            &rows.handle,
            &row_weights.handle,
            &row_of_pair.handle,
            shape,
        ) {
            Ok(output) => float_tensor::<R, F, I, BT, 2>(&rows, output, [num_tokens, d_model]),
            Err(_) => combine_with_tensor_ops(expert_rows, weights, dispatch),
        }
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

/// A float tensor over a kernel's output buffer, on the device of `like`.
fn float_tensor<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement, const D: usize>(
    like: &CubeTensor<R>,
    handle: Handle,
    shape: [usize; D],
) -> Tensor<Cube<R, F, I, BT>, D> {
    let primitive = wrap(like, handle, Shape::from(shape), F::dtype());
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
