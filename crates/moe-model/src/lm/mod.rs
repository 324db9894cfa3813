//! A byte-level GPT whose feed-forward blocks are the crate's dense MLPs or MoE layers
//! (issue #32): pre-norm blocks of causal multi-head attention with rotary positions and a
//! feed-forward, a tied or separate LM head, and a key/value cache for decoding.

pub mod attention;
pub mod cache;
pub mod config;
mod counts;
pub mod model;
#[cfg(test)]
mod tests;

pub use attention::CausalSelfAttention;
pub use cache::{KvCache, LayerKv};
pub use config::LmConfig;
pub use model::{Lm, LmBlock, LmOutput};
