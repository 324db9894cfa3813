//! The key/value cache of incremental decoding: per block, the rotated keys and the values of
//! every position read so far, preallocated to the model's context.

use burn::tensor::{Tensor, backend::Backend};

use crate::InvalidValue;

/// One block's cached keys and values; positions `len..` of the cache are unused.
#[derive(Clone, Debug)]
pub struct LayerKv<B: Backend> {
    /// Keys, already rotated to their positions. `[batch, H, context, hd]`
    pub keys: Tensor<B, 4>,
    /// Values. `[batch, H, context, hd]`
    pub values: Tensor<B, 4>,
}

/// Keys and values of every block for `batch` sequences decoded together, and how many
/// positions they hold; made by `Lm::new_cache`, filled by `Lm::infer`.
#[derive(Clone, Debug)]
pub struct KvCache<B: Backend> {
    pub(super) layers: Vec<LayerKv<B>>,
    len: usize,
    batch: usize,
    context: usize,
}

impl<B: Backend> KvCache<B> {
    /// An empty cache of `num_blocks` blocks for `batch` sequences; `shape` is
    /// `[heads, context, head_dim]`.
    pub(super) fn new(
        num_blocks: usize,
        batch: usize,
        shape: [usize; 3],
        device: &B::Device,
    ) -> Self {
        let [heads, context, head_dim] = shape;
        let empty = || Tensor::zeros([batch, heads, context, head_dim], device);
        Self {
            layers: (0..num_blocks)
                .map(|_| LayerKv {
                    keys: empty(),
                    values: empty(),
                })
                .collect(),
            len: 0,
            batch,
            context,
        }
    }

    /// Positions held (the position the next token will get).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no position is held yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Sequences decoded together.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Positions still free.
    pub fn remaining(&self) -> usize {
        self.context - self.len
    }

    /// Forgets every position (the buffers are kept and overwritten).
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Checks that `[batch, t]` new tokens fit, before anything is computed.
    pub(super) fn check_fits(&self, batch: usize, t: usize) -> Result<(), InvalidValue> {
        if batch != self.batch {
            return Err(InvalidValue::new(
                "tokens.batch",
                batch,
                format!("must equal the cache's batch ({})", self.batch),
            ));
        }
        if t == 0 || t > self.remaining() {
            return Err(InvalidValue::new(
                "tokens.len",
                t,
                format!(
                    "must be in 1..={} (context {} minus {} cached positions)",
                    self.remaining(),
                    self.context,
                    self.len
                ),
            ));
        }
        Ok(())
    }

    /// Records `t` more positions.
    pub(super) fn advance(&mut self, t: usize) {
        self.len += t;
    }
}
