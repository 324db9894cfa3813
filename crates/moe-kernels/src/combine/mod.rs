//! Combine: each token's output is the weighted sum of its experts' output rows.

pub mod kernel;
mod launch;
pub mod reference;
#[cfg(test)]
mod tests;

pub use launch::{CombineShape, combine, combine_into};
