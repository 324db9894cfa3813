//! The CUDA expert store: every expert in pinned host memory, one copy stream driven by a copy
//! thread through cudarc, and CubeCL slot tensors the grouped GEMM reads (feature `cuda`).
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

use super::{BlockShape, ComputeMark, Copier, CopyLog, CopyTicket, ExpertStore};

/// The CUDA backend of the store's slot tensors (no fusion: the MoE kernels are reachable from
/// it).
pub type Cuda = CubeBackend<CudaRuntime, f32, i32, u8>;

/// A CUDA driver or thread failure of the store, in one line.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CudaStoreError(pub String);

/// A driver error as a one-line store error.
fn driver<E: std::fmt::Debug>(what: &'static str) -> impl Fn(E) -> CudaStoreError {
    move |error| CudaStoreError(format!("{what}: {error:?}"))
}

/// Every expert of every block in pinned (page-locked, write-combined) host memory: one buffer
/// per expert holding `w_in` then `w_out`, in the run's float type.
pub struct PinnedExperts {
    /// Owns the memory `ptrs` point into.
    _buffers: Vec<PinnedHostSlice<u8>>,
    /// Host address of each buffer, `[block * E + expert]`.
    ptrs: Vec<usize>,
    num_experts: usize,
    w_in_bytes: usize,
    w_out_bytes: usize,
}

impl PinnedExperts {
    /// Allocates one pinned buffer per expert of `num_blocks` blocks of `num_experts`, each
    /// `w_in_bytes` then `w_out_bytes`, and fills them in parallel: `fill(block, expert, w_in,
    /// w_out)` writes one expert's two projections (write-combined memory: write sequentially,
    /// through a staging buffer, never read).
    pub fn new(
        context: &Arc<CudaContext>,
        num_blocks: usize,
        num_experts: usize,
        (w_in_bytes, w_out_bytes): (usize, usize),
        fill: impl Fn(usize, usize, &mut [u8], &mut [u8]) + Sync,
    ) -> Result<Self, CudaStoreError> {
        let count = num_blocks * num_experts;
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
        let per_thread = count.div_ceil(threads).max(1);
        let fill = &fill;
        std::thread::scope(|scope| {
            for (chunk_index, chunk) in slices.chunks_mut(per_thread).enumerate() {
                scope.spawn(move || {
                    for (i, buffer) in chunk.iter_mut().enumerate() {
                        let index = chunk_index * per_thread + i;
                        let (w_in, w_out) = buffer.split_at_mut(w_in_bytes);
                        fill(index / num_experts, index % num_experts, w_in, w_out);
                    }
                });
            }
        });
        drop(slices);
        Ok(Self {
            _buffers: buffers,
            ptrs,
            num_experts,
            w_in_bytes,
            w_out_bytes,
        })
    }

    /// Experts held, over all blocks.
    pub fn len(&self) -> usize {
        self.ptrs.len()
    }

    /// Whether no expert is held.
    pub fn is_empty(&self) -> bool {
        self.ptrs.is_empty()
    }

    /// Bytes of one expert (both projections).
    pub fn expert_bytes(&self) -> usize {
        self.w_in_bytes + self.w_out_bytes
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
    /// `slots` empty slots per block for `num_blocks` blocks of `shape` in `dtype`, filled from
    /// `host` by a copy thread of its own on `context`.
    pub fn new(
        host: Arc<PinnedExperts>,
        context: Arc<CudaContext>,
        device: &CudaDevice,
        (shape, num_blocks): (&BlockShape, usize),
        slots: usize,
        dtype: DType,
    ) -> Result<Self, CudaStoreError> {
        let client = CudaRuntime::client(device);
        let (d, f) = (shape.d_model, shape.width);
        let columns = shape.activation.input_columns(f);
        let mut w_in = Vec::new();
        let mut w_out = Vec::new();
        let mut bases = Vec::new();
        for _ in 0..num_blocks {
            let (t_in, base_in) = slot_tensor(&client, device, [slots, d, columns], dtype)?;
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
                .map_err(|e| CudaStoreError(format!("copy thread: {e}")))?
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
) -> Result<(Tensor<Cuda, 3>, u64), CudaStoreError> {
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
