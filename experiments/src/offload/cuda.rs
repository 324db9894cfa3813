//! Expert offloading on CUDA: every shape of the plan with `moe_model`'s pinned-memory store
//! ([`CudaStore`]: pinned host memory, a copy stream of its own, overlapping compute), the
//! experts' values generated straight into pinned memory.

use std::sync::Arc;
use std::time::Instant;

use burn::tensor::DType;
use cubecl::cuda::CudaDevice;
use cudarc::driver::CudaContext;
use moe_model::offload::{Cuda, CudaStore, PinnedExperts};

use super::replay::StoreFactory;
use super::settings::{OffloadPlan, ShapePlan};
use super::{ExpertValues, OffloadError, ShapeResults, replay};
use crate::backend::{BackendKind, FloatType, use_float_type};
use crate::error::{ExperimentError, catch_panic};

/// How this store copies (written into the results).
const COPY_ENGINE: &str =
    "cudarc: pinned host memory, cuMemcpyHtoDAsync on a copy stream of its own, copy thread";

/// Every shape of `plan` on CUDA with the pinned-memory store.
pub fn run(
    plan: &OffloadPlan,
    dtype: FloatType,
) -> Result<(ShapeResults, String), ExperimentError> {
    let device = CudaDevice::default();
    use_float_type::<Cuda>(&device, dtype, BackendKind::Cuda)?;
    let context = CudaContext::new(0).map_err(driver("CUDA context"))?;
    let (free, _) = context.mem_get_info().map_err(driver("device memory"))?;
    for shape in &plan.shapes {
        // The resident policy holds every expert of every block on the device at once.
        let need = (shape.trace.num_blocks * shape.shape.num_experts) as f64
            * shape.shape.expert_bytes(dtype) as f64;
        if need > 0.9 * free as f64 {
            return Err(OffloadError::DeviceMemory {
                shape: shape.shape.name.clone(),
                need: crate::limits::bytes(need),
                available: crate::limits::bytes(free as f64),
            }
            .into());
        }
    }
    let mut results = Vec::new();
    for (index, shape) in plan.shapes.iter().enumerate() {
        let start = Instant::now();
        let host = Arc::new(pinned_experts(
            &context,
            shape,
            plan.settings.run.seed,
            dtype,
        )?);
        println!(
            "offload: shape {}: {} experts ({:.1} GB) in pinned host memory in {:.1} s",
            shape.shape.name,
            host.len(),
            (host.len() * host.expert_bytes()) as f64 / 1e9,
            start.elapsed().as_secs_f64()
        );
        let factory = CudaStores {
            host,
            context: context.clone(),
            device: device.clone(),
            shape: shape.clone(),
            dtype: dtype.dtype(),
        };
        let rows = catch_panic(|| {
            replay::run_shape(shape, &plan.settings.run, &factory, dtype.dtype(), &device)
        })
        .map_err(OffloadError::Device)??;
        results.push((index, rows));
    }
    Ok((results, COPY_ENGINE.to_string()))
}

/// A driver error as a one-line device error.
fn driver<E: std::fmt::Debug>(what: &'static str) -> impl Fn(E) -> OffloadError {
    move |error| OffloadError::Device(format!("{what}: {error:?}"))
}

/// Every expert of `shape`'s blocks in pinned host memory, `w_in` then `w_out` in `dtype`, with
/// [`ExpertValues`].
fn pinned_experts(
    context: &Arc<CudaContext>,
    shape: &ShapePlan,
    seed: u64,
    dtype: FloatType,
) -> Result<PinnedExperts, OffloadError> {
    let (d, f) = (shape.shape.d_model, shape.shape.expert_width);
    let bytes = (d * 2 * f * dtype.size(), f * d * dtype.size());
    let (blocks, experts) = (shape.trace.num_blocks, shape.shape.num_experts);
    let experts = PinnedExperts::new(
        context,
        blocks,
        experts,
        bytes,
        |block, expert, w_in, w_out| {
            fill(w_in, seed, block, expert, 0, d, dtype);
            fill(w_out, seed, block, expert, 1, f, dtype);
        },
    )?;
    Ok(experts)
}

/// Writes one projection's values into `out` in `dtype`, through a small staging buffer (the
/// pinned memory is write-combined: wide sequential stores only).
fn fill(
    out: &mut [u8],
    seed: u64,
    block: usize,
    expert: usize,
    which: u64,
    fan_in: usize,
    dtype: FloatType,
) {
    let size = dtype.size();
    let mut values = ExpertValues::new(seed, block, expert, which, fan_in);
    let mut staging = vec![0u8; 1 << 16];
    for dst in out.chunks_mut(staging.len()) {
        for (bytes, v) in staging[..dst.len()].chunks_exact_mut(size).zip(&mut values) {
            match dtype {
                FloatType::F32 => bytes.copy_from_slice(&v.to_le_bytes()),
                FloatType::Bf16 => bytes.copy_from_slice(&half::bf16::from_f32(v).to_le_bytes()),
                FloatType::F16 => bytes.copy_from_slice(&half::f16::from_f32(v).to_le_bytes()),
            }
        }
        dst.copy_from_slice(&staging[..dst.len()]);
    }
}

/// Makes a [`CudaStore`] per policy over the shape's pinned experts.
struct CudaStores {
    host: Arc<PinnedExperts>,
    context: Arc<CudaContext>,
    device: CudaDevice,
    shape: ShapePlan,
    dtype: DType,
}

impl StoreFactory<Cuda> for CudaStores {
    type Store = CudaStore;

    fn store(&self, slots: usize) -> Result<CudaStore, OffloadError> {
        let block = (&self.shape.block_shape(), self.shape.trace.num_blocks);
        let store = CudaStore::new(
            self.host.clone(),
            self.context.clone(),
            &self.device,
            block,
            slots,
            self.dtype,
        )?;
        Ok(store)
    }
}

#[cfg(test)]
mod tests {
    use moe_model::Activation;
    use moe_model::offload::{BlockShape, ExpertStore, OffloadEngine, OffloadPolicy, TensorStore};

    use super::*;
    use crate::offload::replay::{Inputs, routings};
    use crate::offload::synthetic::SyntheticRouting;
    use crate::offload::{host_experts, settings::ShapeSettings};

    /// Every batch's output bits of `engine` on the plan's routing.
    fn outputs<S: ExpertStore<Cuda>>(
        engine: &mut OffloadEngine<Cuda, S>,
        plan: &ShapePlan,
        device: &CudaDevice,
    ) -> Vec<Vec<u8>> {
        let inputs = Inputs::<Cuda>::new(&plan.trace, plan.shape.d_model, 1, DType::BF16, device);
        let routings = routings::<Cuda>(&plan.trace, 0, 1, DType::BF16, device);
        std::iter::once(&inputs.prefill)
            .chain(&inputs.decode)
            .zip(&routings)
            .map(|(x, routing)| {
                let out = engine.run_batch(x.clone(), routing);
                out.into_data().bytes.to_vec()
            })
            .collect()
    }

    /// The pinned store under every policy, with slots evicted and refilled between and within
    /// batches (prefill groups), gives the bits of the portable store with every expert
    /// resident: copies land where the cache says, before the kernels read them, and never
    /// overwrite a slot a queued kernel still reads.
    #[test]
    #[ignore = "needs an NVIDIA GPU: run with --include-ignored (just test-gpu)"]
    fn pinned_store_gives_the_resident_outputs_under_every_policy() {
        let device = CudaDevice::default();
        use_float_type::<Cuda>(&device, FloatType::Bf16, BackendKind::Cuda).unwrap();
        let context = CudaContext::new(0).unwrap();
        let shape = ShapeSettings {
            name: "test".into(),
            d_model: 256,
            expert_width: 512,
            num_experts: 8,
            top_k: 2,
            slots: 3,
        };
        let trace = SyntheticRouting {
            blocks: 3,
            num_experts: 8,
            top_k: 2,
            single_expert_share: 0.2,
            skew: 1.0,
            locality: 0.3,
            prefill_tokens: 300,
            decode_steps: 12,
            decode_tokens: 2,
            accuracy: 0.6,
            max_distance: 1,
            seed: 5,
        }
        .generate();
        let plan = ShapePlan {
            shape,
            trace,
            routing_source: "synthetic".into(),
            policies: vec![],
            distance: 1,
        };
        let block = BlockShape {
            num_experts: 8,
            d_model: 256,
            width: 512,
            activation: Activation::SwiGlu,
        };
        let host = host_experts(&plan, 9, DType::BF16);
        let store = TensorStore::<Cuda>::new(host, 8, &device);
        let mut reference = OffloadEngine::new(store, block, OffloadPolicy::Resident, 1).unwrap();
        reference.preload();
        let expected = outputs(&mut reference, &plan, &device);

        let pinned = Arc::new(pinned_experts(&context, &plan, 9, FloatType::Bf16).unwrap());
        for (policy, slots) in [
            (OffloadPolicy::Resident, 8),
            (OffloadPolicy::OnDemand, 2),
            (OffloadPolicy::OnDemand, 5),
            (
                OffloadPolicy::Prefetch {
                    predictor: "synthetic".into(),
                },
                3,
            ),
            (OffloadPolicy::Oracle, 2),
        ] {
            let store = CudaStore::new(
                pinned.clone(),
                context.clone(),
                &device,
                (&block, plan.trace.num_blocks),
                slots,
                DType::BF16,
            )
            .unwrap();
            let mut engine = OffloadEngine::new(store, block, policy.clone(), 1).unwrap();
            if policy == OffloadPolicy::Resident {
                engine.preload();
            }
            let got = outputs(&mut engine, &plan, &device);
            for (batch, (g, e)) in got.iter().zip(&expected).enumerate() {
                assert!(g == e, "{policy} slots={slots}: batch {batch} differs");
            }
            let log = engine.store_mut().copy_log();
            assert!(log.copies > 0 && log.bytes == log.copies * 3 * 256 * 512 * 2);
        }
    }
}
