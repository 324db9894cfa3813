//! The routing stage against the references in sequence: the routing against the f64 route
//! reference, the plan against the reference plan of the routed expert ids.

use cubecl::prelude::*;

use super::route_and_dispatch_into;
use crate::RoutingPolicy;
use crate::dispatch::tests::{assert_plan_matches_reference, poisoned_plan};
use crate::route::tests::{assert_routing_matches_reference, poisoned_routed};
use crate::testgen::{download, random_f32, rng, upload};

/// Runs the stage into poisoned buffers and checks every element of both outputs.
fn check_stage<R: Runtime>(
    client: &ComputeClient<R>,
    logits: &[f32],
    num_experts: usize,
    policy: RoutingPolicy,
) {
    let num_tokens = logits.len() / num_experts;
    let slots = policy.max_slots();
    let routed = poisoned_routed(client, num_tokens, slots);
    let plan = poisoned_plan(client, num_tokens * slots, num_experts, 32);
    let input = upload(client, logits);
    route_and_dispatch_into::<R, f32, i32>(client, &input, &routed, &plan, &policy).unwrap();

    let ids: Vec<i32> = download(client, routed.expert_ids.clone());
    assert_routing_matches_reference(client, routed, logits, num_experts, &policy);
    assert_plan_matches_reference(client, plan, &ids);
}

/// Decode batches (fused, one launch) and larger ones (route then dispatch), every policy kind,
/// E in {2, 8, 64, 256}, on both sides of the fused limit.
pub fn stage_matches_references<R: Runtime>(client: ComputeClient<R>) {
    let threshold = RoutingPolicy::Threshold { tau: 0.5 };
    let cases = [
        (1, 2, RoutingPolicy::TopK { k: 1 }),
        (1, 8, threshold),
        (32, 8, threshold),
        (128, 8, RoutingPolicy::TopK { k: 2 }), // 256 pairs: the largest fused batch
        (32, 64, RoutingPolicy::TopK { k: 2 }),
        (32, 64, RoutingPolicy::TopP { p: 0.7, max_k: 4 }),
        (1, 256, RoutingPolicy::TopK { k: 8 }),
        (32, 256, RoutingPolicy::TopK { k: 8 }),
        (7, 256, threshold),
        (129, 8, RoutingPolicy::TopK { k: 2 }), // 258 pairs: route then dispatch
        (4096, 64, threshold),
    ];
    for (seed, &(num_tokens, num_experts, policy)) in cases.iter().enumerate() {
        let logits = random_f32(&mut rng(seed as u64), num_tokens * num_experts, 6.0);
        check_stage(&client, &logits, num_experts, policy);
    }
}

/// Mismatched buffers are errors, not launches.
pub fn stage_rejects_bad_arguments<R: Runtime>(client: ComputeClient<R>) {
    let policy = RoutingPolicy::TopK { k: 2 };
    let logits = upload(&client, &[0.5f32; 32]);
    let routed = poisoned_routed(&client, 4, 2);
    let error = |plan| {
        route_and_dispatch_into::<R, f32, i32>(&client, &logits, &routed, &plan, &policy)
            .unwrap_err()
            .to_string()
    };
    assert!(error(poisoned_plan(&client, 6, 8, 64)).contains("plan.num_pairs = 6"));
    assert!(error(poisoned_plan(&client, 8, 16, 64)).contains("logits buffer"));
}

crate::runtime_tests!(stage_matches_references, stage_rejects_bad_arguments);
