//! Choosing the next byte from a language model's logits, on the host: greedy at temperature 0,
//! else a draw from the softmax at that temperature over the `top_k` most likely tokens.

use rand::RngExt;
use rand::rngs::StdRng;

/// How the next token is drawn (`generate`'s `--temperature` and `--top-k`).
#[derive(Clone, Copy, Debug, PartialEq, clap::Args)]
pub struct Sampling {
    /// Softmax temperature (0: always the most likely byte).
    #[arg(long, default_value_t = 0.8)]
    pub temperature: f64,
    /// Draw only among the k most likely bytes (0: all).
    #[arg(long, default_value_t = 40)]
    pub top_k: usize,
}

impl Sampling {
    /// The token drawn from `logits` (one score per vocabulary entry).
    pub fn pick(&self, logits: &[f32], rng: &mut StdRng) -> usize {
        let mut order: Vec<usize> = (0..logits.len()).collect();
        // Most likely first; ties keep the lower token first, so greedy picks are reproducible.
        order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
        if self.temperature == 0.0 {
            return order[0];
        }
        if self.top_k > 0 {
            order.truncate(self.top_k);
        }
        let top = logits[order[0]] as f64;
        let weights: Vec<f64> = order
            .iter()
            .map(|&t| ((logits[t] as f64 - top) / self.temperature).exp())
            .collect();
        let mut draw = rng.random_range(0.0..weights.iter().sum::<f64>());
        for (&token, weight) in order.iter().zip(&weights) {
            if draw < *weight {
                return token;
            }
            draw -= weight;
        }
        *order.last().expect("a vocabulary is not empty")
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn temperature_zero_takes_the_most_likely_token() {
        let sampling = Sampling {
            temperature: 0.0,
            top_k: 0,
        };
        let mut rng = StdRng::seed_from_u64(1);
        assert_eq!(sampling.pick(&[0.3, 2.5, -1.0, 2.4], &mut rng), 1);
    }

    /// Draw frequencies against the softmax of the top-k logits at the temperature, computed in
    /// f64; tokens outside the top k are never drawn.
    #[test]
    fn draws_follow_the_tempered_softmax_of_the_top_k() {
        let logits = [1.0f32, -0.5, 2.0, 0.25, 1.5];
        let sampling = Sampling {
            temperature: 0.7,
            top_k: 3,
        };
        let mut rng = StdRng::seed_from_u64(42);
        let draws = 40_000;
        let mut counts = [0usize; 5];
        for _ in 0..draws {
            counts[sampling.pick(&logits, &mut rng)] += 1;
        }
        let kept = [2usize, 4, 0];
        let z: f64 = kept.iter().map(|&t| (logits[t] as f64 / 0.7).exp()).sum();
        for t in 0..5 {
            let expected = if kept.contains(&t) {
                (logits[t] as f64 / 0.7).exp() / z
            } else {
                0.0
            };
            let got = counts[t] as f64 / draws as f64;
            assert!(
                (got - expected).abs() < 0.01,
                "token {t}: {got} vs {expected}"
            );
        }
    }
}
