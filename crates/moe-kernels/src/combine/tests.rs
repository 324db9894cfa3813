//! The combine kernel against the f64 reference, on every runtime.

use cubecl::prelude::*;

use super::reference::combine as reference_combine;
use super::{CombineShape, combine_into};
use crate::RoutingPolicy;
use crate::dispatch::reference::plan;
use crate::route::reference::route;
use crate::testgen::{download, random_f32, rng, upload};

/// Routes random logits with `policy`, plans the dispatch, then combines random expert rows on
/// the device into a poisoned buffer and checks every element against the reference.
fn check_combine<R: Runtime>(
    client: &ComputeClient<R>,
    num_tokens: usize,
    num_experts: usize,
    d_model: usize,
    policy: RoutingPolicy,
    seed: u64,
) {
    let logits = random_f32(&mut rng(seed), num_tokens * num_experts, 4.0);
    let routed = route(&logits, num_experts, &policy);
    let dispatch = plan(&routed.expert_ids, num_experts);
    let num_rows = dispatch.num_rows();
    let rows = random_f32(&mut rng(seed + 1), num_rows * d_model, 2.0);
    let weights: Vec<f32> = routed.weights.iter().map(|&w| w as f32).collect();
    let shape = CombineShape {
        num_tokens,
        slots: routed.slots,
        num_rows,
        d_model,
    };

    let output = upload(client, &vec![f32::NAN; num_tokens * d_model]);
    combine_into::<R, f32, i32>(
        client,
        &upload(client, &rows),
        &upload(client, &weights),
        &upload(client, &dispatch.row_of_pair),
        &output,
        shape,
    )
    .unwrap();
    let got: Vec<f32> = download(client, output);
    let expected = reference_combine(
        &rows,
        d_model,
        &weights,
        &dispatch.row_of_pair,
        routed.slots,
    );
    for (i, (&g, &e)) in got.iter().zip(&expected).enumerate() {
        assert!(
            (g as f64 - e).abs() <= 1e-5 * (1.0 + e.abs()),
            "{shape:?} element {i}: {g} vs {e}"
        );
    }
}

/// Random routings and expert outputs: one token to 65536 tokens, every policy kind.
pub fn combine_matches_reference<R: Runtime>(client: ComputeClient<R>) {
    let cases = [
        (1, 2, 8, RoutingPolicy::TopK { k: 1 }),
        (7, 8, 33, RoutingPolicy::Threshold { tau: 0.5 }),
        (32, 64, 128, RoutingPolicy::TopK { k: 8 }),
        (500, 256, 64, RoutingPolicy::TopP { p: 0.9, max_k: 4 }),
        (4096, 8, 96, RoutingPolicy::Threshold { tau: 0.6 }),
        (65536, 8, 4, RoutingPolicy::TopK { k: 2 }),
    ];
    for (seed, &(tokens, experts, d, policy)) in cases.iter().enumerate() {
        check_combine(&client, tokens, experts, d, policy, seed as u64);
    }
}

/// Bad shapes and short buffers are errors, not launches.
pub fn combine_rejects_bad_arguments<R: Runtime>(client: ComputeClient<R>) {
    let buffer = upload(&client, &[0.0f32; 8]);
    let ids = upload(&client, &[0i32; 8]);
    let combine = |shape| {
        super::combine::<R, f32, i32>(&client, &buffer, &buffer, &ids, shape)
            .unwrap_err()
            .to_string()
    };
    let shape = CombineShape {
        num_tokens: 4,
        slots: 2,
        num_rows: 8,
        d_model: 1,
    };
    assert!(
        combine(CombineShape {
            d_model: 0,
            ..shape
        })
        .contains("d_model = 0")
    );
    assert!(
        combine(CombineShape {
            num_rows: 9,
            ..shape
        })
        .contains("num_rows = 9")
    );
    assert!(
        combine(CombineShape {
            d_model: 2,
            ..shape
        })
        .contains("expert_rows buffer")
    );
}

crate::runtime_tests!(combine_matches_reference, combine_rejects_bad_arguments);
