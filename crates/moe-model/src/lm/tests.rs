//! Tests of the language model: causality, cached decoding against the full forward (on NdArray
//! and on the kernels through wgpu), one attention layer against a plain f64 reference, a few
//! training steps, counts and validation.

use burn::backend::Autodiff;
use burn::nn::RotaryEncodingConfig;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::tensor::{Int, Tensor, TensorData, backend::Backend};
use moe_kernels::RoutingPolicy;
use rand::RngExt;
use rand::rngs::StdRng;

use super::*;
use crate::ffn::{Ffn, FfnConfig};
use crate::mlp::DenseMlpConfig;
use crate::moe::MoeLayerConfig;
use crate::test_support::{TestBackend, host_f64, random_tensor, reseeded, rng};

const VOCAB: usize = 11;
const CONTEXT: usize = 12;

fn dense() -> FfnConfig {
    FfnConfig::Dense(DenseMlpConfig::new().with_width(24))
}

fn moe(routing: RoutingPolicy) -> FfnConfig {
    FfnConfig::Moe(
        MoeLayerConfig::new()
            .with_num_experts(4)
            .with_expert_width(8)
            .with_routing(routing),
    )
}

/// d 16, 2 heads of 8, 2 blocks, 11 tokens, context 12.
fn tiny(ffn: FfnConfig) -> LmConfig {
    LmConfig::new()
        .with_vocab_size(VOCAB)
        .with_context(CONTEXT)
        .with_d_model(16)
        .with_num_heads(2)
        .with_num_blocks(2)
        .with_ffn(ffn)
}

/// The dense model, top-2 MoE, and threshold MoE in every other block with an untied head.
fn variants() -> Vec<(&'static str, LmConfig)> {
    vec![
        ("dense", tiny(dense())),
        ("top-2", tiny(moe(RoutingPolicy::TopK { k: 2 }))),
        (
            "threshold, moe_every 2, untied",
            tiny(moe(RoutingPolicy::Threshold { tau: 0.4 }))
                .with_moe_every(2)
                .with_tie_embeddings(false),
        ),
    ]
}

fn model<B: crate::MoeBackend>(config: &LmConfig, seed: u64) -> Lm<B> {
    config.validate().expect("valid test config");
    reseeded(config.init(&Default::default()), seed)
}

fn random_ids(rng: &mut StdRng, len: usize, vocab: usize) -> Vec<i64> {
    (0..len)
        .map(|_| rng.random_range(0..vocab as i64))
        .collect()
}

fn tokens<B: Backend>(ids: Vec<i64>, shape: [usize; 2]) -> Tensor<B, 2, Int> {
    Tensor::from_data(TensorData::new(ids, shape), &Default::default())
}

/// Logits of sequence `b` at position `p`.
fn at(logits: &[f64], b: usize, p: usize, t: usize) -> &[f64] {
    let start = (b * t + p) * VOCAB;
    &logits[start..start + VOCAB]
}

fn max_diff(a: &[f64], b: &[f64]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

#[test]
fn later_tokens_never_change_earlier_logits() {
    later_tokens_never_change_earlier_logits_on::<TestBackend>();
}

/// Changing the tokens after position `cut` changes no logit up to `cut` (beyond f32 rounding),
/// and every one after it.
fn later_tokens_never_change_earlier_logits_on<B: crate::MoeBackend>() {
    let (batch, t) = (2, 10);
    for (seed, (name, config)) in (10..).zip(variants()) {
        let lm = model::<B>(&config, seed);
        let ids = random_ids(&mut rng(seed), batch * t, VOCAB);
        let base = host_f64(lm.forward(tokens(ids.clone(), [batch, t])).logits);
        for cut in [0, 4, 8] {
            let mut changed = ids.clone();
            for b in 0..batch {
                for p in cut + 1..t {
                    changed[b * t + p] = (ids[b * t + p] + 1 + p as i64) % VOCAB as i64;
                }
            }
            let out = host_f64(lm.forward(tokens(changed, [batch, t])).logits);
            for b in 0..batch {
                for p in 0..t {
                    let diff = max_diff(at(&out, b, p, t), at(&base, b, p, t));
                    if p <= cut {
                        // f32 rounding only (kernels may sum in another order for other data);
                        // a causal leak moves logits by orders of magnitude more.
                        assert!(diff < 1e-5, "{name}: cut {cut}, position {p} moved {diff}");
                    } else {
                        assert!(
                            diff > 1e-4,
                            "{name}: cut {cut}, position {p} did not change"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn cached_decoding_matches_the_full_forward() {
    cached_decoding_matches_the_full_forward_on::<TestBackend>();
}

/// Prefill and decode steps through a key/value cache give the full forward's last logits; a
/// full cache and a batch mismatch are refused.
fn cached_decoding_matches_the_full_forward_on<B: crate::MoeBackend>() {
    let (batch, t) = (2, CONTEXT);
    for (seed, (name, config)) in (20..).zip(variants()) {
        let lm = model::<B>(&config, seed);
        let ids = random_ids(&mut rng(seed), batch * t, VOCAB);
        let full = host_f64(lm.forward(tokens(ids.clone(), [batch, t])).logits);
        let chunk = |range: std::ops::Range<usize>| {
            let part = (0..batch)
                .flat_map(|b| ids[b * t + range.start..b * t + range.end].to_vec())
                .collect();
            tokens::<B>(part, [batch, range.len()])
        };
        let mut cache = lm.new_cache(batch, &Default::default());
        // Prefill 5, decode 2, a chunk of 3 after a non-empty cache, decode the last 2.
        for range in [0..5, 5..6, 6..7, 7..10, 10..11, 11..12] {
            let last = range.end - 1;
            let logits = lm.infer(chunk(range.clone()), &mut cache).expect("fits");
            let logits = host_f64(logits);
            assert_eq!(cache.len(), range.end);
            for b in 0..batch {
                let diff = max_diff(&logits[b * VOCAB..(b + 1) * VOCAB], at(&full, b, last, t));
                assert!(
                    diff < 1e-5,
                    "{name}: tokens {range:?}, sequence {b}: {diff}"
                );
            }
        }
        let full_error = lm.infer(chunk(0..1), &mut cache).unwrap_err();
        assert_eq!(full_error.field, "tokens.len");
        assert_eq!(
            cache.len(),
            CONTEXT,
            "a refused call leaves the cache as it was"
        );
        let mut other = lm.new_cache(batch + 1, &Default::default());
        assert_eq!(
            lm.infer(chunk(0..2), &mut other).unwrap_err().field,
            "tokens.batch"
        );
    }
}

/// The same checks on the kernels (CubeCL on wgpu; lavapipe in CI): the MoE blocks route,
/// dispatch and multiply in the kernels, at decode sizes through their decode paths.
#[cfg(feature = "cubecl")]
mod wgpu {
    use burn_cubecl::CubeBackend;
    use cubecl::wgpu::WgpuRuntime;

    type Wgpu = CubeBackend<WgpuRuntime, f32, i32, u32>;

    #[test]
    fn later_tokens_never_change_earlier_logits_on_wgpu() {
        super::later_tokens_never_change_earlier_logits_on::<Wgpu>();
    }

    #[test]
    fn cached_decoding_matches_the_full_forward_on_wgpu() {
        super::cached_decoding_matches_the_full_forward_on::<Wgpu>();
    }
}

/// One attention layer in f64: per head, RoPE on query and key pairs `(2j, 2j + 1)` at angle
/// `position * theta^(-2j / hd)`, causal softmax of `q.k / sqrt(hd)`, weighted values, `W_o`.
fn attention_f64(
    x: &[f64],
    [batch, t, d, heads]: [usize; 4],
    weights: [&[f64]; 4],
    theta: f64,
) -> Vec<f64> {
    let [w_q, w_k, w_v, w_o] = weights;
    let hd = d / heads;
    let project = |w: &[f64], row: usize| -> Vec<f64> {
        (0..d)
            .map(|o| (0..d).map(|i| x[row * d + i] * w[i * d + o]).sum())
            .collect()
    };
    let rotate = |mut v: Vec<f64>, position: usize| -> Vec<f64> {
        for h in 0..heads {
            for j in 0..hd / 2 {
                let angle = position as f64 * theta.powf(-2.0 * j as f64 / hd as f64);
                let (a, b) = (v[h * hd + 2 * j], v[h * hd + 2 * j + 1]);
                v[h * hd + 2 * j] = a * angle.cos() - b * angle.sin();
                v[h * hd + 2 * j + 1] = a * angle.sin() + b * angle.cos();
            }
        }
        v
    };
    let mut out = Vec::new();
    for s in 0..batch {
        let rows: Vec<usize> = (s * t..(s + 1) * t).collect();
        let q: Vec<_> = (rows.iter().enumerate())
            .map(|(p, &r)| rotate(project(w_q, r), p))
            .collect();
        let k: Vec<_> = (rows.iter().enumerate())
            .map(|(p, &r)| rotate(project(w_k, r), p))
            .collect();
        let v: Vec<_> = rows.iter().map(|&r| project(w_v, r)).collect();
        for i in 0..t {
            let mut context = vec![0.0; d];
            for h in 0..heads {
                let dims = h * hd..(h + 1) * hd;
                let scores: Vec<f64> = (0..=i)
                    .map(|j| {
                        dims.clone().map(|c| q[i][c] * k[j][c]).sum::<f64>() / (hd as f64).sqrt()
                    })
                    .collect();
                let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let exps: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let total: f64 = exps.iter().sum();
                for (j, e) in exps.iter().enumerate() {
                    for c in dims.clone() {
                        context[c] += e / total * v[j][c];
                    }
                }
            }
            out.extend((0..d).map(|o| (0..d).map(|c| context[c] * w_o[c * d + o]).sum::<f64>()));
        }
    }
    out
}

#[test]
fn attention_matches_a_plain_f64_reference() {
    let device = Default::default();
    let (batch, t, d, heads, theta) = (2, 6, 8, 2, 100.0);
    let layer: CausalSelfAttention<TestBackend> =
        reseeded(CausalSelfAttention::new(d, heads, 1.0, &device), 30);
    let rotary = RotaryEncodingConfig::new(CONTEXT, d / heads)
        .with_theta(theta as f32)
        .init(&device);
    let x = random_tensor::<TestBackend, 2>(&mut rng(31), [batch * t, d], 1.5, &device);
    let got = host_f64(layer.forward(x.clone(), batch, &rotary));
    let weights = [&layer.w_q, &layer.w_k, &layer.w_v, &layer.w_o].map(|w| host_f64(w.val()));
    let want = attention_f64(
        &host_f64(x),
        [batch, t, d, heads],
        [&weights[0], &weights[1], &weights[2], &weights[3]],
        theta,
    );
    for (g, w) in got.iter().zip(&want) {
        assert!((g - w).abs() < 1e-5 * (1.0 + w.abs()), "{g} vs {w}");
    }
}

#[test]
fn loss_falls_on_a_repeated_text() {
    type B = Autodiff<TestBackend>;
    let device = Default::default();
    let config = LmConfig::new()
        .with_context(16)
        .with_d_model(32)
        .with_num_heads(2)
        .with_num_blocks(2)
        .with_ffn(moe(RoutingPolicy::TopK { k: 2 }));
    let mut lm = model::<B>(&config, 40);
    let text: Vec<i64> = b"the cat sat on the mat. "
        .repeat(4)
        .into_iter()
        .map(i64::from)
        .collect();
    let (batch, t) = (4, 16);
    let text_slice = |start: usize, len: usize| text[start..start + len].to_vec();
    let inputs: Vec<i64> = (0..batch).flat_map(|b| text_slice(5 * b, t)).collect();
    let targets: Vec<i64> = (0..batch).flat_map(|b| text_slice(5 * b + 1, t)).collect();
    let targets = Tensor::<B, 1, Int>::from_data(TensorData::new(targets, [batch * t]), &device);
    let loss_fn = CrossEntropyLossConfig::new().init(&device);
    let mut optimizer = AdamWConfig::new().init::<B, Lm<B>>();
    let mut losses = Vec::new();
    for _ in 0..25 {
        let out = lm.forward(tokens(inputs.clone(), [batch, t]));
        let logits = out.logits.reshape([batch * t, config.vocab_size]);
        let cross_entropy = loss_fn.forward(logits, targets.clone());
        losses.push(host_f64(cross_entropy.clone())[0]);
        let grads = GradientsParams::from_grads((cross_entropy + out.aux_loss).backward(), &lm);
        lm = optimizer.step(1e-2, lm, grads);
    }
    let (first, last) = (losses[0], losses[losses.len() - 1]);
    assert!(
        last < 0.6 * first,
        "cross-entropy {first} -> {last}: {losses:?}"
    );
}

#[test]
fn counts_follow_the_sizes() {
    let config = tiny(moe(RoutingPolicy::TopK { k: 2 })).with_moe_every(2);
    let lm = model::<TestBackend>(&config, 50);
    assert_eq!(lm.moe_blocks(), vec![1]);
    // Block 0 is dense of width expert_width * k = 16 (SwiGLU: d x 2F in, F x d out).
    assert!(matches!(lm.blocks()[0].ffn, Ffn::Dense(_)));
    let (d, v, e, f) = (16usize, VOCAB, 4usize, 8usize);
    let dense_mlp = d * 32 + 16 * d;
    let expert = d * 2 * f + f * d;
    let router = d * e;
    let norms = 2 * 2 * d + d;
    let total = v * d + 2 * 4 * d * d + dense_mlp + router + e * expert + norms;
    let counts = lm.param_counts(&[1.5]);
    assert_eq!(counts.total, total);
    assert_eq!(counts.active, total as f64 - 2.5 * expert as f64);
    let matmul = 2 * 4 * d * d + dense_mlp + router + d * v;
    let want = 2.0 * (matmul as f64 + 1.5 * expert as f64) + 2.0 * 4.0 * (CONTEXT * d) as f64;
    assert_eq!(lm.flops_per_token(&[1.5]), want);
}

#[test]
fn validation_names_the_field() {
    let base = || tiny(dense());
    assert!(base().validate().is_ok());
    for (config, field) in [
        (base().with_context(0), "context"),
        (base().with_num_heads(3), "num_heads"),
        (base().with_d_model(12).with_num_heads(4), "num_heads"),
        (base().with_num_heads(0), "num_heads"),
        (base().with_vocab_size(1), "vocab_size"),
        (base().with_moe_every(0), "moe_every"),
        (tiny(moe(RoutingPolicy::TopK { k: 5 })), "ffn.routing.k"),
    ] {
        let error = config.validate().expect_err(field);
        assert_eq!(error.field, field, "{error:?}");
        assert!(!error.allowed.is_empty());
    }
}
