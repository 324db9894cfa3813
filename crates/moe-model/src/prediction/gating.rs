//! A lightweight gating network (Pre-gated MoE, SiDA-MoE): a linear or two-layer head from block
//! `l`'s normed input to one score per expert of block `l + j`, the logit of the probability that
//! the router will choose that expert. Its predicted set is every expert with probability >= 1/2
//! (at least its best one), so a head distilled from the router ([`super::distill`]) predicts one
//! expert where the router takes one and two where it takes two.

use burn::config::Config;
use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::activation::relu;
use burn::tensor::{Tensor, TensorData, backend::Backend};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use super::cost::Cost;
use super::host::{HostRouting, rank_scores};

/// Probability from which the head predicts an expert.
pub const SET_PROBABILITY: f64 = 0.5;

/// Size of a [`GatingHead`].
#[derive(Config, Debug)]
pub struct GatingHeadConfig {
    /// Width of the source block's input (the model's d).
    pub d_model: usize,
    /// Experts of the target block (E).
    pub num_experts: usize,
    /// Hidden width of the two-layer head (ReLU); 0 is a linear head. The default, 64, is
    /// where the task model's heads stop gaining much (linear heads fall 13 to 28 points of
    /// recall behind, docs/log/design-notes.md).
    #[config(default = 64)]
    pub hidden: usize,
}

impl GatingHeadConfig {
    /// A head with weights drawn from U(-1/sqrt(fan_in), 1/sqrt(fan_in)) by a generator seeded
    /// with `seed` (on the host: the same seed gives the same head on every backend), zero biases.
    pub fn init<B: Backend>(&self, seed: u64, device: &B::Device) -> GatingHead<B> {
        let mut rng = StdRng::seed_from_u64(seed);
        let (hidden, last_in) = match self.hidden {
            0 => (None, self.d_model),
            width => (Some(linear(self.d_model, width, &mut rng, device)), width),
        };
        GatingHead {
            hidden,
            output: linear(last_in, self.num_experts, &mut rng, device),
        }
    }

    /// Parameters and multiply-add FLOPs per token of one head.
    pub fn cost(&self) -> Cost {
        let (d, h, e) = (self.d_model, self.hidden, self.num_experts);
        let params = match h {
            0 => d * e + e,
            h => d * h + h + h * e + e,
        };
        let multiplies = match h {
            0 => d * e,
            h => d * h + h * e,
        };
        Cost {
            params,
            flops_per_token: 2.0 * multiplies as f64,
        }
    }
}

/// A linear layer `fan_in -> fan_out` with seeded uniform weights and a zero bias.
fn linear<B: Backend>(
    fan_in: usize,
    fan_out: usize,
    rng: &mut StdRng,
    device: &B::Device,
) -> Linear<B> {
    let bound = 1.0 / (fan_in as f32).sqrt();
    let weights: Vec<f32> = (0..fan_in * fan_out)
        .map(|_| rng.random_range(-bound..bound))
        .collect();
    Linear {
        weight: Param::from_tensor(Tensor::from_data(
            TensorData::new(weights, [fan_in, fan_out]),
            device,
        )),
        bias: Some(Param::from_tensor(Tensor::zeros([fan_out], device))),
    }
}

/// Scores block `l + j`'s experts from block `l`'s normed input.
#[derive(Module, Debug)]
pub struct GatingHead<B: Backend> {
    /// The hidden layer of a two-layer head (`None`: linear).
    pub hidden: Option<Linear<B>>,
    /// The layer giving one score per expert.
    pub output: Linear<B>,
}

impl<B: Backend> GatingHead<B> {
    /// Expert scores (logits of the predicted routing distribution).
    ///
    /// # Shapes
    /// - `x`: `[T, d]` -> `[T, E]`
    pub fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let x = match &self.hidden {
            Some(hidden) => relu(hidden.forward(x)), // [T, H]
            None => x,
        };
        self.output.forward(x) // [T, E]
    }
}

impl<B: Backend> GatingHead<B> {
    /// The predicted routing on the host: experts ranked by score, and the set of those with
    /// probability >= [`SET_PROBABILITY`] (at least the best one).
    ///
    /// # Shapes
    /// - `x`: `[T, d]`
    pub fn predict(&self, x: Tensor<B, 2>) -> HostRouting {
        let logits = self.forward(x); // [T, E]
        let [_, num_experts] = logits.dims();
        let scores: Vec<f32> = logits.into_data().iter::<f32>().collect();
        let ranking = rank_scores(&scores, num_experts);
        // sigmoid(z) >= p  <=>  z >= logit(p)
        let min_logit = (SET_PROBABILITY / (1.0 - SET_PROBABILITY)).ln() as f32;
        let sets = ranking
            .iter()
            .zip(scores.chunks(num_experts.max(1)))
            .map(|(ranked, row)| {
                let likely = ranked.iter().take_while(|&&e| row[e] >= min_logit).count();
                ranked[..likely.max(1).min(ranked.len())].to_vec()
            })
            .collect();
        HostRouting { sets, ranking }
    }
}
