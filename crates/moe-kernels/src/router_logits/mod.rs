//! The router's logits, `logits = x @ w_gate` (`[T, d] @ [d, E]`), one token's cubes per token.
//! A general GEMM tile for one token and eight experts reduces all of `d` in one cube (Burn's
//! matmul took 31 us for a Mixtral token on an H100, a fifth of the layer's memory floor); this
//! kernel splits the reduction over the units of each token's cubes. Every token is summed the
//! same way whatever the batch, so the model uses it at every batch size (a token routes alike
//! alone and in a batch); every token's cubes re-read the gate, from L2 at large batches. Its
//! specification is [`reference`].

pub mod kernel;
mod launch;
pub mod reference;
#[cfg(test)]
mod tests;

pub use launch::{GateShape, router_logits, router_logits_into};
