//! The routing stage, route then dispatch: one launch for a decode batch (the two kernels fused
//! in one cube), the route kernel then the dispatch passes otherwise. Its specification is the
//! two references in sequence.

pub mod kernel;
mod launch;
#[cfg(test)]
mod tests;

pub use launch::{FUSED_UNITS, route_and_dispatch, route_and_dispatch_into};
