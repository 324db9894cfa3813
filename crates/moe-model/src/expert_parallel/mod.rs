//! Expert parallelism: the experts of a MoE layer sharded over N ranks (GPUs), the tokens
//! exchanged all-to-all before and after the experts (issue 29). Inference.
//!
//! - `plan.rs`: which rank holds which experts ([`ExpertShards`]), the rows a rank sends to
//!   each rank, the local expert of each row received (host logic, tested against a plain
//!   reference);
//! - `exchange.rs`: the [`Exchange`] trait, the all-to-all the layer needs, apart from it;
//! - `in_process.rs`: [`InProcessExchange`], the ranks as threads of one process (tests, CPU);
//! - `layer.rs`: [`ExpertParallelLayer`], one rank's part of a `MoeLayer`, run through the
//!   layer's own pass with the experts' step replaced (`MoeLayer::pass_with`).
//!
//! An NCCL exchange (cudarc's `nccl` module, already compiled into cubecl-cuda) is the missing
//! GPU implementation of [`Exchange`]; `docs/DESIGN.md` says what it takes.

mod exchange;
mod in_process;
mod layer;
mod plan;
#[cfg(test)]
mod tests;

pub use exchange::Exchange;
pub use in_process::InProcessExchange;
pub use layer::ExpertParallelLayer;
pub use plan::{ExpertShards, block_rows, received_experts};
