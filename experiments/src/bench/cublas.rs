//! cuBLAS, loaded at run time through cudarc: the dense GEMM every grouped GEMM is set against
//! (same FLOPs, same float type, f32 accumulation). A machine without cuBLAS still builds and runs
//! the benchmark; the rows then say that cuBLAS is unavailable.
//!
//! Timed like the kernels (`timing.rs`): the L2 cache is flushed before each repetition, here by
//! a memset of a scratch buffer on cuBLAS's stream, queued before the start event.

use std::ffi::c_void;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cudarc::cublas::{CudaBlas, result, sys};
use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::{CudaContext, CudaSlice, CudaStream, DevicePtr, DevicePtrMut};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use super::FloatType;
use super::timing::Timing;
use crate::error::catch_panic;

/// A cuBLAS handle on device 0's default stream, and the buffer that flushes L2 on it.
pub struct Cublas {
    stream: Arc<CudaStream>,
    blas: CudaBlas,
    /// Overwritten before each timed GEMM (see the module docs); behind a lock because a flush
    /// writes it and the bench holds the handle shared.
    l2_flush: Mutex<CudaSlice<u8>>,
}

impl Cublas {
    /// Loads cuBLAS, creates a handle and allocates an L2 flush of `flush_bytes`, or says why it
    /// cannot.
    pub fn new(flush_bytes: usize) -> Result<Self, String> {
        catch_panic(|| -> Result<Self, String> {
            let context = CudaContext::new(0).map_err(|e| format!("CUDA context: {e}"))?;
            let stream = context.default_stream();
            let blas = CudaBlas::new(stream.clone()).map_err(|e| format!("cuBLAS handle: {e}"))?;
            let l2_flush = stream
                .alloc_zeros::<u8>(flush_bytes)
                .map_err(|e| format!("cuBLAS L2 flush buffer: {e}"))?;
            Ok(Self {
                stream,
                blas,
                l2_flush: Mutex::new(l2_flush),
            })
        })
        .map_err(|reason| format!("cuBLAS could not be loaded: {reason}"))?
    }

    /// Device time of `C[m, n] = A[m, k] @ B[k, n]` (row-major, random inputs) in `dtype`, L2
    /// flushed before each repetition.
    pub fn gemm(
        &self,
        m: usize,
        n: usize,
        k: usize,
        dtype: FloatType,
        repeats: usize,
    ) -> Result<Timing, String> {
        let a = self.random(m * k, dtype)?;
        let b = self.random(k * n, dtype)?;
        let mut c = self
            .stream
            .alloc_zeros::<u8>(m * n * dtype.size())
            .map_err(|e| format!("cuBLAS output: {e}"))?;
        let samples = (0..repeats + 3)
            .map(|_| {
                self.flush_l2()?;
                self.timed_gemm(&a, &b, &mut c, m, n, k, dtype)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Timing::of(samples[3..].to_vec()))
    }

    /// Queues a write of the whole flush buffer on cuBLAS's stream, ahead of the next start event.
    fn flush_l2(&self) -> Result<(), String> {
        let mut buffer = self.l2_flush.lock().unwrap_or_else(|e| e.into_inner());
        self.stream
            .memset_zeros(&mut *buffer)
            .map_err(|e| format!("cuBLAS L2 flush: {e}"))
    }

    /// `len` random values of `dtype` in [-1, 1), as raw bytes on the device.
    fn random(&self, len: usize, dtype: FloatType) -> Result<CudaSlice<u8>, String> {
        let mut rng = StdRng::seed_from_u64(len as u64);
        let values: Vec<f32> = (0..len).map(|_| rng.random_range(-1.0..1.0)).collect();
        let bytes: Vec<u8> = match dtype {
            FloatType::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            FloatType::Bf16 => values
                .iter()
                .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
                .collect(),
            FloatType::F16 => values
                .iter()
                .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
                .collect(),
        };
        self.stream
            .clone_htod(&bytes)
            .map_err(|e| format!("cuBLAS input: {e}"))
    }

    /// One GEMM between two events. Row-major `C = A B` is column-major `C^T = B^T A^T`.
    #[allow(clippy::too_many_arguments, reason = "a GEMM's operands and sizes")]
    fn timed_gemm(
        &self,
        a: &CudaSlice<u8>,
        b: &CudaSlice<u8>,
        c: &mut CudaSlice<u8>,
        m: usize,
        n: usize,
        k: usize,
        dtype: FloatType,
    ) -> Result<Duration, String> {
        let data_type = match dtype {
            FloatType::F32 => sys::cudaDataType::CUDA_R_32F,
            FloatType::Bf16 => sys::cudaDataType::CUDA_R_16BF,
            FloatType::F16 => sys::cudaDataType::CUDA_R_16F,
        };
        let (alpha, beta) = (1.0f32, 0.0f32);
        let event = |what| {
            self.stream
                .record_event(Some(CUevent_flags::CU_EVENT_DEFAULT)) // None disables timing
                .map_err(|e| format!("event {what}: {e}"))
        };
        let start = event("start")?;
        {
            let (a_ptr, _a_sync) = a.device_ptr(&self.stream);
            let (b_ptr, _b_sync) = b.device_ptr(&self.stream);
            let (c_ptr, _c_sync) = c.device_ptr_mut(&self.stream);
            // SAFETY: the three buffers hold m*k, k*n and m*n values of `dtype`; the leading
            // dimensions are those of row-major matrices seen as column-major transposes.
            unsafe {
                result::gemm_ex(
                    *self.blas.handle(),
                    sys::cublasOperation_t::CUBLAS_OP_N,
                    sys::cublasOperation_t::CUBLAS_OP_N,
                    n as i32,
                    m as i32,
                    k as i32,
                    (&alpha as *const f32).cast::<c_void>(),
                    b_ptr as *const c_void,
                    data_type,
                    n as i32,
                    a_ptr as *const c_void,
                    data_type,
                    k as i32,
                    (&beta as *const f32).cast::<c_void>(),
                    c_ptr as *mut c_void,
                    data_type,
                    n as i32,
                    sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                    sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
                )
                .map_err(|e| format!("cublasGemmEx: {e:?}"))?;
            }
        }
        let end = event("end")?;
        end.synchronize().map_err(|e| format!("event sync: {e}"))?;
        let ms = start
            .elapsed_ms(&end)
            .map_err(|e| format!("event time: {e}"))?;
        Ok(Duration::from_secs_f64(f64::from(ms) / 1e3))
    }
}

/// `"<device name>, compute capability X.Y, driver <version>"` of CUDA device 0.
pub fn device_description() -> Result<String, String> {
    catch_panic(|| -> Result<String, String> {
        let context = CudaContext::new(0).map_err(|e| e.to_string())?;
        let name = context.name().map_err(|e| e.to_string())?;
        let (major, minor) = context.compute_capability().map_err(|e| e.to_string())?;
        let mut driver = 0;
        // SAFETY: writes one int; the driver library is loaded by the context above.
        unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut driver) };
        Ok(format!(
            "{name}, compute capability {major}.{minor}, driver API {}.{}",
            driver / 1000,
            driver % 1000 / 10
        ))
    })?
}
