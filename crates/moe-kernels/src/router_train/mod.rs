//! What training adds to routing: the router's auxiliary loss (Switch load balancing plus the
//! ST-MoE z-loss) and its gradient, and the gradient of the routing weights, each with respect to
//! the router logits. Burn's tensor ops take about fifty launches per layer and training step for
//! these; the kernels take three. Their specification is [`reference`].

pub mod kernel;
mod launch;
pub mod reference;
#[cfg(test)]
mod tests;

pub use launch::{
    LossWeights, RouterShape, router_loss, router_loss_grad, router_loss_grad_into,
    routing_weights_grad, routing_weights_grad_into,
};
