//! The dispatch kernels against the reference plan, on every runtime.

use cubecl::prelude::*;
use rand::RngExt;

use super::reference::{max_tiles, plan};
use super::{DispatchOnDevice, dispatch_into};
use crate::UNUSED_SLOT;
use crate::testgen::{download, rng, upload};

const POISON: i32 = 0x5eed;

/// Plan buffers for `num_pairs` pairs over `num_experts` experts in tiles of `tile_rows`, every
/// element poisoned.
pub(crate) fn poisoned_plan<R: Runtime>(
    client: &ComputeClient<R>,
    num_pairs: usize,
    num_experts: usize,
    tile_rows: usize,
) -> DispatchOnDevice {
    let poisoned = |len: usize| upload(client, &vec![POISON; len]);
    DispatchOnDevice {
        expert_offsets: poisoned(num_experts + 1),
        routed_pairs: poisoned(num_pairs),
        row_of_pair: poisoned(num_pairs),
        tiles: poisoned(2 * max_tiles(num_pairs, num_experts, tile_rows)),
        num_tiles: poisoned(1),
        num_pairs,
        num_experts,
        tile_rows,
    }
}

/// Runs dispatch on `expert_ids` into poisoned buffers (tiles of `tile_rows`) and checks every
/// element of the plan.
fn check_dispatch<R: Runtime>(
    client: &ComputeClient<R>,
    expert_ids: &[i32],
    num_experts: usize,
    tile_rows: usize,
) {
    let device_plan = poisoned_plan(client, expert_ids.len(), num_experts, tile_rows);
    let ids = upload(client, expert_ids);
    dispatch_into::<R, i32>(client, &ids, &device_plan).unwrap();
    assert_plan_matches_reference(client, device_plan, expert_ids);
}

/// Checks every element of a device plan of `expert_ids` against the reference plan.
pub(crate) fn assert_plan_matches_reference<R: Runtime>(
    client: &ComputeClient<R>,
    device_plan: DispatchOnDevice,
    expert_ids: &[i32],
) {
    let (num_pairs, num_experts) = (device_plan.num_pairs, device_plan.num_experts);
    let expected = plan(expert_ids, num_experts, device_plan.tile_rows);
    let context = format!("P={num_pairs} E={num_experts}");
    let got = |handle| download::<R, i32>(client, handle);
    assert_eq!(
        got(device_plan.expert_offsets),
        expected.expert_offsets,
        "{context}: offsets"
    );
    assert_eq!(
        got(device_plan.routed_pairs),
        expected.routed_pairs,
        "{context}: routed pairs"
    );
    assert_eq!(
        got(device_plan.row_of_pair),
        expected.row_of_pair,
        "{context}: row of pair"
    );
    let tiles: Vec<[i32; 2]> = got(device_plan.tiles)
        .chunks(2)
        .map(|t| [t[0], t[1]])
        .collect();
    assert_eq!(tiles, expected.tiles, "{context}: tiles");
    assert_eq!(
        got(device_plan.num_tiles),
        vec![expected.num_tiles],
        "{context}: tile count"
    );
}

/// Expert ids as a router produces them: `slots` distinct experts per token, a random number of
/// them used (at least one), unused slots last.
fn random_routing(seed: u64, num_tokens: usize, slots: usize, num_experts: usize) -> Vec<i32> {
    let mut rng = rng(seed);
    let mut ids = Vec::with_capacity(num_tokens * slots);
    for _ in 0..num_tokens {
        let used = rng.random_range(1..=slots);
        let mut chosen: Vec<i32> = Vec::new();
        while chosen.len() < used {
            let e = rng.random_range(0..num_experts) as i32;
            if !chosen.contains(&e) {
                chosen.push(e);
            }
        }
        chosen.resize(slots, UNUSED_SLOT);
        ids.extend(chosen);
    }
    ids
}

/// Random routings from one token to 65536 tokens, E in {2, 8, 64, 256, 1024}, 1 to 8 slots, on
/// both sides of the single-cube and the block-scan limits.
pub fn dispatch_matches_reference_on_random_routings<R: Runtime>(client: ComputeClient<R>) {
    let cases = [
        (1, 1, 2),
        (1, 8, 256),
        (5, 2, 8),
        (32, 8, 64),
        (129, 2, 8),
        (128, 8, 64), // 1024 pairs: the largest single-cube plan
        (1025, 1, 8), // the smallest multi-pass plan
        (1000, 4, 64),
        (4096, 2, 8),
        (8192, 2, 64), // 64 blocks: the largest plan whose scatter sums the block counts
        (16385, 1, 2), // 65 blocks: the smallest with a scan of the block rows
        (100, 8, 1024), // the most experts, single cube
        (5000, 2, 1024),
        (3000, 8, 256),
        (65536, 2, 64),
        (65536, 1, 8),
    ];
    for (seed, &(tokens, slots, experts)) in cases.iter().enumerate() {
        let tile_rows = [16, 64, 128][seed % 3];
        check_dispatch(
            &client,
            &random_routing(seed as u64, tokens, slots, experts),
            experts,
            tile_rows,
        );
    }
}

/// Edge cases: every pair to one expert (all others empty), no pair used but one, a single pair.
pub fn dispatch_handles_skew_and_empty_experts<R: Runtime>(client: ComputeClient<R>) {
    check_dispatch(&client, &vec![3; 5000], 8, 128);
    let mut mostly_unused = vec![UNUSED_SLOT; 777];
    mostly_unused[500] = 63;
    check_dispatch(&client, &mostly_unused, 64, 16);
    check_dispatch(&client, &[0], 1, 64);
    // Alternating hot expert and unused slots, long enough for many blocks and tiles.
    let alternating: Vec<i32> = (0..20_000)
        .map(|i| if i % 2 == 0 { 255 } else { UNUSED_SLOT })
        .collect();
    check_dispatch(&client, &alternating, 256, 32);
}

/// Bad arguments are errors, not launches.
pub fn dispatch_rejects_bad_arguments<R: Runtime>(client: ComputeClient<R>) {
    let ids = upload(&client, &[0i32; 8]);
    let dispatch = |pairs, experts| {
        super::dispatch::<R, i32>(&client, &ids, pairs, experts, 64)
            .unwrap_err()
            .to_string()
    };
    assert!(dispatch(0, 4).contains("num_pairs = 0"));
    assert!(dispatch(8, 0).contains("num_experts = 0"));
    assert!(matches!(
        super::dispatch::<R, i32>(&client, &ids, 8, 5000, 64),
        Err(crate::KernelError::Unsupported(reason)) if reason.contains("num_experts = 5000")
    ));
    assert!(dispatch(16, 4).contains("expert_ids buffer"));
}

crate::runtime_tests!(
    dispatch_matches_reference_on_random_routings,
    dispatch_handles_skew_and_empty_experts,
    dispatch_rejects_bad_arguments,
);
