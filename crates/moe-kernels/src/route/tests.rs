//! The route kernel against the f64 reference, on every runtime, over many shapes and policies.

use cubecl::prelude::*;

use super::reference::{self, softmax};
use super::{RoutedOnDevice, route_into};
use crate::testgen::{download, random_f32, rng, upload};
use crate::{RoutingPolicy, UNUSED_SLOT};

/// Poison written into every output before a launch; a value left unwritten fails the check.
const POISON_ID: i32 = 0x5eed;
const POISON_WEIGHT: f32 = f32::NAN;

/// Policies exercised for `num_experts` experts.
fn policies(num_experts: usize) -> Vec<RoutingPolicy> {
    let mut policies = vec![
        RoutingPolicy::TopK { k: 1 },
        RoutingPolicy::TopK {
            k: num_experts.min(8),
        },
        RoutingPolicy::TopP {
            p: 0.6,
            max_k: num_experts.min(4),
        },
        RoutingPolicy::TopP {
            p: 1.0,
            max_k: num_experts.min(8),
        },
    ];
    if num_experts >= 2 {
        policies.extend([
            RoutingPolicy::TopK { k: 2 },
            RoutingPolicy::Threshold { tau: 0.0 },
            RoutingPolicy::Threshold { tau: 0.5 },
            RoutingPolicy::Threshold { tau: 1.0 },
        ]);
    }
    policies
}

/// Distance of the token's routing decision from flipping: the smallest gap between the mass
/// before a slot and the policy's limit, over the slots the decision looked at.
fn decision_margin(row: &[f32], policy: &RoutingPolicy) -> f64 {
    let Some(limit) = policy.mass_limit() else {
        return f64::INFINITY;
    };
    let probs = softmax(row);
    let mut sorted = probs.clone();
    sorted.sort_by(|a, b| b.total_cmp(a));
    let mut mass = 0.0;
    let mut margin = f64::INFINITY;
    for slot in 0..policy.max_slots() {
        if slot > 0 {
            margin = margin.min((mass - limit).abs());
        }
        if !policy.uses_slot(slot, mass) {
            break;
        }
        mass += sorted[slot];
    }
    margin
}

/// Output buffers for `num_tokens` tokens and `slots` slots, every element poisoned.
pub(crate) fn poisoned_routed<R: Runtime>(
    client: &ComputeClient<R>,
    num_tokens: usize,
    slots: usize,
) -> RoutedOnDevice {
    RoutedOnDevice {
        expert_ids: upload(client, &vec![POISON_ID; num_tokens * slots]),
        weights: upload(client, &vec![POISON_WEIGHT; num_tokens * slots]),
        token_k: upload(client, &vec![POISON_ID; num_tokens]),
        num_tokens,
        slots,
    }
}

/// Runs the kernel on `logits` into poisoned buffers and checks every output element.
fn check_route<R: Runtime>(
    client: &ComputeClient<R>,
    logits: &[f32],
    num_experts: usize,
    policy: RoutingPolicy,
) {
    let routed = poisoned_routed(client, logits.len() / num_experts, policy.max_slots());
    let input = upload(client, logits);
    route_into::<R, f32, i32>(client, &input, &routed, num_experts, &policy).unwrap();
    assert_routing_matches_reference(client, routed, logits, num_experts, &policy);
}

/// Checks every element of a device routing of `logits` against the f64 reference.
pub(crate) fn assert_routing_matches_reference<R: Runtime>(
    client: &ComputeClient<R>,
    routed: RoutedOnDevice,
    logits: &[f32],
    num_experts: usize,
    policy: &RoutingPolicy,
) {
    let (num_tokens, slots) = (routed.num_tokens, routed.slots);
    let ids: Vec<i32> = download(client, routed.expert_ids);
    let weights: Vec<f32> = download(client, routed.weights);
    let token_k: Vec<i32> = download(client, routed.token_k);
    let expected = reference::route(logits, num_experts, policy);
    let context = format!("T={num_tokens} E={num_experts} {policy}");

    for t in 0..num_tokens {
        let row = &logits[t * num_experts..(t + 1) * num_experts];
        let got_k = token_k[t] as usize;
        if got_k != expected.token_k[t] {
            // f32 on the device, f64 in the reference: only a decision on the knife's edge may differ.
            let margin = decision_margin(row, policy);
            assert!(
                margin < 1e-5,
                "{context}: token {t} k {got_k} vs {} (margin {margin})",
                expected.token_k[t]
            );
            assert!(
                ids[t * slots] == expected.expert_ids[t * slots],
                "{context}: token {t} top expert"
            );
            continue;
        }
        for s in 0..slots {
            let i = t * slots + s;
            assert_eq!(
                ids[i], expected.expert_ids[i],
                "{context}: token {t} slot {s} expert"
            );
            let (got, want) = (weights[i] as f64, expected.weights[i]);
            assert!(
                (got - want).abs() <= 1e-5 * want.max(1e-3),
                "{context}: token {t} slot {s} weight {got} vs {want}"
            );
            if expected.expert_ids[i] == UNUSED_SLOT {
                assert_eq!(weights[i], 0.0, "{context}: unused slot weight");
            }
        }
    }
}

/// Random logits over shapes from one token to 65536 and E in {2, 8, 64, 256}, every policy.
pub fn route_matches_reference_on_random_logits<R: Runtime>(client: ComputeClient<R>) {
    let shapes = [
        (1, 2),
        (1, 256),
        (7, 8),
        (32, 64),
        (257, 8),
        (300, 256),
        (4096, 8),
        (4096, 64),
        (65536, 8),
    ];
    for (seed, &(num_tokens, num_experts)) in shapes.iter().enumerate() {
        let logits = random_f32(&mut rng(seed as u64), num_tokens * num_experts, 6.0);
        for policy in policies(num_experts) {
            check_route(&client, &logits, num_experts, policy);
        }
    }
    let large = random_f32(&mut rng(99), 65536 * 64, 6.0);
    check_route(&client, &large, 64, RoutingPolicy::Threshold { tau: 0.5 });
    check_route(&client, &large, 64, RoutingPolicy::TopK { k: 8 });
}

/// Edge cases: every token to one expert (the others empty), ties, extreme logits.
pub fn route_handles_ties_skew_and_extreme_logits<R: Runtime>(client: ComputeClient<R>) {
    // One expert dominates every token: all other experts receive nothing.
    let mut skewed = random_f32(&mut rng(1), 500 * 16, 1.0);
    skewed.chunks_mut(16).for_each(|row| row[11] += 20.0);
    // Ties: values from a set of three, so most rows have equal logits; ties go to the lower index.
    let ties: Vec<f32> = random_f32(&mut rng(2), 400 * 8, 1.5)
        .iter()
        .map(|v| v.round())
        .collect();
    let all_equal = vec![0.25f32; 64 * 64];
    // Extreme but finite logits: softmax underflows to exact zeros and ones, also across the
    // members of a team (E = 64, 256) whose partial sums are merged.
    let extreme = |seed: u64, num_tokens: usize, num_experts: usize| -> Vec<f32> {
        random_f32(&mut rng(seed), num_tokens * num_experts, 1.0)
            .iter()
            .map(|&v| {
                if v > 0.3 {
                    1.0e4
                } else if v < -0.3 {
                    -1.0e4
                } else {
                    v * 10.0
                }
            })
            .collect()
    };
    let (extreme8, extreme64, extreme256) =
        (extreme(3, 300, 8), extreme(4, 100, 64), extreme(5, 50, 256));
    for (logits, num_experts) in [
        (&skewed, 16),
        (&ties, 8),
        (&all_equal, 64),
        (&extreme8, 8),
        (&extreme64, 64),
        (&extreme256, 256),
    ] {
        for policy in policies(num_experts) {
            check_route(&client, logits, num_experts, policy);
        }
    }
}

/// Bad arguments are errors, not launches.
pub fn route_rejects_bad_arguments<R: Runtime>(client: ComputeClient<R>) {
    let logits = upload(&client, &[0.0f32; 16]);
    let route = |tokens, experts, policy: RoutingPolicy| {
        super::route::<R, f32, i32>(&client, &logits, tokens, experts, &policy)
            .unwrap_err()
            .to_string()
    };
    assert!(route(4, 4, RoutingPolicy::TopK { k: 5 }).contains("policy.k = 5"));
    assert!(route(4, 4, RoutingPolicy::Threshold { tau: 1.5 }).contains("policy.tau = 1.5"));
    assert!(route(0, 4, RoutingPolicy::TopK { k: 1 }).contains("num_tokens = 0"));
    let too_many_slots = RoutingPolicy::TopK { k: 9 };
    assert!(matches!(
        super::route::<R, f32, i32>(&client, &logits, 1, 16, &too_many_slots),
        Err(crate::KernelError::Unsupported(reason)) if reason.contains("9 slots")
    ));
    assert!(route(8, 4, RoutingPolicy::TopK { k: 1 }).contains("logits"));
}

crate::runtime_tests!(
    route_matches_reference_on_random_logits,
    route_handles_ties_skew_and_extreme_logits,
    route_rejects_bad_arguments,
);
