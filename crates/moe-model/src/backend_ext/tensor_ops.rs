//! The MoE layer's operations in Burn tensor ops: the portable path (NdArray, and autodiff on
//! every backend) and the reference the kernel path is compared with.

use burn::tensor::activation::softmax;
use burn::tensor::{IndexingUpdateOp, Int, Tensor, TensorData, backend::Backend};
use moe_kernels::dispatch::reference::plan;
use moe_kernels::router_train::LossWeights;
use moe_kernels::{Activation, RoutingPolicy, UNUSED_SLOT};

use super::outputs::{Dispatch, ExpertRows, Routing};
use crate::feed_forward::feed_forward;
use crate::routing::balance::{load_balancing_loss, log_sum_exp, router_z_loss};
use crate::routing::expert_choice::route_expert_choice;

/// Applies `policy` to router `logits`; differentiable in the weights. Expert choice ranks the
/// tokens of the batch (`crate::routing::expert_choice`); every other policy decides per token.
///
/// # Shapes
/// - `logits`: `[T, E]`
pub fn route<B: Backend>(logits: Tensor<B, 2>, policy: &RoutingPolicy) -> Routing<B> {
    if let RoutingPolicy::ExpertChoice {
        capacity_factor,
        max_k,
    } = *policy
    {
        return route_expert_choice(logits, capacity_factor, max_k);
    }
    let [num_tokens, _] = logits.dims();
    let slots = policy.max_slots();
    let probs = softmax(logits.clone(), 1); // [T, E]
    let (top_probs, top_ids) = probs.clone().topk_with_indices(slots, 1); // [T, K]

    let used = match policy.mass_limit() {
        None => top_probs.ones_like().bool(),
        Some(limit) => {
            let sorted = top_probs.clone().detach();
            let mass_before = sorted.clone().cumsum(1) - sorted; // [T, K]
            // Slot 0 is always used: give it a mass below any limit.
            let mass_before = mass_before.slice_fill([0..num_tokens, 0..1], -1.0);
            mass_before.lower_elem(limit)
        }
    }; // [T, K]

    let kept = top_probs * used.clone().float(); // [T, K]
    let weights = kept.clone() / kept.sum_dim(1); // [T, K]
    let expert_ids = top_ids.mask_fill(used.clone().bool_not(), UNUSED_SLOT); // [T, K]
    let token_k = used.int().sum_dim(1).squeeze_dim(1); // [T]
    Routing {
        logits,
        expert_ids,
        weights,
        token_k,
    }
}

/// The softmax over each token's chosen logits: the renormalised probabilities of the chosen
/// experts, 0 in unused slots (`MoeBackend::moe_routing_weights`).
///
/// # Shapes
/// - `logits`: `[T, E]`, `expert_ids`: `[T, K]` (-1 unused) -> `[T, K]`
pub fn routing_weights<B: Backend>(
    logits: Tensor<B, 2>,
    expert_ids: Tensor<B, 2, Int>,
) -> Tensor<B, 2> {
    let used = expert_ids.clone().greater_equal_elem(0); // [T, K]
    let chosen = softmax(logits, 1).gather(1, expert_ids.clamp_min(0)); // [T, K]
    let kept = chosen.mask_fill(used.bool_not(), 0.0);
    kept.clone() / kept.sum_dim(1)
}

/// The gradient of [`routing_weights`] with respect to the logits: `w_k (g_k - sum_j w_j g_j)`
/// at each chosen expert, 0 elsewhere (`MoeBackend::moe_routing_weights_grad`).
///
/// # Shapes
/// - `weights`, `expert_ids`, `d_weights`: `[T, K]` -> `[T, E]`
pub fn routing_weights_grad<B: Backend>(
    weights: Tensor<B, 2>,
    expert_ids: Tensor<B, 2, Int>,
    d_weights: Tensor<B, 2>,
    num_experts: usize,
) -> Tensor<B, 2> {
    let [num_tokens, _] = weights.dims();
    let dot = (weights.clone() * d_weights.clone()).sum_dim(1); // [T, 1]
    let per_slot = weights * (d_weights - dot); // [T, K]; 0 in unused slots (weight 0)
    Tensor::zeros([num_tokens, num_experts], &per_slot.device()).scatter(
        1,
        expert_ids.clamp_min(0),
        per_slot,
        IndexingUpdateOp::Add,
    )
}

/// The router's weighted auxiliary loss: the Switch loss of the probabilities and the z-loss of
/// the logits (`MoeBackend::moe_router_loss`).
///
/// # Shapes
/// - `logits`: `[T, E]`, `expert_counts`: `[E]` -> `[1]`
pub fn router_loss<B: Backend>(
    logits: Tensor<B, 2>,
    expert_counts: Tensor<B, 1, Int>,
    weights: LossWeights,
) -> Tensor<B, 1> {
    load_balancing_loss(softmax(logits.clone(), 1), expert_counts).mul_scalar(weights.balance)
        + router_z_loss(logits).mul_scalar(weights.z)
}

/// `d_loss` times the gradient of [`router_loss`] with respect to the logits:
/// `p_e (balance E / N (n_e - sum_j n_j p_j) + 2 z lse) / T` for each token, N the routed pairs
/// (`MoeBackend::moe_router_loss_grad`).
///
/// # Shapes
/// - `logits`: `[T, E]`, `expert_counts`: `[E]`, `d_loss`: `[1]` -> `[T, E]`
pub fn router_loss_grad<B: Backend>(
    logits: Tensor<B, 2>,
    expert_counts: Tensor<B, 1, Int>,
    weights: LossWeights,
    d_loss: Tensor<B, 1>,
) -> Tensor<B, 2> {
    let [num_tokens, num_experts] = logits.dims();
    let probs = softmax(logits.clone(), 1); // [T, E]
    let counts = expert_counts.float().unsqueeze_dim::<2>(0); // [1, E]
    let pairs = counts.clone().sum().clamp_min(1.0).reshape([1, 1]);
    let balance = pairs
        .recip()
        .mul_scalar(weights.balance * num_experts as f64); // [1, 1]
    let load = (probs.clone() * counts.clone()).sum_dim(1); // [T, 1]
    let per_expert = (counts - load) * balance + log_sum_exp(logits).mul_scalar(2.0 * weights.z);
    probs * per_expert * d_loss.reshape([1, 1]).div_scalar(num_tokens as f64)
}

/// Plans the dispatch of `expert_ids` on the host (a device round trip) and uploads the plan.
///
/// # Shapes
/// - `expert_ids`: `[T, K]`, -1 for unused slots
pub fn dispatch<B: Backend>(
    expert_ids: Tensor<B, 2, Int>,
    num_experts: usize,
    tile_rows: usize,
) -> Dispatch<B> {
    let [num_tokens, slots] = expert_ids.dims();
    let device = expert_ids.device();
    let ids = expert_ids.into_data().convert::<i32>();
    let plan = plan(
        ids.as_slice::<i32>().expect("i32 data"),
        num_experts,
        tile_rows,
    );
    let int = |values: Vec<i32>| {
        let len = values.len();
        Tensor::<B, 1, Int>::from_data(TensorData::new(values, [len]), &device)
    };
    let num_tile_slots = plan.tiles.len();
    Dispatch {
        expert_offsets: int(plan.expert_offsets),
        routed_pairs: int(plan.routed_pairs),
        row_of_pair: int(plan.row_of_pair).reshape([num_tokens, slots]),
        tiles: int(plan.tiles.concat()).reshape([num_tile_slots, 2]),
        num_tiles: int(vec![plan.num_tiles]),
        tile_rows,
    }
}

/// Runs expert `e` on its rows for every expert with rows (one matmul pair each, after one host
/// read of the E + 1 offsets); empty experts cost nothing. Returns one block of S rows.
///
/// # Shapes
/// - `x`: `[T, d]`, `w_in`: `[E, d, input_columns(F)]`, `w_out`: `[E, F, d]`
pub fn experts<B: Backend>(
    x: Tensor<B, 2>,
    dispatch: &Dispatch<B>,
    w_in: Tensor<B, 3>,
    w_out: Tensor<B, 3>,
    activation: Activation,
) -> ExpertRows<B> {
    let offsets = host_offsets(dispatch);
    let num_rows = *offsets.last().expect("E + 1 offsets");
    let rows = routed_inputs(x, true, dispatch, num_rows); // [S, d]
    let outputs: Vec<Tensor<B, 2>> = offsets
        .windows(2)
        .enumerate()
        .filter(|(_, range)| range[1] > range[0])
        .map(|(expert, range)| {
            let expert_rows = rows.clone().slice([range[0]..range[1]]); // [n_e, d]
            let w_in = w_in.clone().slice([expert..expert + 1]).squeeze_dim(0); // [d, c*F]
            let w_out = w_out.clone().slice([expert..expert + 1]).squeeze_dim(0); // [F, d]
            feed_forward(expert_rows, w_in, w_out, activation)
        })
        .collect();
    ExpertRows {
        blocks: Tensor::cat(outputs, 0).unsqueeze_dim(0), // [1, S, d]
    }
}

/// The E + 1 expert offsets of `dispatch`, read to the host (the tensor ops' round trip).
pub(crate) fn host_offsets<B: Backend>(dispatch: &Dispatch<B>) -> Vec<usize> {
    dispatch
        .expert_offsets
        .to_data()
        .iter::<i64>()
        .map(|v| v as usize)
        .collect()
}

/// The routed rows' inputs in dispatch order: token rows of `a` (`gather`) or its first S rows.
pub(crate) fn routed_inputs<B: Backend>(
    a: Tensor<B, 2>,
    gather: bool,
    dispatch: &Dispatch<B>,
    num_rows: usize,
) -> Tensor<B, 2> {
    if gather {
        let [_, slots] = dispatch.row_of_pair.dims();
        let pairs = dispatch.routed_pairs.clone().slice([0..num_rows]); // [S]
        a.select(0, pairs.div_scalar(slots as i64))
    } else {
        a.slice([0..num_rows])
    }
}

/// `out[row] = a[source of row] @ w[e]` (or `@ w[e]^T` when `transposed`) for every routed
/// row, one matmul per expert with rows; `[P, columns]` with zeros past the S routed rows.
///
/// # Shapes
/// - `a`: `[T, depth]` (gather) or `[>= S, depth]`; `weights`: `[E, depth, columns]`, or
///   `[E, columns, depth]` when `transposed`
pub fn expert_matmul<B: Backend>(
    a: Tensor<B, 2>,
    gather: bool,
    dispatch: &Dispatch<B>,
    weights: Tensor<B, 3>,
    transposed: bool,
) -> Tensor<B, 2> {
    let [num_pairs] = dispatch.routed_pairs.dims();
    let [_, rows_dim, cols_dim] = weights.dims();
    let columns = if transposed { rows_dim } else { cols_dim };
    let offsets = host_offsets(dispatch);
    let num_rows = *offsets.last().expect("E + 1 offsets");
    let inputs = routed_inputs(a.clone(), gather, dispatch, num_rows); // [S, depth]
    let mut blocks: Vec<Tensor<B, 2>> = offsets
        .windows(2)
        .enumerate()
        .filter(|(_, range)| range[1] > range[0])
        .map(|(expert, range)| {
            let w = weights.clone().slice([expert..expert + 1]).squeeze_dim(0);
            let w = if transposed { w.transpose() } else { w }; // [depth, columns]
            inputs.clone().slice([range[0]..range[1]]).matmul(w)
        })
        .collect();
    if num_rows < num_pairs {
        blocks.push(Tensor::zeros(
            [num_pairs - num_rows, columns],
            (&a.device(), a.dtype()),
        ));
    }
    Tensor::cat(blocks, 0)
}

/// `grad[e] = a_e^T @ b_e` over the rows of every expert (zeros for an expert without rows): the
/// experts' weight gradients.
///
/// # Shapes
/// - `a`: `[T, m]` (gather) or `[>= S, m]`; `b`: `[>= S, n]` in dispatch order
/// - returns `[E, m, n]`
pub fn expert_weight_grad<B: Backend>(
    a: Tensor<B, 2>,
    gather: bool,
    b: Tensor<B, 2>,
    dispatch: &Dispatch<B>,
) -> Tensor<B, 3> {
    let [_, m] = a.dims();
    let [_, n] = b.dims();
    let offsets = host_offsets(dispatch);
    let num_rows = *offsets.last().expect("E + 1 offsets");
    let inputs = routed_inputs(a.clone(), gather, dispatch, num_rows); // [S, m]
    let grads: Vec<Tensor<B, 3>> = offsets
        .windows(2)
        .map(|range| {
            let grad = if range[1] > range[0] {
                let a_e = inputs.clone().slice([range[0]..range[1]]);
                let b_e = b.clone().slice([range[0]..range[1]]);
                a_e.transpose().matmul(b_e) // [m, n]
            } else {
                Tensor::zeros([m, n], (&a.device(), a.dtype()))
            };
            grad.unsqueeze_dim(0)
        })
        .collect();
    Tensor::cat(grads, 0)
}

/// `out[t] = sum_s weights[t, s] * rows[row_of_pair[t, s]]` by a gather of each pair's row
/// (unused slots read row 0 with weight 0); differentiable in the rows and the weights.
///
/// # Shapes
/// - `rows.blocks`: `[splits, R, d]` with rows in dispatch order, `weights`: `[T, K]`
/// - returns `[T, d]`
pub fn combine<B: Backend>(
    rows: ExpertRows<B>,
    weights: Tensor<B, 2>,
    dispatch: &Dispatch<B>,
) -> Tensor<B, 2> {
    let [_, num_rows, d_model] = rows.blocks.dims();
    let [num_tokens, slots] = weights.dims();
    let rows = rows
        .blocks
        .sum_dim(0)
        .reshape([num_rows, d_model])
        .cast(weights.dtype()); // [R, d]
    let row_of_pair = dispatch.row_of_pair.clone().reshape([num_tokens * slots]); // [T*K]
    let used = row_of_pair.clone().greater_equal_elem(0); // [T*K]
    let pair_rows = rows.select(0, row_of_pair.clamp_min(0)); // [T*K, d]
    let pair_weights = weights
        .reshape([num_tokens * slots])
        .mask_fill(used.bool_not(), 0.0); // [T*K]
    let weighted = pair_rows * pair_weights.unsqueeze_dim(1); // [T*K, d]
    weighted
        .reshape([num_tokens, slots, d_model])
        .sum_dim(1)
        .reshape([num_tokens, d_model])
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Tensor, TensorData};
    use moe_kernels::route::reference;

    use super::*;
    use crate::test_support::{TestBackend, host_f64, host_i64, random_values, rng};

    /// Routes random logits with tensor ops and with the f64 reference; ids and k must match
    /// exactly, weights to f32 precision.
    fn check_against_reference(
        policy: RoutingPolicy,
        num_tokens: usize,
        num_experts: usize,
        seed: u64,
    ) {
        let device = Default::default();
        let logits = random_values(&mut rng(seed), num_tokens * num_experts, 4.0);
        let tensor = Tensor::<TestBackend, 2>::from_data(
            TensorData::new(logits.clone(), [num_tokens, num_experts]),
            &device,
        );
        let routing = route(tensor, &policy);
        let expected = reference::route(&logits, num_experts, &policy);

        let ids: Vec<i32> = host_i64(routing.expert_ids)
            .into_iter()
            .map(|v| v as i32)
            .collect();
        let token_k: Vec<usize> = host_i64(routing.token_k)
            .into_iter()
            .map(|v| v as usize)
            .collect();
        assert_eq!(ids, expected.expert_ids, "{policy}");
        assert_eq!(token_k, expected.token_k, "{policy}");
        for (got, want) in host_f64(routing.weights).iter().zip(&expected.weights) {
            assert!(
                (got - want).abs() < 1e-5,
                "{policy}: weight {got} vs {want}"
            );
        }
    }

    #[test]
    fn every_policy_matches_the_reference_on_random_logits() {
        let policies = [
            RoutingPolicy::TopK { k: 1 },
            RoutingPolicy::TopK { k: 2 },
            RoutingPolicy::TopK { k: 8 },
            RoutingPolicy::Threshold { tau: 0.0 },
            RoutingPolicy::Threshold { tau: 0.5 },
            RoutingPolicy::Threshold { tau: 0.9 },
            RoutingPolicy::Threshold { tau: 1.0 },
            RoutingPolicy::TopP { p: 0.5, max_k: 4 },
            RoutingPolicy::TopP { p: 0.9, max_k: 8 },
            RoutingPolicy::TopP { p: 1.0, max_k: 3 },
        ];
        for (seed, policy) in policies.into_iter().enumerate() {
            check_against_reference(policy, 257, 8, seed as u64);
        }
        check_against_reference(RoutingPolicy::Threshold { tau: 0.3 }, 64, 64, 99);
    }

    #[test]
    fn weights_of_every_token_sum_to_one_and_unused_slots_weigh_nothing() {
        let device = Default::default();
        let logits = random_values(&mut rng(5), 100 * 6, 3.0);
        let tensor =
            Tensor::<TestBackend, 2>::from_data(TensorData::new(logits, [100, 6]), &device);
        let routing = route(tensor, &RoutingPolicy::TopP { p: 0.7, max_k: 3 });
        let weights = host_f64(routing.weights);
        let ids = host_i64(routing.expert_ids);
        for (token_weights, token_ids) in weights.chunks(3).zip(ids.chunks(3)) {
            assert!((token_weights.iter().sum::<f64>() - 1.0).abs() < 1e-6);
            for (w, id) in token_weights.iter().zip(token_ids) {
                assert_eq!(*id == UNUSED_SLOT as i64, *w == 0.0);
            }
        }
    }
}
