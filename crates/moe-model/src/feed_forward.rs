//! The two-layer feed-forward shared by the dense MLP and every expert.

use burn::tensor::activation::{gelu, sigmoid, silu};
use burn::tensor::{Tensor, backend::Backend};
pub use moe_kernels::Activation;

/// `act(x W_in) W_out`: one MLP applied to a block of rows.
///
/// # Shapes
/// - `x`: `[n, d]`, `w_in`: `[d, input_columns(F)]`, `w_out`: `[F, d]`
/// - returns `[n, d]`
pub fn feed_forward<B: Backend>(
    x: Tensor<B, 2>,
    w_in: Tensor<B, 2>,
    w_out: Tensor<B, 2>,
    activation: Activation,
) -> Tensor<B, 2> {
    let projected = x.matmul(w_in); // [n, input_columns(F)]
    activate(projected, activation).matmul(w_out) // [n, d]
}

/// The hidden rows from the input projection's rows: `silu(gate) * up` or `gelu(x)`.
///
/// # Shapes
/// - `projected`: `[n, input_columns(F)]`; returns `[n, F]`
pub fn activate<B: Backend>(projected: Tensor<B, 2>, activation: Activation) -> Tensor<B, 2> {
    match activation {
        Activation::SwiGlu => {
            let [gate, up] = projected
                .chunk(2, 1)
                .try_into()
                .expect("SwiGLU splits in two");
            silu(gate) * up
        }
        Activation::Gelu => gelu(projected),
    }
}

/// The gradient of [`activate`]'s input from the gradient of its output (the hand-written
/// backward of the experts).
///
/// # Shapes
/// - `projected`: `[n, input_columns(F)]`, `d_hidden`: `[n, F]`; returns `[n, input_columns(F)]`
pub fn activate_backward<B: Backend>(
    projected: Tensor<B, 2>,
    d_hidden: Tensor<B, 2>,
    activation: Activation,
) -> Tensor<B, 2> {
    match activation {
        Activation::SwiGlu => {
            let [gate, up] = projected
                .chunk(2, 1)
                .try_into()
                .expect("SwiGLU splits in two");
            let sigmoid = sigmoid(gate.clone());
            let silu = gate.clone() * sigmoid.clone();
            // silu'(g) = s(g) (1 + g (1 - s(g)))
            let d_silu = sigmoid.clone() * (gate * (sigmoid.neg() + 1.0) + 1.0);
            let d_gate = d_hidden.clone() * up * d_silu;
            let d_up = d_hidden * silu;
            Tensor::cat(vec![d_gate, d_up], 1)
        }
        Activation::Gelu => {
            // gelu'(x) = Phi(x) + x phi(x)
            let phi = (projected.clone().powf_scalar(2.0) * -0.5).exp()
                * (1.0 / (2.0 * std::f64::consts::PI).sqrt());
            let cdf = ((projected.clone() * std::f64::consts::FRAC_1_SQRT_2).erf() + 1.0) * 0.5;
            d_hidden * (cdf + projected * phi)
        }
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Tensor, TensorData};

    use super::*;
    use crate::test_support::{TestBackend, host_f64, random_values, rng};

    /// `activate_backward` against central differences of the f64 activation
    /// (`Activation::hidden_f64`), for both activations.
    #[test]
    fn activation_backward_matches_f64_differences() {
        let (rows, width) = (5, 7);
        for activation in [Activation::SwiGlu, Activation::Gelu] {
            let columns = activation.input_columns(width);
            let mut draw = rng(3);
            let projected = random_values(&mut draw, rows * columns, 3.0);
            let d_hidden = random_values(&mut draw, rows * width, 1.0);
            let tensor = |values: &[f32], cols| {
                Tensor::<TestBackend, 2>::from_data(
                    TensorData::new(values.to_vec(), [rows, cols]),
                    &Default::default(),
                )
            };
            let got = host_f64(activate_backward(
                tensor(&projected, columns),
                tensor(&d_hidden, width),
                activation,
            ));
            let step = 1e-6;
            for r in 0..rows {
                let row: Vec<f64> = projected[r * columns..(r + 1) * columns]
                    .iter()
                    .map(|&v| v as f64)
                    .collect();
                let upstream = &d_hidden[r * width..(r + 1) * width];
                let loss = |values: &[f64]| -> f64 {
                    activation
                        .hidden_f64(values, width)
                        .iter()
                        .zip(upstream)
                        .map(|(h, &g)| h * g as f64)
                        .sum()
                };
                for c in 0..columns {
                    let mut moved = row.clone();
                    moved[c] += step;
                    let up = loss(&moved);
                    moved[c] -= 2.0 * step;
                    let numeric = (up - loss(&moved)) / (2.0 * step);
                    let analytic = got[r * columns + c];
                    assert!(
                        (numeric - analytic).abs() < 1e-5 * (1.0 + numeric.abs()),
                        "{activation:?} [{r}, {c}]: {analytic} vs {numeric}"
                    );
                }
            }
        }
    }
}
