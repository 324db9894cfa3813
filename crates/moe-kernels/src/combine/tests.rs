//! The combine kernel against the f64 reference, on every runtime.

use cubecl::prelude::*;

use super::reference::combine as reference_combine;
use super::{CombineShape, combine_into};
use crate::RoutingPolicy;
use crate::dispatch::reference::plan;
use crate::route::reference::route;
use crate::testgen::{download, random_f32, rng, upload};

/// Routes random logits with `policy`, plans the dispatch, then combines random expert rows
/// (given as `splits` blocks of partial sums) on the device into a poisoned buffer and checks
/// every element against the reference on the summed rows.
fn check_combine<R: Runtime>(
    client: &ComputeClient<R>,
    num_tokens: usize,
    num_experts: usize,
    d_model: usize,
    policy: RoutingPolicy,
    splits: usize,
    seed: u64,
) {
    let logits = random_f32(&mut rng(seed), num_tokens * num_experts, 4.0);
    let routed = route(&logits, num_experts, &policy);
    let dispatch = plan(&routed.expert_ids, num_experts, 64);
    let num_rows = dispatch.num_rows();
    let blocks = random_f32(&mut rng(seed + 1), splits * num_rows * d_model, 2.0);
    let block = num_rows * d_model;
    let rows: Vec<f32> = (0..block)
        .map(|i| (0..splits).map(|s| blocks[s * block + i]).sum())
        .collect();
    let weights: Vec<f32> = routed.weights.iter().map(|&w| w as f32).collect();
    let shape = CombineShape {
        num_tokens,
        slots: routed.slots,
        num_rows,
        d_model,
        splits,
    };

    let output = upload(client, &vec![f32::NAN; num_tokens * d_model]);
    combine_into::<R, f32, f32, i32>(
        client,
        &upload(client, &blocks),
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
            (g as f64 - e).abs() <= 1e-5 * splits as f64 * (1.0 + e.abs()),
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
        check_combine(&client, tokens, experts, d, policy, 1, seed as u64);
    }
    check_combine(&client, 3, 8, 40, RoutingPolicy::TopK { k: 2 }, 4, 11);
    check_combine(
        &client,
        700,
        16,
        24,
        RoutingPolicy::Threshold { tau: 0.5 },
        3,
        12,
    );
}

/// A row past the written rows counts as unused instead of being read out of bounds; the other
/// tokens are unaffected.
pub fn combine_marks_rows_out_of_range<R: Runtime>(client: ComputeClient<R>) {
    let rows = upload(&client, &[1.0f32, 2.0, 3.0, 4.0]); // 2 rows of d = 2
    let weights = upload(&client, &[1.0f32, 1.0]);
    let row_of_pair = upload(&client, &[1i32, 7]); // token 0 -> row 1, token 1 -> row 7
    let shape = CombineShape {
        num_tokens: 2,
        slots: 1,
        num_rows: 2,
        d_model: 2,
        splits: 1,
    };
    let output = upload(&client, &[f32::NAN; 4]);
    combine_into::<R, f32, f32, i32>(&client, &rows, &weights, &row_of_pair, &output, shape)
        .unwrap();
    let got: Vec<f32> = download(&client, output);
    assert_eq!(got, vec![3.0, 4.0, 0.0, 0.0]);
}

/// Bad shapes and short buffers are errors, not launches.
pub fn combine_rejects_bad_arguments<R: Runtime>(client: ComputeClient<R>) {
    let buffer = upload(&client, &[0.0f32; 8]);
    let ids = upload(&client, &[0i32; 8]);
    let combine = |shape| {
        super::combine::<R, f32, f32, i32>(&client, &buffer, &buffer, &ids, shape)
            .unwrap_err()
            .to_string()
    };
    let shape = CombineShape {
        num_tokens: 4,
        slots: 2,
        num_rows: 8,
        d_model: 1,
        splits: 1,
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

crate::runtime_tests!(
    combine_matches_reference,
    combine_marks_rows_out_of_range,
    combine_rejects_bad_arguments
);
