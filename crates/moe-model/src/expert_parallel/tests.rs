//! The expert-parallel layer on the in-process exchange against the single-device layer.

use burn::module::Param;
use burn::tensor::{Tensor, TensorData};
use rand::RngExt;

use super::*;
use crate::test_support::{TestBackend, host_f64, host_i64, random_tensor, random_values, rng};
use crate::{MoeLayer, MoeLayerConfig, RoutingPolicy};

/// Each rank's output of `layer` run expert-parallel over `inputs.len()` in-process ranks, one
/// thread per rank, rank `r` on `inputs[r]`.
fn expert_parallel_outputs(
    layer: &MoeLayer<TestBackend>,
    inputs: &[Tensor<TestBackend, 2>],
) -> Vec<Vec<f64>> {
    let num_ranks = inputs.len();
    let ends = InProcessExchange::group(vec![Default::default(); num_ranks]);
    std::thread::scope(|scope| {
        let ranks: Vec<_> = ends
            .into_iter()
            .zip(inputs.iter().cloned())
            .map(|(end, x)| {
                let part = ExpertParallelLayer::new(layer, num_ranks, end.rank()).expect("shards");
                scope.spawn(move || host_f64(part.infer(x, &end)))
            })
            .collect();
        ranks
            .into_iter()
            .map(|rank| rank.join().expect("the rank finished"))
            .collect()
    })
}

/// The ranks' outputs, concatenated, against the single-device layer on their inputs
/// concatenated in rank order: equal bit for bit (same rows, same order of summation).
fn assert_equals_single_device(
    layer: &MoeLayer<TestBackend>,
    inputs: &[Tensor<TestBackend, 2>],
    case: &str,
) {
    let single = host_f64(layer.infer(Tensor::cat(inputs.to_vec(), 0)));
    let parallel = expert_parallel_outputs(layer, inputs).concat();
    assert_eq!(parallel.len(), single.len(), "{case}");
    for (i, (p, s)) in parallel.iter().zip(&single).enumerate() {
        assert!(p == s, "{case}: element {i}: {p} (expert parallel) vs {s}");
    }
}

/// Fixed and variable k, with and without shared experts, over 1, 2 and 4 ranks holding
/// different numbers of tokens.
#[test]
fn expert_parallel_equals_the_single_device_layer() {
    let device = Default::default();
    let d = 12;
    let mut random = rng(51);
    for (policy, shared_experts) in [
        (RoutingPolicy::TopK { k: 2 }, 0),
        (RoutingPolicy::Threshold { tau: 0.5 }, 1),
        (RoutingPolicy::TopP { p: 0.8, max_k: 3 }, 0),
    ] {
        let layer = MoeLayerConfig::new()
            .with_num_experts(8)
            .with_expert_width(7)
            .with_routing(policy)
            .with_shared_experts(shared_experts)
            .with_shared_expert_width(5)
            .init::<TestBackend>(d, &device);
        for num_ranks in [1, 2, 4] {
            let inputs: Vec<Tensor<TestBackend, 2>> = (0..num_ranks)
                .map(|_| {
                    let tokens = random.random_range(1..40);
                    random_tensor(&mut random, [tokens, d], 1.5, &device)
                })
                .collect();
            assert_equals_single_device(&layer, &inputs, &format!("{policy}, {num_ranks} ranks"));
        }
    }
}

/// A gate that sends every token to expert 0: rank 0 receives all rows, the other ranks none.
#[test]
fn one_rank_receiving_every_row_still_equals_the_single_device_layer() {
    let device = Default::default();
    let (d, num_experts) = (6, 4);
    let mut layer = MoeLayerConfig::new()
        .with_num_experts(num_experts)
        .with_expert_width(5)
        .with_routing(RoutingPolicy::TopK { k: 1 })
        .init::<TestBackend>(d, &device);
    let mut gate = random_values(&mut rng(61), d * num_experts, 0.1);
    gate[0] = 5.0; // feature 0 -> expert 0
    layer.router.gate.weight = Param::from_tensor(Tensor::from_data(
        TensorData::new(gate, [d, num_experts]),
        &device,
    ));
    let inputs: Vec<Tensor<TestBackend, 2>> = (0..num_experts as u64)
        .map(|seed| {
            let mut values = random_values(&mut rng(70 + seed), 9 * d, 1.0);
            values
                .iter_mut()
                .step_by(d)
                .for_each(|v| *v = v.abs() + 1.0);
            Tensor::from_data(TensorData::new(values, [9, d]), &device)
        })
        .collect();
    let ids = host_i64(layer.route(Tensor::cat(inputs.clone(), 0)).expert_ids);
    assert!(
        ids.iter().all(|&id| id == 0),
        "every token must pick expert 0"
    );
    assert_equals_single_device(&layer, &inputs, "all rows to rank 0");
}

#[test]
fn bad_rank_counts_are_errors() {
    let layer = MoeLayerConfig::new()
        .with_num_experts(8)
        .init::<TestBackend>(4, &Default::default());
    for (num_ranks, rank) in [(16, 0), (3, 0), (0, 0), (2, 2)] {
        let error = ExpertParallelLayer::new(&layer, num_ranks, rank).expect_err("refused");
        assert!(
            error.to_string().contains("rank"),
            "{num_ranks} ranks, rank {rank}: {error}"
        );
    }
}
