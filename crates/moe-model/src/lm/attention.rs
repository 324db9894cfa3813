//! Causal multi-head self-attention with rotary positions: over whole sequences (training,
//! scoring) or appended to a key/value cache (decoding).

use burn::module::{Initializer, Module, Param};
use burn::nn::RotaryEncoding;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, Int, Tensor, backend::Backend};

use crate::init::projection;
use crate::lm::cache::LayerKv;

/// Query, key, value and output projections (no biases) of `num_heads` heads of dimension
/// `d / num_heads`; queries and keys are rotated by their position (RoPE) before the scores.
#[derive(Module, Debug)]
pub struct CausalSelfAttention<B: Backend> {
    /// Query projection. `[d, d]`
    pub w_q: Param<Tensor<B, 2>>,
    /// Key projection. `[d, d]`
    pub w_k: Param<Tensor<B, 2>>,
    /// Value projection. `[d, d]`
    pub w_v: Param<Tensor<B, 2>>,
    /// Output projection. `[d, d]`
    pub w_o: Param<Tensor<B, 2>>,
    #[module(skip)]
    num_heads: usize,
}

impl<B: Backend> CausalSelfAttention<B> {
    /// Projections drawn from N(0, 1/d), the output one scaled further by `output_scale`.
    pub fn new(d_model: usize, num_heads: usize, output_scale: f64, device: &B::Device) -> Self {
        let std = output_scale / (d_model as f64).sqrt();
        Self {
            w_q: projection([d_model, d_model], d_model, device),
            w_k: projection([d_model, d_model], d_model, device),
            w_v: projection([d_model, d_model], d_model, device),
            w_o: Initializer::Normal { mean: 0.0, std }.init([d_model, d_model], device),
            num_heads,
        }
    }

    /// Number of heads.
    pub fn num_heads(&self) -> usize {
        self.num_heads
    }

    /// Each position attends to itself and the positions before it in its own sequence.
    ///
    /// # Shapes
    /// - `x`: `[batch * T, d]`, rows of one sequence consecutive -> `[batch * T, d]`
    pub fn forward(
        &self,
        x: Tensor<B, 2>,
        batch: usize,
        rotary: &RotaryEncoding<B>,
    ) -> Tensor<B, 2> {
        let (query, key, value) = self.heads(x, batch, rotary, 0); // [batch, H, T, hd] each
        let context = attention(query, key, value, None, None, causal(true)); // [batch, H, T, hd]
        self.output(context)
    }

    /// [`CausalSelfAttention::forward`] for `t` new positions after the `past` cached ones:
    /// rotates them at positions `past..past + t`, writes their keys and values into `kv` and
    /// attends over the cached and new positions. `past + t` must not exceed the cache length.
    ///
    /// # Shapes
    /// - `x`: `[batch * t, d]` -> `[batch * t, d]`; `kv` `[batch, H, context, hd]` each
    pub fn infer(
        &self,
        x: Tensor<B, 2>,
        batch: usize,
        rotary: &RotaryEncoding<B>,
        kv: LayerKv<B>,
        past: usize,
    ) -> (Tensor<B, 2>, LayerKv<B>) {
        let (query, key, value) = self.heads(x, batch, rotary, past); // [batch, H, t, hd] each
        let [_, heads, t, head_dim] = query.dims();
        let total = past + t;
        let new = [0..batch, 0..heads, past..total, 0..head_dim];
        let kv = LayerKv {
            keys: kv.keys.slice_assign(new.clone(), key), // [batch, H, context, hd]
            values: kv.values.slice_assign(new, value),   // [batch, H, context, hd]
        };
        let key = kv.keys.clone().narrow(2, 0, total); // [batch, H, past + t, hd]
        let value = kv.values.clone().narrow(2, 0, total); // [batch, H, past + t, hd]
        // Burn documents `is_causal` for equal query and key lengths (its fallback aligns the
        // diagonal bottom-right otherwise, the fused kernels do not say): a chunk after cached
        // positions gets an explicit mask, one new position needs none.
        let context = if past == 0 {
            attention(query, key, value, None, None, causal(true))
        } else if t == 1 {
            attention(query, key, value, None, None, causal(false))
        } else {
            let mask = chunk_mask::<B>(past, t, &query.device()).expand([batch, heads, t, total]);
            attention(query, key, value, Some(mask), None, causal(false))
        }; // [batch, H, t, hd]
        (self.output(context), kv)
    }

    /// Queries, keys (rotated from position `start`) and values, split into heads.
    fn heads(
        &self,
        x: Tensor<B, 2>,
        batch: usize,
        rotary: &RotaryEncoding<B>,
        start: usize,
    ) -> (Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>) {
        let query = self.split(x.clone().matmul(self.w_q.val()), batch); // [batch, H, T, hd]
        let key = self.split(x.clone().matmul(self.w_k.val()), batch); // [batch, H, T, hd]
        let value = self.split(x.matmul(self.w_v.val()), batch); // [batch, H, T, hd]
        (rotary.apply(query, start), rotary.apply(key, start), value)
    }

    /// `[batch * T, d]` rows as `[batch, H, T, hd]` heads.
    fn split(&self, x: Tensor<B, 2>, batch: usize) -> Tensor<B, 4> {
        let [rows, d_model] = x.dims();
        let head_dim = d_model / self.num_heads;
        x.reshape([batch, rows / batch, self.num_heads, head_dim])
            .swap_dims(1, 2)
    }

    /// The heads' outputs merged back into rows and projected.
    fn output(&self, context: Tensor<B, 4>) -> Tensor<B, 2> {
        let [batch, heads, t, head_dim] = context.dims();
        let merged = context
            .swap_dims(1, 2)
            .reshape([batch * t, heads * head_dim]); // [batch * T, d]
        merged.matmul(self.w_o.val()) // [batch * T, d]
    }
}

/// Attention with the default `1/sqrt(hd)` scale, no softcap.
fn causal(is_causal: bool) -> AttentionModuleOptions {
    AttentionModuleOptions {
        scale: None,
        softcap: None,
        is_causal,
    }
}

/// `true` where query `i` (at position `past + i`) must not see key position `j > past + i`.
///
/// # Shapes
/// - -> `[1, 1, t, past + t]`
fn chunk_mask<B: Backend>(past: usize, t: usize, device: &B::Device) -> Tensor<B, 4, Bool> {
    let total = past + t;
    let rows = Tensor::<B, 1, Int>::arange(past as i64..total as i64, device)
        .reshape([t, 1])
        .expand([t, total]); // [t, past + t]
    let cols = Tensor::<B, 1, Int>::arange(0..total as i64, device)
        .reshape([1, total])
        .expand([t, total]); // [t, past + t]
    cols.greater(rows).reshape([1, 1, t, total])
}
