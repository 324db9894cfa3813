//! Scoring a language model on a split: bits per byte overall and by byte class, and for MoE
//! blocks mean k, the share of k = 1, load balance and router entropy per block.

use std::collections::BTreeMap;
use std::time::Instant;

use burn::tensor::activation::log_softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use moe_model::MoeBackend;
use moe_model::lm::Lm;
use serde::{Deserialize, Serialize};

use crate::host::host_f64s;
use crate::lm::byte_class::{ByteClass, WordPosition};
use crate::lm::tokens::{BOUNDARY, Token, as_ids};
use crate::lm::windows::eval_windows;
use crate::routing_metrics::{LayerDecisions, LoadStats};

/// Each position's cross-entropy, in nats: `-log p(target)` under `logits`.
///
/// # Shapes
/// - `logits`: `[N, V]`, `targets`: `[N]` -> `[N]`
pub fn position_losses<B: Backend>(
    logits: Tensor<B, 2>,
    targets: Tensor<B, 1, Int>,
) -> Tensor<B, 1> {
    let [n, _] = logits.dims();
    let log_probs = log_softmax(logits, 1); // [N, V]
    log_probs
        .gather(1, targets.reshape([n, 1]))
        .reshape([n])
        .neg() // [N]
}

/// Bits per byte of the positions whose target is a byte (the document boundary is not one).
pub fn bits_per_byte(losses_nats: &[f64], targets: &[Token]) -> f64 {
    let (sum, count) = losses_nats
        .iter()
        .zip(targets)
        .filter(|&(_, &target)| target != BOUNDARY)
        .fold((0.0, 0usize), |(sum, count), (loss, _)| {
            (sum + loss, count + 1)
        });
    sum / count.max(1) as f64 / std::f64::consts::LN_2
}

/// One class's share of the scored bytes, its bits per byte and, for MoE models, the experts its
/// positions used.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClassScore {
    /// The class, e.g. `letter`, `word-start`.
    pub class: String,
    /// Share of the scored bytes in this class.
    pub share: f64,
    /// Bits per byte on this class's bytes.
    pub bits_per_byte: f64,
    /// Mean experts per MoE block of the positions predicting this class (`None`: dense).
    pub mean_k: Option<f64>,
}

/// One MoE block's routing over a split.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BlockRouting {
    /// Index of the block in the model.
    pub block: usize,
    /// Mean experts per token.
    pub mean_k: f64,
    /// Share of tokens with exactly one expert.
    pub fraction_k1: f64,
    /// How evenly the routed rows spread over the experts.
    pub load: LoadStats,
    /// Mean entropy of the router's distribution, nats.
    pub router_entropy: f64,
    /// Share of routed pairs dropped by a capacity limit.
    pub dropped_fraction: f64,
}

/// What a model scored on a split.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SplitScore {
    /// Bytes scored (positions whose target is a byte).
    pub bytes: usize,
    /// Bits per byte over them.
    pub bits_per_byte: f64,
    /// By the class of the predicted byte.
    pub by_class: Vec<ClassScore>,
    /// By the predicted byte's place in a word.
    pub by_word_position: Vec<ClassScore>,
    /// Mean experts per token over every MoE block (`None`: dense).
    pub mean_k: Option<f64>,
    /// Share of (token, block) decisions with one expert (`None`: dense).
    pub fraction_k1: Option<f64>,
    /// Each MoE block's routing, in block order (empty: dense).
    pub blocks: Vec<BlockRouting>,
    /// Tokens scored per second (forward passes and reading results back).
    pub tokens_per_s: f64,
}

/// Sums per class.
#[derive(Default)]
struct ClassTally {
    bytes: usize,
    loss_nats: f64,
    experts: usize,
}

/// Sums per MoE block.
#[derive(Default)]
struct BlockTally {
    tokens: usize,
    experts: usize,
    k1: usize,
    counts: Vec<usize>,
    entropy: f64,
    dropped: usize,
}

/// Scores `model` on consecutive windows of `stream` ([`eval_windows`]: every token after the
/// first is predicted once), on the first `max_tokens` tokens (0: all), `batch_size` windows per
/// forward pass.
pub fn score_split<B: MoeBackend>(
    model: &Lm<B>,
    stream: &[Token],
    batch_size: usize,
    max_tokens: usize,
    device: &B::Device,
) -> SplitScore {
    let limit = match max_tokens {
        0 => stream.len(),
        tokens => tokens.min(stream.len()),
    };
    // Windows of one length per batch: the full ones, then the short last one alone.
    let mut groups: Vec<Vec<(&[Token], &[Token])>> = Vec::new();
    for window in eval_windows(&stream[..limit], model.context()) {
        match groups.last_mut() {
            Some(group) if group.len() < batch_size && group[0].0.len() == window.0.len() => {
                group.push(window)
            }
            _ => groups.push(vec![window]),
        }
    }
    let mut by_class: BTreeMap<ByteClass, ClassTally> = BTreeMap::new();
    let mut by_word: BTreeMap<WordPosition, ClassTally> = BTreeMap::new();
    let mut blocks: Vec<BlockTally> = Vec::new();
    let (mut all_loss, mut all_targets) = (Vec::new(), Vec::new());
    let started = Instant::now();
    let mut tokens = 0;
    for group in groups {
        let length = group[0].0.len();
        let inputs: Vec<Token> = group.iter().flat_map(|w| w.0.iter().copied()).collect();
        let targets: Vec<Token> = group.iter().flat_map(|w| w.1.iter().copied()).collect();
        let n = targets.len();
        let input = Tensor::<B, 2, Int>::from_data(
            TensorData::new(as_ids(&inputs), [group.len(), length]),
            device,
        );
        let target_tensor =
            Tensor::<B, 1, Int>::from_data(TensorData::new(as_ids(&targets), [n]), device);
        let output = model.forward(input);
        let vocab = output.logits.dims()[2];
        let losses = host_f64s(position_losses(
            output.logits.reshape([n, vocab]),
            target_tensor,
        ));
        let decisions: Vec<LayerDecisions> = output
            .routing
            .iter()
            .map(LayerDecisions::from_stats)
            .collect();
        tokens += n;
        if blocks.is_empty() {
            blocks = decisions.iter().map(|_| BlockTally::default()).collect();
        }
        for (block, decision) in blocks.iter_mut().zip(&decisions) {
            block.tokens += n;
            block.experts += decision.token_k.iter().sum::<usize>();
            block.k1 += decision.token_k.iter().filter(|&&k| k == 1).count();
            if block.counts.is_empty() {
                block.counts = vec![0; decision.expert_counts.len()];
            }
            for (total, count) in block.counts.iter_mut().zip(&decision.expert_counts) {
                *total += count;
            }
            block.entropy += decision.router_entropy.iter().sum::<f64>();
            block.dropped += decision.dropped_pairs.iter().sum::<usize>();
        }
        for i in 0..n {
            if targets[i] == BOUNDARY {
                continue;
            }
            let experts: usize = decisions.iter().map(|d| d.token_k[i]).sum();
            for tally in [
                by_class.entry(ByteClass::of(targets[i])).or_default(),
                by_word
                    .entry(WordPosition::of(inputs[i], targets[i]))
                    .or_default(),
            ] {
                tally.bytes += 1;
                tally.loss_nats += losses[i];
                tally.experts += experts;
            }
        }
        all_loss.extend(losses);
        all_targets.extend(targets);
    }
    let seconds = started.elapsed().as_secs_f64();
    let bytes = all_targets.iter().filter(|&&t| t != BOUNDARY).count();
    let moe_blocks = blocks.len();
    let decisions: usize = blocks.iter().map(|b| b.tokens).sum();
    SplitScore {
        bytes,
        bits_per_byte: bits_per_byte(&all_loss, &all_targets),
        by_class: class_scores(&by_class, |c| c.name(), bytes, moe_blocks),
        by_word_position: class_scores(&by_word, |p| p.name(), bytes, moe_blocks),
        mean_k: (moe_blocks > 0)
            .then(|| blocks.iter().map(|b| b.experts).sum::<usize>() as f64 / decisions as f64),
        fraction_k1: (moe_blocks > 0)
            .then(|| blocks.iter().map(|b| b.k1).sum::<usize>() as f64 / decisions as f64),
        blocks: blocks
            .iter()
            .zip(model.moe_blocks())
            .map(|(tally, block)| BlockRouting {
                block,
                mean_k: tally.experts as f64 / tally.tokens as f64,
                fraction_k1: tally.k1 as f64 / tally.tokens as f64,
                load: LoadStats::from_counts(&tally.counts),
                router_entropy: tally.entropy / tally.tokens as f64,
                dropped_fraction: tally.dropped as f64
                    / (tally.experts + tally.dropped).max(1) as f64,
            })
            .collect(),
        tokens_per_s: tokens as f64 / seconds,
    }
}

/// Each class's share of `bytes`, its bits per byte and mean k over `moe_blocks` blocks.
fn class_scores<K>(
    tallies: &BTreeMap<K, ClassTally>,
    name: impl Fn(&K) -> &'static str,
    bytes: usize,
    moe_blocks: usize,
) -> Vec<ClassScore> {
    tallies
        .iter()
        .map(|(class, tally)| ClassScore {
            class: name(class).to_string(),
            share: tally.bytes as f64 / bytes.max(1) as f64,
            bits_per_byte: tally.loss_nats / tally.bytes as f64 / std::f64::consts::LN_2,
            mean_k: (moe_blocks > 0)
                .then(|| tally.experts as f64 / (tally.bytes * moe_blocks) as f64),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use burn::backend::NdArray;
    use rand::rngs::StdRng;
    use rand::{RngExt, SeedableRng};

    use super::*;

    /// A model that gives every byte the same probability (and the boundary none) scores exactly
    /// 8 bits per byte, whatever the logits' common value in each row.
    #[test]
    fn uniform_bytes_score_eight_bits() {
        let mut rng = StdRng::seed_from_u64(5);
        let n = 37;
        let mut logits = Vec::with_capacity(n * 257);
        for _ in 0..n {
            let level: f32 = rng.random_range(-3.0..3.0);
            logits.extend(std::iter::repeat_n(level, 256));
            logits.push(-1e30);
        }
        let targets: Vec<Token> = (0..n)
            .map(|i| {
                if i == 3 {
                    BOUNDARY
                } else {
                    rng.random_range(0..256)
                }
            })
            .collect();
        let device = Default::default();
        let losses = host_f64s(position_losses(
            Tensor::<NdArray, 2>::from_data(TensorData::new(logits, [n, 257]), &device),
            Tensor::<NdArray, 1, Int>::from_data(
                TensorData::new(targets.iter().map(|&t| t as i64).collect::<Vec<_>>(), [n]),
                &device,
            ),
        ));
        let bpb = bits_per_byte(&losses, &targets);
        assert!((bpb - 8.0).abs() < 1e-5, "{bpb}");
    }

    /// Position losses against a plain f64 log-softmax on random logits.
    #[test]
    fn position_losses_match_an_f64_log_softmax() {
        let mut rng = StdRng::seed_from_u64(9);
        let (n, vocab) = (6, 11);
        let logits: Vec<f32> = (0..n * vocab)
            .map(|_| rng.random_range(-4.0..4.0))
            .collect();
        let targets: Vec<i64> = (0..n).map(|_| rng.random_range(0..vocab as i64)).collect();
        let device = Default::default();
        let got = host_f64s(position_losses(
            Tensor::<NdArray, 2>::from_data(TensorData::new(logits.clone(), [n, vocab]), &device),
            Tensor::<NdArray, 1, Int>::from_data(TensorData::new(targets.clone(), [n]), &device),
        ));
        for (row, (&target, loss)) in targets.iter().zip(&got).enumerate() {
            let values: Vec<f64> = logits[row * vocab..(row + 1) * vocab]
                .iter()
                .map(|&v| v as f64)
                .collect();
            let max = values.iter().cloned().fold(f64::MIN, f64::max);
            let log_sum = max + values.iter().map(|v| (v - max).exp()).sum::<f64>().ln();
            let expected = log_sum - values[target as usize];
            assert!(
                (loss - expected).abs() < 1e-5,
                "row {row}: {loss} vs {expected}"
            );
        }
    }
}
