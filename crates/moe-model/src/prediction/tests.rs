//! Tests of the predictors: the model access they read, Fate at distance 0, the metrics against
//! a hand-computed example, distillation against the frequency baseline.

use std::ops::ControlFlow;

use burn::backend::Autodiff;
use burn::module::AutodiffModule;
use burn::tensor::Tensor;
use moe_kernels::RoutingPolicy;

use super::*;
use crate::moe::MoeLayerConfig;
use crate::routing::balance::BalanceMethod;
use crate::test_support::{TestBackend, host_f64, host_i64, random_tensor, reseeded, rng};
use crate::{FfnConfig, ModelConfig};

/// A small untrained MoE model of `blocks` blocks over inputs of 6 features, its weights drawn
/// from a fixed seed.
fn model(blocks: usize, layer: MoeLayerConfig) -> crate::Model<TestBackend> {
    let model = ModelConfig::new()
        .with_d_model(16)
        .with_num_blocks(blocks)
        .with_ffn(FfnConfig::Moe(layer.with_expert_width(8)))
        .init(6, 3, &Default::default());
    reseeded(model, 17)
}

#[test]
fn forward_blocks_gives_the_forward_output_and_each_blocks_inputs_and_routing() {
    let model = model(3, MoeLayerConfig::new().with_num_experts(4));
    let x = random_tensor::<TestBackend, 2>(&mut rng(1), [40, 6], 2.0, &Default::default());
    let plain = model.forward(x.clone());
    let (output, passes) = model.forward_blocks(x);
    assert_eq!(host_f64(output.logits), host_f64(plain.logits));
    assert_eq!(passes.len(), 3);
    for (l, pass) in passes.iter().enumerate() {
        let normed = model.blocks()[l].norm.forward(pass.residual.clone());
        assert_eq!(host_f64(pass.normed.clone()), host_f64(normed), "block {l}");
        let routing = pass.routing.as_ref().expect("an MoE block routes");
        assert_eq!(
            host_i64(routing.token_k.clone()),
            host_i64(plain.routing[l].token_k.clone()),
            "block {l}"
        );
    }
}

#[test]
fn fate_at_distance_zero_reproduces_the_real_routing_exactly() {
    let layers = [
        MoeLayerConfig::new().with_num_experts(5),
        MoeLayerConfig::new()
            .with_num_experts(6)
            .with_routing(RoutingPolicy::TopK { k: 2 }),
        MoeLayerConfig::new()
            .with_num_experts(6)
            .with_routing(RoutingPolicy::TopP { p: 0.7, max_k: 3 })
            .with_balance(BalanceMethod::Bias),
        MoeLayerConfig::new()
            .with_num_experts(4)
            .with_capacity_factor(Some(1.0)),
    ];
    for (seed, layer) in layers.into_iter().enumerate() {
        let describe = format!("{:?}", layer.routing);
        let model = model(3, layer);
        let x = random_tensor::<TestBackend, 2>(
            &mut rng(seed as u64),
            [64, 6],
            2.0,
            &Default::default(),
        );
        let (_, passes) = model.forward_blocks(x);
        for (l, pass) in passes.iter().enumerate() {
            let real = HostRouting::from_routing(pass.routing.as_ref().unwrap());
            for input in [FateInput::SourceNormed, FateInput::TargetNorm] {
                let fate = fate_routing(&model, pass, l, input).expect("an MoE block");
                assert_eq!(
                    HostRouting::from_routing(&fate),
                    real,
                    "{describe} block {l} {input:?}"
                );
            }
        }
        assert!(fate_routing(&model, &passes[0], 3, FateInput::SourceNormed).is_none());
    }
}

/// Four tokens over four experts, worked out by hand in the comments.
fn hand_example() -> (HostRouting, HostRouting, Vec<bool>) {
    let real = HostRouting {
        sets: vec![vec![1], vec![2, 0], vec![3], vec![1, 2]],
        ranking: vec![vec![1, 0, 2, 3]; 4], // not read: the real side is scored by its sets
    };
    let predicted = HostRouting {
        sets: vec![vec![1], vec![2], vec![0, 3], vec![0]],
        ranking: vec![
            vec![1, 0, 2, 3],
            vec![2, 1, 0, 3],
            vec![0, 3, 1, 2],
            vec![0, 2, 1, 3],
        ],
    };
    (real, predicted, vec![false, true, false, true])
}

#[test]
fn metrics_match_a_hand_computed_example() {
    let (real, predicted, hard) = hand_example();
    let mut tally = PredictionTally::new(2, 2);
    tally.add(&real, &predicted, Some(&hard));
    let score = tally.score();
    let expected = PredictionScore {
        tokens: 4,
        // Overlaps 1 + 1 + 1 + 0 of 6 real and 5 predicted pairs; only token 0 exact.
        recall: 3.0 / 6.0,
        precision: 3.0 / 5.0,
        exact_match: 0.25,
        // Batches {0,1,2} vs {1,2} and {1,2,3} vs {0,3}.
        batch_size: 2,
        batch_recall: 3.0 / 6.0,
        batch_precision: 3.0 / 4.0,
        // First choices 1, 2, 3, 1 ranked 0, 0, 1, 2.
        top_k_hit: vec![0.5, 0.75],
        mean_predicted_k: 1.25,
        mean_real_k: 1.5,
        easy: Some(GroupScore {
            tokens: 2,
            recall: 1.0,
            precision: 2.0 / 3.0,
            top1_hit: 0.5,
        }),
        hard: Some(GroupScore {
            tokens: 2,
            recall: 0.25,
            precision: 0.5,
            top1_hit: 0.5,
        }),
    };
    assert_eq!(score, expected);

    // Summing a second block in is the same as scoring the concatenation (batches stay per block).
    tally.add(&real, &predicted, None);
    let twice = tally.score();
    assert_eq!(
        (twice.tokens, twice.recall, twice.batch_recall),
        (8, 0.5, 0.5)
    );
    assert_eq!(twice.easy.unwrap().tokens, 2);
}

#[test]
fn frequency_baseline_predicts_the_most_chosen_experts_at_the_mean_k() {
    let (real, _, _) = hand_example();
    let baseline = FrequencyBaseline::fit(&real, 4);
    assert_eq!(baseline.counts, vec![1, 2, 2, 1]);
    assert_eq!(baseline.ranking(), vec![1, 2, 0, 3]);
    assert_eq!(baseline.set_size, 2); // mean k 1.5 rounds to 2
    let predicted = baseline.predict(3);
    assert_eq!(predicted.sets, vec![vec![1, 2]; 3]);
}

#[test]
fn scores_are_ranked_best_first_with_ties_to_the_lower_index() {
    let ranking = rank_scores(&[0.1, 0.5, 0.5, -1.0, f32::NAN, 2.0, 2.0, 0.0], 4);
    assert_eq!(ranking, vec![vec![1, 2, 0, 3], vec![1, 2, 3, 0]]);
}

#[test]
fn head_cost_and_seeded_init() {
    let linear = GatingHeadConfig::new(16, 8).with_hidden(0);
    assert_eq!(linear.cost().params, 16 * 8 + 8);
    assert_eq!(linear.cost().flops_per_token, 2.0 * 128.0);
    let two_layer = GatingHeadConfig::new(16, 8).with_hidden(32);
    assert_eq!(two_layer.cost().params, 16 * 32 + 32 + 32 * 8 + 8);
    let device = Default::default();
    let weights = |seed| {
        let head = two_layer.init::<TestBackend>(seed, &device);
        host_f64(head.output.weight.val())
    };
    assert_eq!(weights(3), weights(3));
    assert_ne!(weights(3), weights(4));
}

/// A head distilled from block 1's router on block 0's normed input (an untrained model on
/// clustered inputs, so routing depends on the input) lowers its loss and predicts block 1's
/// experts far better than the block's most frequent experts.
#[test]
fn distillation_reduces_the_loss_and_beats_the_frequency_baseline() {
    type Train = Autodiff<TestBackend>;
    let device = Default::default();
    let model = model(
        2,
        MoeLayerConfig::new()
            .with_num_experts(8)
            .with_routing(RoutingPolicy::Threshold { tau: 0.4 }),
    );
    // Points around 8 random centres.
    let centres = random_tensor::<TestBackend, 2>(&mut rng(10), [8, 6], 3.0, &device);
    let cluster_of = |n: usize, seed: u64| {
        let ids: Vec<i64> = (0..n)
            .map(|i| ((i * 7 + seed as usize) % 8) as i64)
            .collect();
        let ids = Tensor::<TestBackend, 1, burn::tensor::Int>::from_data(
            burn::tensor::TensorData::new(ids, [n]),
            &device,
        );
        centres.clone().select(0, ids)
            + random_tensor::<TestBackend, 2>(&mut rng(seed), [n, 6], 1.0, &device)
    };
    let passes = |x| model.forward_blocks(x).1;
    let train = passes(cluster_of(2048, 11));
    let test = passes(cluster_of(512, 12));

    let features: Vec<f32> = train[0].normed.to_data().iter::<f32>().collect();
    let targets = choice_targets(train[1].routing.as_ref().unwrap());
    let data = DistillData {
        features: &features,
        targets: &targets,
        d_model: 16,
        num_experts: 8,
    };
    let head = GatingHeadConfig::new(16, 8)
        .with_hidden(32)
        .init::<Train>(5, &device);
    let config = DistillConfig::new()
        .with_epochs(15)
        .with_batch_size(64)
        .with_learning_rate(1e-2);
    let (head, report) = distill(head, &data, &config, &device, |_, _| {
        ControlFlow::Continue(())
    });
    let (first, last) = (report.losses[0], *report.losses.last().unwrap());
    assert_eq!(report.losses.len(), 16);
    assert!(last < 0.7 * first, "loss {first} -> {last}");

    let real = HostRouting::from_routing(test[1].routing.as_ref().unwrap());
    let gated = head.valid().predict(test[0].normed.clone());
    let frequent = FrequencyBaseline::fit(
        &HostRouting::from_routing(train[1].routing.as_ref().unwrap()),
        8,
    )
    .predict(real.len());
    let score = |predicted: &HostRouting| {
        let mut tally = PredictionTally::new(1, 1);
        tally.add(&real, predicted, None);
        tally.score()
    };
    let (gating, baseline) = (score(&gated), score(&frequent));
    assert!(
        gating.recall > baseline.recall + 0.2 && gating.top_k_hit[0] > baseline.top_k_hit[0] + 0.2,
        "gating {gating:?} vs frequency {baseline:?}"
    );
}
