//! The router's logits at decode sizes, `logits = x @ w_gate` (`[T, d] @ [d, E]`), for few
//! tokens. A general GEMM tile for one token and eight experts reduces all of `d` in one cube
//! (Burn's matmul took 31 us for a Mixtral token on an H100, a fifth of the layer's memory
//! floor); this kernel splits the reduction over the units of each token's cubes. Its
//! specification is [`reference`].

pub mod kernel;
mod launch;
pub mod reference;
#[cfg(test)]
mod tests;

pub use launch::{DECODE_TOKENS, GateShape, router_logits, router_logits_into};
