//! What the predictors read of a model: the task model and the language model both stack
//! residual blocks whose feed-forward (dense or MoE) sees a normed residual stream, so one trait
//! lets Fate and the distilled heads run on either.

use burn::tensor::Tensor;

use crate::backend_ext::MoeBackend;
use crate::ffn::Ffn;
use crate::lm::Lm;
use crate::model::Model;
use crate::moe::MoeLayer;

/// A stack of blocks whose feed-forwards may be MoE layers.
pub trait RoutedBlocks<B: MoeBackend> {
    /// Number of blocks.
    fn num_blocks(&self) -> usize;

    /// Block `index`'s feed-forward (`None` out of range).
    fn block_ffn(&self, index: usize) -> Option<&Ffn<B>>;

    /// Block `index`'s feed-forward norm applied to `residual`: what its router would see.
    ///
    /// # Shapes
    /// - `residual`: `[T, d]` -> `[T, d]`
    fn ffn_norm(&self, index: usize, residual: Tensor<B, 2>) -> Tensor<B, 2>;

    /// Block `index`'s MoE layer (`None` for a dense block or out of range).
    fn moe_layer(&self, index: usize) -> Option<&MoeLayer<B>> {
        match self.block_ffn(index)? {
            Ffn::Moe(layer) => Some(layer),
            Ffn::Dense(_) => None,
        }
    }

    /// The MoE layers, in block order.
    fn moe_layers(&self) -> Vec<&MoeLayer<B>> {
        (0..self.num_blocks())
            .filter_map(|index| self.moe_layer(index))
            .collect()
    }
}

impl<B: MoeBackend> RoutedBlocks<B> for Model<B> {
    fn num_blocks(&self) -> usize {
        self.blocks().len()
    }

    fn block_ffn(&self, index: usize) -> Option<&Ffn<B>> {
        self.blocks().get(index).map(|block| &block.ffn)
    }

    fn ffn_norm(&self, index: usize, residual: Tensor<B, 2>) -> Tensor<B, 2> {
        self.blocks()[index].norm.forward(residual)
    }
}

impl<B: MoeBackend> RoutedBlocks<B> for Lm<B> {
    fn num_blocks(&self) -> usize {
        self.blocks().len()
    }

    fn block_ffn(&self, index: usize) -> Option<&Ffn<B>> {
        self.blocks().get(index).map(|block| &block.ffn)
    }

    fn ffn_norm(&self, index: usize, residual: Tensor<B, 2>) -> Tensor<B, 2> {
        self.blocks()[index].ffn_norm.forward(residual)
    }
}
