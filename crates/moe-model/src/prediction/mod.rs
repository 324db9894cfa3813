//! Predicting routing: which experts block `l + j` will choose (`j >= 1`), from what is known when
//! block `l` starts, so an offloading runtime can load those experts' weights while earlier blocks
//! compute (Pre-gated MoE, Fate, SiDA-MoE).
//!
//! Three predictors, one form of output ([`HostRouting`]: per token the predicted experts and the
//! ranking of all experts):
//! - [`fate`]: no training; block `l + j`'s own router (its frozen policy, bias and capacity) on
//!   block `l`'s input;
//! - [`gating`]: a small head per (target block, distance) from block `l`'s normed input, trained
//!   by [`distill`]ation on the real router's choices; it predicts the experts it gives
//!   probability >= 1/2;
//! - [`frequency`]: the target block's most frequent experts in the training data (the baseline).
//!
//! [`metrics`] scores a prediction against the real routing (recall, precision, top-k hits, per
//! token, per batch and on easy and hard points); [`cost`] puts each predictor's parameters and
//! FLOPs next to the layer's. [`crate::Model::forward_blocks`] and [`crate::Lm::forward_blocks`]
//! give each block's inputs and decision; [`RoutedBlocks`] is what the predictors read of either.

mod blocks;
pub mod cost;
pub mod distill;
pub mod fate;
pub mod frequency;
pub mod gating;
mod host;
pub mod metrics;
#[cfg(test)]
mod tests;

pub use blocks::RoutedBlocks;
pub use cost::{Cost, fate_cost, layer_cost};
pub use distill::{DistillConfig, DistillData, DistillReport, choice_targets, distill};
pub use fate::{FateInput, fate_routing};
pub use frequency::FrequencyBaseline;
pub use gating::{GatingHead, GatingHeadConfig, SET_PROBABILITY};
pub use host::{HostRouting, rank_scores};
pub use metrics::{GroupScore, PredictionScore, PredictionTally};
