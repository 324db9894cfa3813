//! The CUDA expert store: every expert in pinned host memory, one copy stream driven by a copy
//! thread through cudarc, and CubeCL slot tensors the grouped GEMM reads. The only file of the
//! offloading runtime that names CUDA.
//!
//! Why cudarc (docs/DESIGN.md, "Expert offloading", has the details): CubeCL 0.10's
//! `ComputeClient::create` copies the host data into a new pageable `Vec` and uploads that on the
//! compute stream, there is no public write into an existing buffer, and the CUDA stream behind
//! a CubeCL stream is private. What CubeCL does give: the device address of a buffer
//! (`get_resource`, stable while the handle lives), the primary context (cudarc's
//! `CudaContext::new(0)` retains the same one), and `client.sync()`, which records an event on
//! the compute stream and returns a future that waits for it, without blocking when created.
//!
//! Ordering, with no host sync on the compute path except waiting for an expert:
//! - read after write: the host enqueues a block's kernels only after the copy thread reports
//!   the copies of its experts landed (the event after them completed);
//! - write after read: each block's kernels are followed by a compute mark, a `client.sync()`
//!   future handed to the copy thread; a copy into a slot first waits (on the copy thread) for
//!   the mark of the last kernels that read the slot;
//! - copies land in the order they were started (one stream, one thread), as the cache assumes.

use std::collections::VecDeque;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use burn::tensor::{DType, Shape, Tensor, TensorPrimitive};
use burn_cubecl::CubeBackend;
use burn_cubecl::tensor::CubeTensor;
use cubecl::Runtime;
use cubecl::client::ComputeClient;
use cubecl::cuda::{CudaDevice, CudaRuntime};
use cubecl::future::{DynFut, block_on};
use cubecl::server::{Handle, ServerError};
use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::{CudaContext, PinnedHostSlice};
use moe_model::offload::{ComputeMark, Copier, CopyLog, CopyTicket, ExpertStore};

use super::replay::StoreFactory;
use super::settings::{OffloadPlan, ShapePlan};
use super::{ExpertValues, OffloadError, ShapeResults, replay};
use crate::backend::{BackendKind, FloatType, use_float_type};
use crate::error::{ExperimentError, catch_panic};

/// The CUDA backend of the measurement (no fusion: the MoE kernels are reachable from it).
type Cuda = CubeBackend<CudaRuntime, f32, i32, u8>;

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
        let host = Arc::new(PinnedExperts::generate(
            &context,
            shape,
            plan.settings.run.seed,
            dtype,
        )?);
        println!(
            "offload: shape {}: {} experts ({:.1} GB) in pinned host memory in {:.1} s",
            shape.shape.name,
            host.ptrs.len(),
            (host.ptrs.len() * (host.w_in_bytes + host.w_out_bytes)) as f64 / 1e9,
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

/// Every expert of every block in pinned (page-locked, write-combined) host memory: one buffer
/// per expert holding `w_in` then `w_out`, in the run's float type.
struct PinnedExperts {
    /// Owns the memory `ptrs` point into.
    _buffers: Vec<PinnedHostSlice<u8>>,
    /// Host address of each buffer, `[block * E + expert]`.
    ptrs: Vec<usize>,
    num_experts: usize,
    w_in_bytes: usize,
    w_out_bytes: usize,
}

impl PinnedExperts {
    /// Allocates and fills the experts of `shape` with [`ExpertValues`], in parallel.
    fn generate(
        context: &Arc<CudaContext>,
        shape: &ShapePlan,
        seed: u64,
        dtype: FloatType,
    ) -> Result<Self, OffloadError> {
        let (d, f) = (shape.shape.d_model, shape.shape.expert_width);
        let (w_in_bytes, w_out_bytes) = (d * 2 * f * dtype.size(), f * d * dtype.size());
        let count = shape.trace.num_blocks * shape.shape.num_experts;
        let mut buffers = (0..count)
            .map(|_| {
                // SAFETY: the memory is filled below before anything reads it.
                unsafe { context.alloc_pinned::<u8>(w_in_bytes + w_out_bytes) }
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(driver("pinned host memory"))?;
        let mut slices = buffers
            .iter_mut()
            .map(|b| b.as_mut_slice())
            .collect::<Result<Vec<&mut [u8]>, _>>()
            .map_err(driver("pinned host memory"))?;
        let ptrs: Vec<usize> = slices.iter().map(|s| s.as_ptr() as usize).collect();
        let threads = std::thread::available_parallelism().map_or(4, |n| n.get());
        let per_thread = count.div_ceil(threads);
        let experts = shape.shape.num_experts;
        std::thread::scope(|scope| {
            for (chunk_index, chunk) in slices.chunks_mut(per_thread).enumerate() {
                scope.spawn(move || {
                    for (i, buffer) in chunk.iter_mut().enumerate() {
                        let index = chunk_index * per_thread + i;
                        let (block, expert) = (index / experts, index % experts);
                        let (w_in, w_out) = buffer.split_at_mut(w_in_bytes);
                        fill(w_in, seed, block, expert, 0, d, dtype);
                        fill(w_out, seed, block, expert, 1, f, dtype);
                    }
                });
            }
        });
        drop(slices);
        Ok(Self {
            _buffers: buffers,
            ptrs,
            num_experts: experts,
            w_in_bytes,
            w_out_bytes,
        })
    }
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
        CudaStore::new(
            self.host.clone(),
            self.context.clone(),
            &self.device,
            &self.shape,
            slots,
            self.dtype,
        )
    }
}

/// How long the compute thread waits for a copy stream that makes no progress.
const STALL: Duration = Duration::from_secs(120);

/// What the compute thread asks of the copy thread.
enum Request {
    /// The compute stream's position after the kernels of a compute mark.
    Mark {
        mark: u64,
        fence: DynFut<Result<(), ServerError>>,
    },
    /// Copy `(device address, host address, bytes)` parts once compute mark `after` is done.
    Copy {
        ticket: u64,
        after: u64,
        parts: [(u64, usize, usize); 2],
    },
}

/// State the copy thread reports.
#[derive(Default)]
struct Progress {
    landed: u64,
    log: CopyLog,
    error: Option<String>,
}

/// Slot tensors of every block on the device, filled from [`PinnedExperts`] by the copy thread.
pub struct CudaStore {
    host: Arc<PinnedExperts>,
    client: ComputeClient<CudaRuntime>,
    w_in: Vec<Tensor<Cuda, 3>>,
    w_out: Vec<Tensor<Cuda, 3>>,
    /// Device address of slot 0 of each block's `(w_in, w_out)`.
    bases: Vec<(u64, u64)>,
    num_slots: usize,
    requests: Option<Sender<Request>>,
    progress: Arc<(Mutex<Progress>, Condvar)>,
    thread: Option<JoinHandle<()>>,
    next_ticket: u64,
    next_mark: u64,
}

impl CudaStore {
    fn new(
        host: Arc<PinnedExperts>,
        context: Arc<CudaContext>,
        device: &CudaDevice,
        shape: &ShapePlan,
        slots: usize,
        dtype: DType,
    ) -> Result<Self, OffloadError> {
        let client = CudaRuntime::client(device);
        let (d, f) = (shape.shape.d_model, shape.shape.expert_width);
        let mut w_in = Vec::new();
        let mut w_out = Vec::new();
        let mut bases = Vec::new();
        for _ in 0..shape.trace.num_blocks {
            let (t_in, base_in) = slot_tensor(&client, device, [slots, d, 2 * f], dtype)?;
            let (t_out, base_out) = slot_tensor(&client, device, [slots, f, d], dtype)?;
            w_in.push(t_in);
            w_out.push(t_out);
            bases.push((base_in, base_out));
        }
        // The allocations are stream-ordered on the compute stream: let them complete before
        // the copy stream writes into them.
        block_on(client.sync()).map_err(driver("slot allocation"))?;
        let (sender, receiver) = channel();
        let progress = Arc::new((Mutex::new(Progress::default()), Condvar::new()));
        let thread = {
            let progress = progress.clone();
            std::thread::Builder::new()
                .name("expert-copies".into())
                .spawn(move || copy_thread(context, receiver, progress))
                .map_err(|e| OffloadError::Device(format!("copy thread: {e}")))?
        };
        Ok(Self {
            host,
            client,
            w_in,
            w_out,
            bases,
            num_slots: slots,
            requests: Some(sender),
            progress,
            thread: Some(thread),
            next_ticket: 0,
            next_mark: 0,
        })
    }

    fn send(&self, request: Request) {
        let sent = self.requests.as_ref().map(|s| s.send(request));
        if !matches!(sent, Some(Ok(()))) {
            panic!("{}", self.failure());
        }
    }

    /// Why the copy thread stopped.
    fn failure(&self) -> String {
        let state = self.progress.0.lock().unwrap_or_else(|e| e.into_inner());
        format!(
            "expert copy thread failed: {}",
            state.error.as_deref().unwrap_or("it stopped")
        )
    }

    /// Blocks until copy `ticket` has landed. A copy stream that makes no progress for
    /// [`STALL`] ends the run with an error rather than hanging.
    fn wait_landed(&self, ticket: u64) -> CopyLog {
        let (lock, landed) = &*self.progress;
        let mut state = lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut last = (state.landed, Instant::now());
        while state.landed < ticket {
            if let Some(error) = &state.error {
                panic!("expert copy thread failed: {error}");
            }
            if state.landed != last.0 {
                last = (state.landed, Instant::now());
            } else if last.1.elapsed() > STALL {
                panic!(
                    "expert copies stalled: copy {ticket} waited for, {} landed, none for {} s",
                    state.landed,
                    STALL.as_secs()
                );
            }
            state = landed
                .wait_timeout(state, Duration::from_secs(1))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        state.log
    }
}

/// A zero-copy view of a new device buffer of `shape` as a Burn tensor, and its device address.
fn slot_tensor(
    client: &ComputeClient<CudaRuntime>,
    device: &CudaDevice,
    shape: [usize; 3],
    dtype: DType,
) -> Result<(Tensor<Cuda, 3>, u64), OffloadError> {
    let bytes = shape.iter().product::<usize>() * dtype.size();
    let handle: Handle = client.empty(bytes);
    let address = client
        .get_resource(handle.clone())
        .map_err(driver("slot buffer address"))?
        .resource()
        .ptr;
    let primitive = CubeTensor::new_contiguous(
        client.clone(),
        device.clone(),
        Shape::from(shape),
        handle,
        dtype,
    );
    Ok((
        Tensor::from_primitive(TensorPrimitive::Float(primitive)),
        address,
    ))
}

/// The copy thread: waits for compute marks where a copy needs them, copies on its stream,
/// reports each landed copy (in order) with its device time.
fn copy_thread(
    context: Arc<CudaContext>,
    requests: Receiver<Request>,
    progress: Arc<(Mutex<Progress>, Condvar)>,
) {
    let mut marks: VecDeque<(u64, DynFut<Result<(), ServerError>>)> = VecDeque::new();
    let outcome = (|| -> Result<(), String> {
        context.bind_to_thread().map_err(|e| format!("{e:?}"))?;
        let stream = context
            .new_stream()
            .map_err(|e| format!("copy stream: {e:?}"))?;
        let timing = Some(CUevent_flags::CU_EVENT_DEFAULT);
        let mut done_mark = 0;
        for request in requests {
            match request {
                Request::Mark { mark, fence } => marks.push_back((mark, fence)),
                Request::Copy {
                    ticket,
                    after,
                    parts,
                } => {
                    while done_mark < after {
                        let (mark, fence) = marks
                            .pop_front()
                            .ok_or("a copy waits for a compute mark that was never made")?;
                        block_on(fence).map_err(|e| format!("compute mark: {e:?}"))?;
                        done_mark = mark;
                    }
                    let start = stream.record_event(timing).map_err(|e| format!("{e:?}"))?;
                    for (device_address, host_address, bytes) in parts {
                        // SAFETY: the host range lies in a live pinned buffer (the store keeps
                        // the experts alive), the device range in a live slot tensor of the
                        // store, and no kernel reads it until this copy is reported landed.
                        unsafe {
                            let source =
                                std::slice::from_raw_parts(host_address as *const u8, bytes);
                            cudarc::driver::result::memcpy_htod_async(
                                device_address,
                                source,
                                stream.cu_stream(),
                            )
                        }
                        .map_err(|e| format!("host-to-device copy: {e:?}"))?;
                    }
                    let end = stream.record_event(timing).map_err(|e| format!("{e:?}"))?;
                    end.synchronize().map_err(|e| format!("{e:?}"))?;
                    let elapsed = start.elapsed_ms(&end).map_err(|e| format!("{e:?}"))?;
                    let (lock, landed) = &*progress;
                    let mut state = lock.lock().unwrap_or_else(|e| e.into_inner());
                    state.landed = ticket;
                    state.log.copies += 1;
                    state.log.bytes += parts.iter().map(|p| p.2).sum::<usize>();
                    state.log.copy_time += Duration::from_secs_f64(f64::from(elapsed) / 1e3);
                    landed.notify_all();
                }
            }
        }
        Ok(())
    })();
    // Wait for the remaining marks so their events are released.
    for (_, fence) in marks {
        let _ = block_on(fence);
    }
    if let Err(error) = outcome {
        let (lock, landed) = &*progress;
        lock.lock().unwrap_or_else(|e| e.into_inner()).error = Some(error);
        landed.notify_all();
    }
}

impl Copier for CudaStore {
    fn start_copy(
        &mut self,
        block: usize,
        expert: usize,
        slot: usize,
        after: ComputeMark,
    ) -> CopyTicket {
        self.next_ticket += 1;
        let host = self.host.ptrs[block * self.host.num_experts + expert];
        let (in_bytes, out_bytes) = (self.host.w_in_bytes, self.host.w_out_bytes);
        let (base_in, base_out) = self.bases[block];
        self.send(Request::Copy {
            ticket: self.next_ticket,
            after: after.0,
            parts: [
                (base_in + (slot * in_bytes) as u64, host, in_bytes),
                (
                    base_out + (slot * out_bytes) as u64,
                    host + in_bytes,
                    out_bytes,
                ),
            ],
        });
        CopyTicket(self.next_ticket)
    }

    fn wait_copy(&mut self, ticket: CopyTicket) {
        self.wait_landed(ticket.0);
    }
}

impl ExpertStore<Cuda> for CudaStore {
    fn num_blocks(&self) -> usize {
        self.w_in.len()
    }

    fn num_slots(&self) -> usize {
        self.num_slots
    }

    fn expert_bytes(&self) -> usize {
        self.host.w_in_bytes + self.host.w_out_bytes
    }

    fn slot_weights(&self, block: usize) -> (Tensor<Cuda, 3>, Tensor<Cuda, 3>) {
        (self.w_in[block].clone(), self.w_out[block].clone())
    }

    fn mark_compute(&mut self) -> ComputeMark {
        self.next_mark += 1;
        // Records an event on the compute stream now; the copy thread waits on it if needed.
        let fence = self.client.sync();
        self.send(Request::Mark {
            mark: self.next_mark,
            fence,
        });
        ComputeMark(self.next_mark)
    }

    fn sync_compute(&mut self) {
        if let Err(error) = block_on(self.client.sync()) {
            panic!("CUDA compute stream: {error:?}");
        }
    }

    fn copy_log(&mut self) -> CopyLog {
        self.wait_landed(self.next_ticket)
    }
}

impl Drop for CudaStore {
    fn drop(&mut self) {
        // Closing the channel ends the copy thread once every copy has landed; the slot tensors
        // are freed only after that.
        drop(self.requests.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use moe_model::Activation;
    use moe_model::offload::{BlockShape, OffloadEngine, OffloadPolicy, TensorStore};

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

        let pinned =
            Arc::new(PinnedExperts::generate(&context, &plan, 9, FloatType::Bf16).unwrap());
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
                &plan,
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
