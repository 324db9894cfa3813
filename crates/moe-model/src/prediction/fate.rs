//! Prediction without training (Fate): block `l + j`'s own router applied to block `l`'s input.
//! The residual stream changes little from one block to the next, so the decision a later router
//! would make on an earlier block's input is a good guess of the decision it will make.

use serde::{Deserialize, Serialize};

use super::blocks::RoutedBlocks;
use crate::backend_ext::{MoeBackend, Routing};
use crate::model::BlockPass;

/// Which form of block `l`'s input block `l + j`'s router reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FateInput {
    /// Block `l`'s normed input, as block `l`'s own router sees it (Fate's "previous layer's
    /// gate input").
    SourceNormed,
    /// Block `l`'s residual input through block `l + j`'s own norm: what block `l + j` would see
    /// if the blocks in between added nothing.
    TargetNorm,
}

impl FateInput {
    /// The predictor's name in results: `fate` or `fate-target-norm`.
    pub fn name(&self) -> &'static str {
        match self {
            FateInput::SourceNormed => "fate",
            FateInput::TargetNorm => "fate-target-norm",
        }
    }
}

/// The decision block `target` would make for the tokens of `source` (a pass of an earlier block,
/// or of `target` itself, which gives its real decision): its router with the policy, selection
/// bias and capacity it runs with. `None` when `target` is not an MoE block or out of range.
/// Call it on an inference backend: under autodiff the routing step moves a bias or a budget.
///
/// # Shapes
/// - `source.residual`, `source.normed`: `[T, d]` -> routing `[T, K]`
pub fn fate_routing<B: MoeBackend>(
    model: &(impl RoutedBlocks<B> + ?Sized),
    source: &BlockPass<B>,
    target: usize,
    input: FateInput,
) -> Option<Routing<B>> {
    let layer = model.moe_layer(target)?;
    let x = match input {
        FateInput::SourceNormed => source.normed.clone(),
        FateInput::TargetNorm => model.ffn_norm(target, source.residual.clone()), // [T, d]
    };
    Some(layer.route(x))
}
