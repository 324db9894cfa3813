//! Training rows: forward + backward of the experts and combine (what the hand-written backward
//! covers) under `Autodiff`, in the run's float type, against the same step through the
//! per-expert tensor-op path (Burn matmuls, one host read of the offsets, Burn's autodiff of the
//! tensor-op combine) on the same batch, and
//! dense SwiGLU MLPs' forward + backward (six cuBLAS GEMMs) with the same active and the same
//! total parameters.

use burn::backend::Autodiff;
use burn::tensor::{Int, Tensor, TensorData};
use burn_cubecl::{CubeRuntime, FloatElement};
use cubecl::prelude::*;
use moe_kernels::Activation;
use moe_kernels::grouped_gemm::{ExpertShape, device_config};
use moe_model::MoeBackend;
use moe_model::backend_ext::tensor_ops;

use super::expert_cases::{
    Cube, DENSE_TOTAL_BYTES, ExpertCase, ExpertRow, micros, random, random_weight, repeats,
    synthetic_ids, tiles_label, timing_us,
};
use super::l2_flush::L2Flush;
use super::timing::device_timing;
use super::{Baselines, FloatType, time_per_call};

/// One training row: the kernel path's device time (L2 flushed between repetitions), the
/// tensor-op path's wall time (back to back, in `burn_us`), dense MLP baselines in the cuBLAS
/// columns.
pub fn train_row<R: CubeRuntime, F: FloatElement>(
    client: &ComputeClient<R>,
    device: &R::Device,
    flush: &L2Flush<R>,
    case: &ExpertCase,
    dtype: FloatType,
    baselines: &Baselines,
) -> ExpertRow {
    type A<R, F> = Autodiff<Cube<R, F>>;
    let (d, width, experts, tokens) = (case.d_model, case.width, case.experts, case.tokens);
    let slots = case.routing.slots();
    let shape = ExpertShape {
        num_tokens: tokens,
        slots,
        num_experts: experts,
        d_model: d,
        width,
    };
    let config = device_config::<R, F>(client, &shape, Activation::SwiGlu);
    let ids = synthetic_ids(case);
    let touched = (0..experts as i32).filter(|e| ids.contains(e)).count();
    let routed_rows = ids.iter().filter(|&&id| id >= 0).count();
    let ids = Tensor::<A<R, F>, 1, Int>::from_data(TensorData::new(ids, [tokens * slots]), device)
        .reshape([tokens, slots]);
    let dispatch = A::<R, F>::moe_dispatch(ids, experts, config.tile_rows());

    let tracked = |tensor| Tensor::<A<R, F>, 2>::from_inner(tensor).require_grad();
    let x = tracked(random::<R, F, 2>([tokens, d], device));
    let w_in = Tensor::<A<R, F>, 3>::from_inner(random_weight::<R, F, 3>(
        [experts, d, 2 * width],
        d,
        device,
    ))
    .require_grad();
    let w_out = Tensor::<A<R, F>, 3>::from_inner(random_weight::<R, F, 3>(
        [experts, width, d],
        width,
        device,
    ))
    .require_grad();
    let weights = Tensor::<A<R, F>, 2>::from_inner(random::<R, F, 2>([tokens, slots], device));
    let probe = Tensor::<A<R, F>, 2>::from_inner(random::<R, F, 2>([tokens, d], device));
    let step = |kernels: bool| {
        let (x, w_in, w_out) = (x.clone(), w_in.clone(), w_out.clone());
        let output = if kernels {
            let rows = A::<R, F>::moe_experts(x, &dispatch, w_in, w_out, Activation::SwiGlu);
            A::<R, F>::moe_combine(rows, weights.clone(), &dispatch)
        } else {
            let rows = tensor_ops::experts(x, &dispatch, w_in, w_out, Activation::SwiGlu);
            tensor_ops::combine(rows, weights.clone(), &dispatch)
        };
        drop((output * probe.clone()).sum().backward());
    };

    // Forward (3 products per routed row) and backward (twice the forward).
    let flops = 3.0 * 2.0 * (routed_rows * 3 * width * d) as f64;
    let time = device_timing(flush, 2, repeats(flops), || step(true));
    let tensor_ops = time_per_call(client, repeats(flops).min(10), || step(false));

    let active_width =
        ((routed_rows as f64 / tokens as f64 * width as f64 / 128.0).round() as usize).max(1) * 128;
    let total_width = experts * width;
    let dense_bytes = (d * 3 * total_width + tokens * 3 * total_width) * 2 * dtype.size();
    ExpertRow {
        op: "train",
        case: case.label(),
        tiles: tiles_label(&config),
        routed_rows,
        time_us: timing_us(&time),
        wall_us: None,
        queued_us: None,
        flops,
        // The touched weights are read twice (forward, input gradients) and their gradients
        // written once; the activations are not counted.
        floor_bytes: 3 * touched * 3 * width * d * dtype.size(),
        cublas_us: baselines.dense_mlp_train(tokens, d, active_width, dtype),
        burn_us: Some(micros(tensor_ops)),
        dense_total_us: (dense_bytes <= DENSE_TOTAL_BYTES && tokens >= 4096)
            .then(|| baselines.dense_mlp_train(tokens, d, total_width, dtype)),
        mean_k: Some(routed_rows as f64 / tokens as f64),
    }
}
