//! Shared experts (DeepSeekMoE, Qwen-MoE): always-on experts whose output is added to the routed
//! experts' output for every token. N shared experts of width F are one MLP of width N * F (their
//! hidden units side by side, outputs summed), which is how they are stored and run.

use burn::module::Module;
use burn::tensor::{Tensor, backend::Backend};

use crate::feed_forward::Activation;
use crate::mlp::{DenseMlp, DenseMlpConfig};
use crate::precision::FloatType;

/// The always-on part of an MoE layer.
#[derive(Module, Debug)]
pub struct SharedExperts<B: Backend> {
    /// All shared experts as one MLP of width `count * width`.
    pub mlp: DenseMlp<B>,
}

impl<B: Backend> SharedExperts<B> {
    /// `count` shared experts of hidden `width` over rows of width `d_model`; `None` for none.
    pub fn new(
        count: usize,
        width: usize,
        activation: Activation,
        compute_type: Option<FloatType>,
        d_model: usize,
        device: &B::Device,
    ) -> Option<Self> {
        (count > 0).then(|| Self {
            mlp: DenseMlpConfig::new()
                .with_width(count * width)
                .with_activation(activation)
                .with_compute_type(compute_type)
                .init(d_model, device),
        })
    }

    /// The shared experts' summed output, to add to the routed output.
    ///
    /// # Shapes
    /// - `x`: `[T, d]` -> `[T, d]`
    pub fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        self.mlp.forward(x)
    }
}

#[cfg(test)]
mod tests {
    use burn::module::Param;

    use crate::test_support::{TestBackend, feed_forward_f64, host_f64, random_tensor, rng};
    use crate::{Activation, MoeLayerConfig, RoutingPolicy};

    /// The layer with shared experts minus the same layer without them is, for every token, the
    /// shared MLP computed in f64 from its weights.
    #[test]
    fn shared_output_is_added_for_every_token() {
        let device = Default::default();
        let (d, width, count) = (10, 6, 2);
        for (seed, routing) in [
            (1, RoutingPolicy::Threshold { tau: 0.6 }),
            (
                2,
                RoutingPolicy::ExpertChoice {
                    capacity_factor: 1.0,
                    max_k: 4,
                },
            ),
        ] {
            let config = MoeLayerConfig::new()
                .with_num_experts(4)
                .with_expert_width(8)
                .with_routing(routing)
                .with_shared_experts(count)
                .with_shared_expert_width(width);
            let with_shared = config.init::<TestBackend>(d, &device);
            let mut without = config
                .clone()
                .with_shared_experts(0)
                .init::<TestBackend>(d, &device);
            // Params initialise lazily: copy values, not (uninitialised) clones.
            without.router.gate.weight = Param::from_tensor(with_shared.router.gate.weight.val());
            without.experts.w_in = Param::from_tensor(with_shared.experts.w_in.val());
            without.experts.w_out = Param::from_tensor(with_shared.experts.w_out.val());

            let x = random_tensor::<TestBackend, 2>(&mut rng(seed), [33, d], 1.5, &device);
            let both = host_f64(with_shared.forward(x.clone()).output);
            let routed = host_f64(without.forward(x.clone()).output);
            let mlp = &with_shared
                .shared_experts
                .as_ref()
                .expect("shared experts")
                .mlp;
            let (w_in, w_out) = (host_f64(mlp.w_in.val()), host_f64(mlp.w_out.val()));
            assert_eq!(w_out.len(), count * width * d);
            for (token, row) in host_f64(x).chunks(d).enumerate() {
                let shared =
                    feed_forward_f64(row, &w_in, &w_out, count * width, Activation::SwiGlu);
                for o in 0..d {
                    let added = both[token * d + o] - routed[token * d + o];
                    assert!(
                        (added - shared[o]).abs() < 1e-4 * (1.0 + shared[o].abs()),
                        "{routing} token {token}: {added} vs {}",
                        shared[o]
                    );
                }
                assert!(shared.iter().any(|v| v.abs() > 1e-3));
            }
        }
    }
}
