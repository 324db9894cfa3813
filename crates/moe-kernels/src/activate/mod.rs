//! The experts' activation as its own kernel, for the training forward: the input projection's
//! pre-activations are kept for the backward, so the grouped GEMM writes them and this kernel
//! turns the routed rows into hidden rows (`hidden = act(pre)`, SwiGLU or GELU). Its
//! specification is `Activation::hidden_f64`.

pub mod kernel;
mod launch;
#[cfg(test)]
mod tests;

pub use launch::{ActivateShape, activate_rows, activate_rows_into};
