//! What a predictor costs next to the MoE layer whose routing it predicts: parameters and
//! multiply-add FLOPs per token (2 per multiply-add, matmuls only, as the run metrics count).

use burn::module::Module;
use serde::{Deserialize, Serialize};

use crate::backend_ext::MoeBackend;
use crate::moe::MoeLayer;

/// Parameters and FLOPs per token.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Cost {
    /// Parameters (weights and biases).
    pub params: usize,
    /// FLOPs per token of the matmuls (2 x multiply-adds).
    pub flops_per_token: f64,
}

/// The MoE layer's parameters (router, every expert, shared experts) and its FLOPs per token
/// when tokens use `mean_k` experts: the router, `mean_k` experts and the shared experts.
pub fn layer_cost<B: MoeBackend>(layer: &MoeLayer<B>, mean_k: f64) -> Cost {
    let router = layer.router.num_params();
    let shared = layer.shared_experts.as_ref().map_or(0, Module::num_params);
    let per_expert = layer.experts.params_per_expert();
    Cost {
        params: layer.num_params(),
        flops_per_token: 2.0 * (router as f64 + mean_k * per_expert as f64 + shared as f64),
    }
}

/// Fate's cost for one target block: no parameters of its own (it runs the target's router,
/// `d x E`, which is resident anyway), and that router's FLOPs once more per token.
pub fn fate_cost(d_model: usize, num_experts: usize) -> Cost {
    Cost {
        params: 0,
        flops_per_token: 2.0 * (d_model * num_experts) as f64,
    }
}
