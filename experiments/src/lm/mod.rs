//! Byte-level language modelling on public-domain English: the corpus that `scripts/corpus`
//! fetches, its byte tokens, the split by document and the training windows; training, scoring in
//! bits per byte (overall, by byte class, with routing per MoE block) and generation.

pub mod byte_class;
pub mod config;
pub mod corpus;
pub mod data;
pub mod data_parallel;
#[cfg(test)]
mod data_parallel_tests;
pub mod eval;
pub mod evaluate;
pub mod generate;
pub mod memory;
pub mod metrics;
pub mod sample;
pub mod saved;
pub mod schedule;
pub mod split;
pub mod tokens;
pub mod trace;
pub mod train;
pub mod windows;

#[cfg(test)]
mod tests;
