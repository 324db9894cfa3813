//! Dispatch: groups the routed (token, slot) pairs by expert, without capacity padding, and
//! lists the grouped GEMM's tiles.

pub mod kernel;
pub(crate) mod launch;
pub mod reference;
#[cfg(test)]
pub(crate) mod tests;

pub use launch::{DispatchOnDevice, MAX_EXPERTS, dispatch, dispatch_into};
