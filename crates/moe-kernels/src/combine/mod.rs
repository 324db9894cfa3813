//! Combine: each token's output is the weighted sum of its experts' output rows.

pub mod reference;
