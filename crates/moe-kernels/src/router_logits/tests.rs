//! The router-logits kernel against the f64 [`super::reference`], on every runtime and float
//! type it supports.

use cubecl::prelude::*;
use half::{bf16, f16};

use super::reference;
use super::{GateShape, router_logits, router_logits_into};
use crate::testgen::{HostFloat, download, for_half_types, random_rounded, relative_error, upload};

/// Shapes: one token, a decode batch, experts not a multiple of the cube's block, E = 256, a
/// depth shorter than the cube's units and one not a multiple of them.
const SHAPES: [(usize, usize, usize); 6] = [
    (1, 4096, 8),
    (16, 512, 8),
    (3, 1000, 13),
    (2, 7168, 256),
    (5, 100, 64),
    (1, 1, 1),
];

fn check<R: Runtime, F: HostFloat>(client: &ComputeClient<R>) {
    for (seed, &(num_tokens, d_model, num_experts)) in SHAPES.iter().enumerate() {
        let shape = GateShape {
            num_tokens,
            d_model,
            num_experts,
        };
        let (x, x_host) = random_rounded::<F>(seed as u64, num_tokens * d_model, 1.0);
        let (w, w_host) = random_rounded::<F>(seed as u64 + 100, d_model * num_experts, 1.0);
        let logits = upload(
            client,
            &vec![F::from_f32(f32::NAN); num_tokens * num_experts],
        );
        router_logits_into::<R, F>(
            client,
            &upload(client, &x),
            &upload(client, &w),
            shape,
            &logits,
        )
        .unwrap();
        let got: Vec<f32> = download::<R, F>(client, logits)
            .into_iter()
            .map(F::to_host)
            .collect();
        let want = reference::router_logits(&x_host, &w_host, d_model, num_experts);
        let error = relative_error(&got, &want);
        let context = format!("{} {shape:?}", std::any::type_name::<F>());
        assert!(
            got.iter().all(|v| v.is_finite()),
            "{context}: unwritten logits"
        );
        assert!(error < F::TOLERANCE, "{context}: relative error {error}");
    }
}

/// f32 within 1e-5 of the reference on every shape, every logit written over a NaN poison.
fn router_logits_match_reference<R: Runtime>(client: ComputeClient<R>) {
    check::<R, f32>(&client);
}

/// bf16 and f16 (f32 sums) within 2e-2, where the device has the type.
fn router_logits_match_reference_in_bf16_and_f16<R: Runtime>(client: ComputeClient<R>) {
    for_half_types(&client, check::<R, bf16>, check::<R, f16>);
}

/// Zero sizes and short buffers are error values.
fn router_logits_reject_bad_arguments<R: Runtime>(client: ComputeClient<R>) {
    let shape = GateShape {
        num_tokens: 2,
        d_model: 4,
        num_experts: 3,
    };
    let buffer = upload(&client, &[0.5f32; 12]);
    let short = upload(&client, &[0.5f32; 5]);
    let error = |x: &cubecl::server::Handle, w: &cubecl::server::Handle, shape| {
        router_logits::<R, f32>(&client, x, w, shape)
            .unwrap_err()
            .to_string()
    };
    assert!(router_logits::<R, f32>(&client, &buffer, &buffer, shape).is_ok());
    assert!(error(&short, &buffer, shape).contains("x buffer"));
    assert!(error(&buffer, &short, shape).contains("weight buffer"));
    let empty = GateShape {
        num_experts: 0,
        ..shape
    };
    assert!(error(&buffer, &buffer, empty).contains("num_experts = 0"));
}

crate::runtime_tests!(
    router_logits_match_reference,
    router_logits_match_reference_in_bf16_and_f16,
    router_logits_reject_bad_arguments
);
