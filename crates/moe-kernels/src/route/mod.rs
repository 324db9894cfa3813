//! Routing: router logits `[T, E]` to the chosen experts, their weights and each token's k.

pub mod expert_choice;
pub mod kernel;
pub(crate) mod launch;
pub mod reference;
mod routed_tokens;
#[cfg(test)]
pub(crate) mod tests;

pub use launch::{MAX_SLOTS, RoutedOnDevice, route, route_into};
