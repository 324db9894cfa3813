//! Routing: router logits `[T, E]` to the chosen experts, their weights and each token's k.

pub mod reference;
