//! The router's training kernels against the f64 [`super::reference`], on every runtime and float
//! type they support.

use cubecl::prelude::*;
use half::{bf16, f16};
use rand::RngExt;

use super::reference;
use super::{
    LossWeights, RouterShape, router_loss, router_loss_grad, router_loss_grad_into,
    routing_weights_grad, routing_weights_grad_into,
};
use crate::UNUSED_SLOT;
use crate::testgen::{
    HostFloat, download, for_half_types, random_f32, random_rounded, relative_error, rng, upload,
};

/// Random logits of type `F` and their values as the kernel sees them (rounded to `F`).
fn logits<F: HostFloat>(seed: u64, shape: RouterShape) -> (Vec<F>, Vec<f32>) {
    random_rounded(seed, shape.num_tokens * shape.num_experts, 3.0)
}

/// Routed pairs per expert: random, with every third expert empty.
fn expert_counts(seed: u64, num_experts: usize) -> Vec<i32> {
    let mut draw = rng(seed + 1000);
    (0..num_experts)
        .map(|e| match e % 3 {
            2 => 0,
            _ => draw.random_range(1..50),
        })
        .collect()
}

/// The loss and its gradient for one shape and pair of weights: the value within the type's
/// tolerance of the reference, every gradient value written over a NaN poison.
fn check_loss<R: Runtime, F: HostFloat>(
    client: &ComputeClient<R>,
    shape: RouterShape,
    weights: LossWeights,
    seed: u64,
) {
    let (values, host) = logits::<F>(seed, shape);
    let counts = expert_counts(seed, shape.num_experts);
    let context = format!("{} {shape:?} {weights:?}", std::any::type_name::<F>());
    let (logits, counts_buffer) = (upload(client, &values), upload(client, &counts));

    let loss = router_loss::<R, F, i32>(client, &logits, &counts_buffer, shape, weights).unwrap();
    let got = download::<R, F>(client, loss)[0].to_host();
    let want = reference::router_loss(&host, &counts, weights.balance, weights.z);
    let error = relative_error(&[got], &[want]);
    assert!(error < F::TOLERANCE, "{context}: loss {got} vs {want}");

    // Scaled with T, as f16 training scales its loss: per-token gradients of size 1 / T would
    // sit in f16's subnormal range.
    let d_loss = 1.5 * shape.num_tokens as f32;
    let d_logits = upload(client, &vec![F::from_f32(f32::NAN); host.len()]);
    router_loss_grad_into::<R, F, i32>(
        client,
        &logits,
        &counts_buffer,
        &upload(client, &[F::from_f32(d_loss)]),
        &d_logits,
        shape,
        weights,
    )
    .unwrap();
    let got: Vec<f32> = download::<R, F>(client, d_logits)
        .into_iter()
        .map(F::to_host)
        .collect();
    let want =
        reference::router_loss_grad(&host, &counts, weights.balance, weights.z, d_loss as f64);
    let error = relative_error(&got, &want);
    assert!(
        error < F::TOLERANCE,
        "{context}: gradient error {error:.2e}"
    );
}

/// Random renormalised weights over distinct experts (every other token leaves its last slots
/// unused) and a random weights' gradient.
fn routed_slots(seed: u64, shape: RouterShape, slots: usize) -> (Vec<f32>, Vec<i32>, Vec<f32>) {
    let mut draw = rng(seed);
    let (mut weights, mut ids) = (Vec::new(), Vec::new());
    for t in 0..shape.num_tokens {
        let used = if t % 2 == 0 { slots } else { 1 + t % slots };
        let first = draw.random_range(0..shape.num_experts);
        let raw: Vec<f32> = (0..used).map(|_| draw.random_range(0.1..1.0)).collect();
        let total: f32 = raw.iter().sum();
        for s in 0..slots {
            weights.push(raw.get(s).map_or(0.0, |w| w / total));
            ids.push(match s < used {
                true => ((first + s) % shape.num_experts) as i32,
                false => UNUSED_SLOT,
            });
        }
    }
    let d_weights = random_f32(&mut draw, weights.len(), 2.0);
    (weights, ids, d_weights)
}

/// The routing weights' gradient for one shape: every value written over a NaN poison, within
/// the type's tolerance of the reference.
fn check_weights_grad<R: Runtime, F: HostFloat>(
    client: &ComputeClient<R>,
    shape: RouterShape,
    slots: usize,
    seed: u64,
) {
    let (weights, ids, d_weights) = routed_slots(seed, shape, slots);
    let cast = |values: &[f32]| -> Vec<F> { values.iter().map(|&v| F::from_f32(v)).collect() };
    let (weights, d_weights) = (cast(&weights), cast(&d_weights));
    let host = |values: &[F]| -> Vec<f32> { values.iter().map(|v| v.to_host()).collect() };
    let d_logits = upload(
        client,
        &vec![F::from_f32(f32::NAN); shape.num_tokens * shape.num_experts],
    );
    routing_weights_grad_into::<R, F, i32>(
        client,
        &upload(client, &weights),
        &upload(client, &ids),
        &upload(client, &d_weights),
        &d_logits,
        shape,
        slots,
    )
    .unwrap();
    let got: Vec<f32> = download::<R, F>(client, d_logits)
        .into_iter()
        .map(F::to_host)
        .collect();
    let want = reference::routing_weights_grad(
        &host(&weights),
        &ids,
        &host(&d_weights),
        slots,
        shape.num_experts,
    );
    let error = relative_error(&got, &want);
    assert!(
        error < F::TOLERANCE,
        "{} {shape:?} slots {slots}: relative error {error:.2e}",
        std::any::type_name::<F>()
    );
}

/// T = 1, experts without pairs, more tokens than the loss's cube has units, E = 384, each loss
/// alone and both together.
fn check_type<R: Runtime, F: HostFloat>(client: &ComputeClient<R>) {
    let both = LossWeights {
        balance: 0.01,
        z: 0.001,
    };
    let shapes = [(1, 4), (37, 6), (700, 8), (50, 384), (3000, 16)];
    for (seed, (num_tokens, num_experts)) in shapes.into_iter().enumerate() {
        let shape = RouterShape {
            num_tokens,
            num_experts,
        };
        let seed = seed as u64;
        check_loss::<R, F>(client, shape, both, seed);
        check_weights_grad::<R, F>(client, shape, num_experts.min(4), seed);
    }
    let shape = RouterShape {
        num_tokens: 300,
        num_experts: 8,
    };
    check_loss::<R, F>(client, shape, LossWeights { z: 0.0, ..both }, 10);
    check_loss::<R, F>(
        client,
        shape,
        LossWeights {
            balance: 0.0,
            ..both
        },
        11,
    );
    check_weights_grad::<R, F>(client, shape, 1, 12);
}

/// f32 on every runtime.
pub fn router_training_kernels_match_reference<R: Runtime>(client: ComputeClient<R>) {
    check_type::<R, f32>(&client);
}

/// bf16 and f16 where the device has them, else skipped.
pub fn router_training_kernels_match_reference_in_bf16_and_f16<R: Runtime>(
    client: ComputeClient<R>,
) {
    for_half_types(&client, check_type::<R, bf16>, check_type::<R, f16>);
}

/// No routed pairs at all: the balance term is 0 (not 0 / 0), the z-loss remains.
pub fn router_loss_without_routed_pairs_is_the_z_loss<R: Runtime>(client: ComputeClient<R>) {
    let shape = RouterShape {
        num_tokens: 5,
        num_experts: 3,
    };
    let (values, host) = logits::<f32>(3, shape);
    let weights = LossWeights {
        balance: 1.0,
        z: 0.5,
    };
    let loss = router_loss::<R, f32, i32>(
        &client,
        &upload(&client, &values),
        &upload(&client, &[0i32; 3]),
        shape,
        weights,
    )
    .unwrap();
    let got = download::<R, f32>(&client, loss)[0];
    let z_only = reference::router_loss(&host, &[0; 3], 0.0, 0.5);
    assert!(z_only > 0.0);
    assert!(
        (got as f64 - z_only).abs() < 1e-5 * z_only,
        "{got} vs {z_only}"
    );
}

/// Bad sizes, short buffers and non-finite weights are errors, not launches.
pub fn router_training_kernels_reject_bad_arguments<R: Runtime>(client: ComputeClient<R>) {
    let buffer = upload(&client, &[0.5f32; 8]);
    let ints = upload(&client, &[1i32; 8]);
    let shape = RouterShape {
        num_tokens: 2,
        num_experts: 4,
    };
    let weights = LossWeights {
        balance: 1.0,
        z: 1.0,
    };
    let loss = |shape, weights| {
        router_loss::<R, f32, i32>(&client, &buffer, &ints, shape, weights)
            .unwrap_err()
            .to_string()
    };
    assert!(
        loss(
            RouterShape {
                num_tokens: 0,
                ..shape
            },
            weights
        )
        .contains("num_tokens = 0")
    );
    assert!(
        loss(
            RouterShape {
                num_tokens: 3,
                ..shape
            },
            weights
        )
        .contains("logits buffer")
    );
    assert!(
        loss(
            shape,
            LossWeights {
                z: f64::NAN,
                ..weights
            }
        )
        .contains("z = NaN")
    );
    let grad = router_loss_grad::<R, f32, i32>(&client, &buffer, &ints, &ints, shape, weights);
    assert!(
        grad.is_ok(),
        "an i32 buffer is long enough to hold one f32 d_loss"
    );
    let short = upload(&client, &[1i32; 3]);
    let grad = router_loss_grad::<R, f32, i32>(&client, &buffer, &short, &buffer, shape, weights);
    assert!(
        grad.unwrap_err()
            .to_string()
            .contains("expert_counts buffer")
    );
    let weights_grad = |slots| {
        routing_weights_grad::<R, f32, i32>(&client, &buffer, &ints, &buffer, shape, slots)
            .unwrap_err()
            .to_string()
    };
    assert!(weights_grad(0).contains("slots = 0"));
    assert!(weights_grad(5).contains("weights buffer"));
}

crate::runtime_tests!(
    router_training_kernels_match_reference,
    router_training_kernels_match_reference_in_bf16_and_f16,
    router_loss_without_routed_pairs_is_the_z_loss,
    router_training_kernels_reject_bad_arguments
);
