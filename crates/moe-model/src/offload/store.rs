//! Where expert weights live: every expert of every block in host memory, and per block a
//! device tensor of slots the cache fills. [`ExpertStore`] is what the engine needs from a
//! backend; [`TensorStore`] is the portable one.
//!
//! [`TensorStore`] copies with Burn tensor ops (upload the expert, `slice_assign` it into the
//! slot tensor) on the calling thread, so a copy is done when `start_copy` returns and nothing
//! overlaps: on NdArray the copies are memory copies, on wgpu they are queued uploads. It is
//! the documented fallback for backends without a copy stream, and what CI runs; the CUDA store
//! (`experiments`, feature `cuda`) copies from pinned memory on its own stream.

use std::time::{Duration, Instant};

use burn::tensor::{DType, Tensor, TensorData, backend::Backend};

use super::cache::{ComputeMark, Copier, CopyTicket};

/// The weights of one expert in host memory, in the run's float type.
#[derive(Clone, Debug)]
pub struct ExpertWeights {
    /// Input projection. `[d, input_columns(F)]`
    pub w_in: TensorData,
    /// Output projection. `[F, d]`
    pub w_out: TensorData,
}

impl ExpertWeights {
    /// The weights of expert `expert` from a layer's stacked `w_in` `[E, d, c]` and `w_out`
    /// `[E, F, d]`.
    pub fn from_stacked<B: Backend>(
        w_in: &Tensor<B, 3>,
        w_out: &Tensor<B, 3>,
        expert: usize,
    ) -> Self {
        let one = |t: &Tensor<B, 3>| t.clone().narrow(0, expert, 1).squeeze_dim::<2>(0);
        Self {
            w_in: one(w_in).into_data(),
            w_out: one(w_out).into_data(),
        }
    }

    /// Bytes of both projections.
    pub fn bytes(&self) -> usize {
        self.w_in.bytes.len() + self.w_out.bytes.len()
    }
}

/// Copies moved so far and the time they took.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CopyLog {
    /// Experts copied.
    pub copies: usize,
    /// Bytes copied.
    pub bytes: usize,
    /// Time the copies took: device time between events around each copy on CUDA, host time of
    /// each copy elsewhere.
    pub copy_time: Duration,
}

/// A device cache's backing storage: host copies of every expert and, per block, slot tensors
/// `w_in [slots, d, c]`, `w_out [slots, F, d]` that copies fill.
pub trait ExpertStore<B: Backend>: Copier {
    /// Blocks whose experts the store holds.
    fn num_blocks(&self) -> usize;

    /// Slots per block.
    fn num_slots(&self) -> usize;

    /// Bytes of one expert (both projections).
    fn expert_bytes(&self) -> usize;

    /// The slot tensors of `block`: `w_in [slots, d, c]`, `w_out [slots, F, d]`. The kernels
    /// given these read the slots' current contents; the cache decides what they hold.
    fn slot_weights(&self, block: usize) -> (Tensor<B, 3>, Tensor<B, 3>);

    /// Marks the point the compute stream has reached on the host: the kernels enqueued so far.
    /// A later copy into a slot read before this point is ordered after those kernels.
    fn mark_compute(&mut self) -> ComputeMark;

    /// Blocks until every kernel enqueued so far has run: where the host reads the router's
    /// decision before it can tell which experts are missing.
    fn sync_compute(&mut self);

    /// Waits for every started copy, then reports what was copied since the store was made.
    fn copy_log(&mut self) -> CopyLog;
}

/// The portable store: host experts as [`TensorData`], copies as tensor uploads and
/// `slice_assign` on the calling thread (no overlap; see the module docs).
pub struct TensorStore<B: Backend> {
    host: Vec<Vec<ExpertWeights>>,
    w_in: Vec<Tensor<B, 3>>,
    w_out: Vec<Tensor<B, 3>>,
    device: B::Device,
    dtype: DType,
    next_ticket: u64,
    next_mark: u64,
    log: CopyLog,
}

impl<B: Backend> TensorStore<B> {
    /// A store over `host[block][expert]` with `num_slots` zeroed slots per block on `device`,
    /// in the float type of the host weights.
    ///
    /// # Panics
    /// If `host` is empty, a block has no experts, or the experts' shapes differ.
    pub fn new(host: Vec<Vec<ExpertWeights>>, num_slots: usize, device: &B::Device) -> Self {
        let first = &host[0][0];
        let dtype = first.w_in.dtype;
        let (w_in_shape, w_out_shape) = (first.w_in.shape.clone(), first.w_out.shape.clone());
        assert!(
            host.iter()
                .flatten()
                .all(|e| e.w_in.shape == w_in_shape && e.w_out.shape == w_out_shape),
            "every expert must have the same shape"
        );
        let slots = |shape: &[usize]| {
            Tensor::<B, 3>::zeros([num_slots, shape[0], shape[1]], (device, dtype))
        };
        Self {
            w_in: host.iter().map(|_| slots(&w_in_shape)).collect(),
            w_out: host.iter().map(|_| slots(&w_out_shape)).collect(),
            host,
            device: device.clone(),
            dtype,
            next_ticket: 0,
            next_mark: 0,
            log: CopyLog::default(),
        }
    }
}

impl<B: Backend> Copier for TensorStore<B> {
    fn start_copy(
        &mut self,
        block: usize,
        expert: usize,
        slot: usize,
        _after: ComputeMark,
    ) -> CopyTicket {
        let start = Instant::now();
        let weights = &self.host[block][expert];
        let upload = |data: &TensorData| {
            Tensor::<B, 2>::from_data(data.clone(), (&self.device, self.dtype)).unsqueeze_dim(0)
        };
        let (w_in, w_out) = (upload(&weights.w_in), upload(&weights.w_out)); // [1, d, c], [1, F, d]
        // Burn orders the assignment after earlier reads of the slot tensor (same stream).
        let at = |t: &Tensor<B, 3>| {
            let [_, rows, cols] = t.dims();
            [slot..slot + 1, 0..rows, 0..cols]
        };
        let (in_at, out_at) = (at(&w_in), at(&w_out));
        self.w_in[block] = self.w_in[block].clone().slice_assign(in_at, w_in);
        self.w_out[block] = self.w_out[block].clone().slice_assign(out_at, w_out);
        self.log.copies += 1;
        self.log.bytes += weights.bytes();
        self.log.copy_time += start.elapsed();
        self.next_ticket += 1;
        CopyTicket(self.next_ticket)
    }

    fn wait_copy(&mut self, _ticket: CopyTicket) {}
}

impl<B: Backend> ExpertStore<B> for TensorStore<B> {
    fn num_blocks(&self) -> usize {
        self.host.len()
    }

    fn num_slots(&self) -> usize {
        self.w_in[0].dims()[0]
    }

    fn expert_bytes(&self) -> usize {
        self.host[0][0].bytes()
    }

    fn slot_weights(&self, block: usize) -> (Tensor<B, 3>, Tensor<B, 3>) {
        (self.w_in[block].clone(), self.w_out[block].clone())
    }

    fn mark_compute(&mut self) -> ComputeMark {
        self.next_mark += 1;
        ComputeMark(self.next_mark)
    }

    fn sync_compute(&mut self) {
        // An error here is the backend's to report on the next operation; the host read of the
        // router's decision only needs the queue drained.
        let _ = B::sync(&self.device);
    }

    fn copy_log(&mut self) -> CopyLog {
        self.log
    }
}
