//! Routing policies and CubeCL kernels for variable-k Mixture-of-Experts layers.
//!
//! Every operation comes with a plain-Rust `reference` module: the specification the kernels and
//! the Burn tensor-op path are tested against.

pub mod dispatch;
mod error;
mod policy;
pub mod route;

pub use error::InvalidValue;
pub use policy::{RoutingPolicy, UNUSED_SLOT};
