//! Byte-level language modelling on public-domain English (issue #32): the corpus that
//! `scripts/corpus` fetches, its byte tokens, the split by document and the training windows.

pub mod corpus;
pub mod split;
pub mod tokens;
pub mod windows;

#[cfg(test)]
mod tests;
