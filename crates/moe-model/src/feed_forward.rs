//! The two-layer feed-forward shared by the dense MLP and every expert.

use burn::tensor::activation::{gelu, silu};
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
