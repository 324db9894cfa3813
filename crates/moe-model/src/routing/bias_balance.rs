//! Auxiliary-loss-free load balancing (DeepSeek-V3, Wang et al. 2024): a per-expert bias added to
//! the router logits that select experts, never to the weights that mix their outputs. After each
//! training step the bias of every expert above the mean load goes down by `rate` and that of
//! every expert below it goes up, so no gradient fights the task loss. Frozen at inference.

use burn::module::{Module, RunningState};
use burn::tensor::{Int, Tensor, backend::Backend};

use crate::precision::in_dtype;

/// The selection bias of one layer's experts, stored with the model.
#[derive(Module, Debug)]
pub struct ExpertBias<B: Backend> {
    /// Added to the logits before the routing policy picks experts. `[E]`
    pub bias: RunningState<Tensor<B, 1>>,
    #[module(skip)]
    rate: f64,
}

impl<B: Backend> ExpertBias<B> {
    /// A zero bias over `num_experts` experts, stepped by `rate` per training step.
    pub fn new(num_experts: usize, rate: f64, device: &B::Device) -> Self {
        Self {
            bias: RunningState::new(Tensor::zeros([num_experts], device)),
            rate,
        }
    }

    /// The logits the policy selects experts by: `logits + bias`, outside the autodiff graph.
    ///
    /// # Shapes
    /// - `logits`: `[T, E]` -> `[T, E]`
    pub fn selection_logits(&self, logits: Tensor<B, 2>) -> Tensor<B, 2> {
        let bias = self.bias.value_sync().to_device(&logits.device()); // [E]
        let bias = in_dtype(bias, logits.dtype()); // the router decides in f32
        logits.detach() + bias.unsqueeze_dim(0)
    }

    /// One step toward equal load after a training step that routed `expert_load` pairs to each
    /// expert (`[E]`).
    pub fn update(&self, expert_load: Tensor<B, 1>) {
        let bias = self.bias.value_sync().to_device(&expert_load.device());
        self.bias
            .update(bias_step(bias, expert_load, self.rate).detach());
    }
}

/// `bias + rate * sign(mean(load) - load)`: up for underloaded experts, down for overloaded ones.
///
/// # Shapes
/// - `bias`, `load`: `[E]` -> `[E]`
pub fn bias_step<B: Backend>(bias: Tensor<B, 1>, load: Tensor<B, 1>, rate: f64) -> Tensor<B, 1> {
    let mean = load.clone().mean(); // [1]
    bias + (mean.expand(load.shape()) - load).sign().mul_scalar(rate)
}

/// Pairs routed to each expert: a histogram of the used entries of `expert_ids`.
///
/// # Shapes
/// - `expert_ids`: `[T, K]`, -1 for unused slots -> `[E]`
pub fn expert_load<B: Backend>(expert_ids: Tensor<B, 2, Int>, num_experts: usize) -> Tensor<B, 1> {
    let ids = expert_ids.flatten::<1>(0, 1); // [T * K]
    let used = ids.clone().greater_equal_elem(0).float(); // [T * K]
    Tensor::zeros([num_experts], &used.device()).scatter(
        0,
        ids.clamp_min(0),
        used,
        burn::tensor::IndexingUpdateOp::Add,
    )
}

#[cfg(test)]
mod tests {
    use burn::tensor::TensorData;

    use super::*;
    use crate::test_support::{TestBackend, host_f64, random_values, rng};

    #[test]
    fn the_step_raises_underloaded_experts_and_lowers_overloaded_ones() {
        let device = Default::default();
        let bias = Tensor::<TestBackend, 1>::from_floats([0.5, -0.25, 0.0, 1.0], &device);
        // Mean load 4: expert 0 is over it, expert 1 under it, experts 2 and 3 exactly at it.
        let load = Tensor::<TestBackend, 1>::from_floats([7.0, 1.0, 4.0, 4.0], &device);
        let stepped = host_f64(bias_step(bias, load, 0.125));
        assert_eq!(stepped, vec![0.375, -0.125, 0.0, 1.0]);
    }

    #[test]
    fn load_counts_every_used_slot_of_random_routings() {
        let device = Default::default();
        let mut draw = rng(11);
        let (tokens, slots, experts) = (97, 3, 6);
        let ids: Vec<i64> = random_values(&mut draw, tokens * slots, 1.0)
            .iter()
            .map(|v| ((v + 1.0) * 3.5).floor() as i64 - 1) // -1..=6, -1 unused
            .map(|id| id.min(experts as i64 - 1))
            .collect();
        let mut want = vec![0.0; experts];
        for &id in &ids {
            if id >= 0 {
                want[id as usize] += 1.0;
            }
        }
        let tensor = Tensor::<TestBackend, 2, Int>::from_data(
            TensorData::new(ids, [tokens, slots]),
            &device,
        );
        assert_eq!(host_f64(expert_load(tensor, experts)), want);
        assert!(want.iter().all(|&c| c > 0.0));
    }
}
