//! The two-layer feed-forward shared by the dense MLP and every expert.

use burn::tensor::activation::{gelu, silu};
use burn::tensor::{Tensor, backend::Backend};
use serde::{Deserialize, Serialize};

/// Nonlinearity of an MLP: SwiGLU (gated, LLaMA/Mixtral style) or GELU.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    /// `silu(x W_gate) * (x W_up)`: two input projections, stored side by side.
    #[default]
    SwiGlu,
    /// `gelu(x W_in)`: one input projection.
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
}

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
    let hidden = match activation {
        Activation::SwiGlu => {
            let [gate, up] = projected
                .chunk(2, 1)
                .try_into()
                .expect("SwiGLU splits in two");
            silu(gate) * up // [n, F]
        }
        Activation::Gelu => gelu(projected), // [n, F]
    };
    hidden.matmul(w_out) // [n, d]
}
