//! Between Burn's tensors and the kernels' buffers: contiguous primitives in, tensors over the
//! kernels' output buffers out, and the dispatch as the kernels' device plan.

use burn::tensor::{DType, Int, Shape, Tensor, TensorPrimitive};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};
use cubecl::server::Handle;
use moe_kernels::dispatch::DispatchOnDevice;

use crate::backend_ext::Dispatch;

/// The CubeCL backend of `R` with float `F`, int `I` and bool `BT` elements.
pub(super) type Cube<R, F, I, BT> = CubeBackend<R, F, I, BT>;

/// The contiguous CubeCL primitive of a float tensor.
pub(super) fn contiguous_float<
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
pub(super) fn contiguous_int<
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
pub(super) fn float_tensor<
    R: CubeRuntime,
    F: FloatElement,
    I: IntElement,
    BT: BoolElement,
    const D: usize,
>(
    like: &CubeTensor<R>,
    handle: Handle,
    shape: [usize; D],
    dtype: DType,
) -> Tensor<Cube<R, F, I, BT>, D> {
    let primitive = wrap(like, handle, Shape::from(shape), dtype);
    Tensor::from_primitive(TensorPrimitive::Float(primitive))
}

/// An int tensor over a kernel's output buffer, on the device of `like`.
pub(super) fn int_tensor<
    R: CubeRuntime,
    F: FloatElement,
    I: IntElement,
    BT: BoolElement,
    const D: usize,
>(
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

/// The dispatch's tensors as the kernels' device plan.
pub(super) fn plan_on_device<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
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
