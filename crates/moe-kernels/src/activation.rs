//! The experts' nonlinearity, shared by the model (which stores it in configs) and the kernels
//! (whose epilogue applies it).

use serde::{Deserialize, Serialize};

/// Nonlinearity of an MLP: SwiGLU (gated, LLaMA/Mixtral style) or GELU.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    /// `silu(x W_gate) * (x W_up)`: two input projections, stored side by side.
    #[default]
    SwiGlu,
    /// `gelu(x W_in)` (exact, with erf): one input projection.
    Gelu,
}

impl Activation {
    /// Columns of the input projection for an MLP of hidden `width` (SwiGLU stores gate and up).
    pub fn input_columns(&self, width: usize) -> usize {
        match self {
            Activation::SwiGlu => 2 * width,
            Activation::Gelu => width,
        }
    }

    /// The hidden row (`[width]`) from one row of the input projection (`[input_columns]`), in
    /// f64: the specification the kernels' epilogue and the tensor-op path are tested against.
    pub fn hidden_f64(&self, projected: &[f64], width: usize) -> Vec<f64> {
        match self {
            Activation::SwiGlu => (0..width)
                .map(|c| {
                    let gate = projected[c];
                    gate / (1.0 + (-gate).exp()) * projected[width + c]
                })
                .collect(),
            Activation::Gelu => projected[..width]
                .iter()
                .map(|&x| 0.5 * x * (1.0 + erf(x / std::f64::consts::SQRT_2)))
                .collect(),
        }
    }
}

/// erf by its Maclaurin series for |x| < 3, else by the first term of its asymptotic expansion
/// (absolute error below 2e-6 there, and below 1e-12 inside).
fn erf(x: f64) -> f64 {
    let sqrt_pi = std::f64::consts::PI.sqrt();
    if x.abs() >= 3.0 {
        return x.signum() * (1.0 - (-x * x).exp() / (x.abs() * sqrt_pi));
    }
    let mut term = x;
    let mut sum = x;
    for n in 1..200 {
        term *= -x * x / n as f64;
        let next = term / (2 * n + 1) as f64;
        sum += next;
        if next.abs() < 1e-17 {
            break;
        }
    }
    sum * 2.0 / sqrt_pi
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erf_matches_known_values() {
        for (x, want) in [
            (0.5, 0.520_499_877_813_046_5),
            (-1.0, -0.842_700_792_949_714_9),
            (2.0, 0.995_322_265_018_952_7),
            (2.9, 0.999_958_902_121_900_8),
            (3.5, 0.999_999_256_901_627_7),
        ] {
            assert!((erf(x) - want).abs() < 2e-6, "erf({x}) = {}", erf(x));
        }
        assert!((erf(0.3) - 0.328_626_759_459_127_4).abs() < 1e-12);
    }
}
