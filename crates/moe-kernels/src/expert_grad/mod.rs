//! Weight gradients of the expert projections for training: `dW_in[e] = X_e^T @ dGU_e` (token
//! rows gathered through the dispatch) and `dW_out[e] = H_e^T @ dRows_e`, one deterministic
//! kernel family (one cube per expert and gradient block, f32 sums, no atomics).

pub mod kernel;
mod launch;
mod params;
pub mod reference;
mod tensor_cores;
#[cfg(test)]
mod tests;

pub use launch::{
    WeightGradShape, expert_weight_grad, expert_weight_grad_into, weight_grad_config,
};
pub use params::{CUBES_PER_SM, WeightGradParams};
