//! Expert offloading: the experts of every MoE block live in host memory and a device cache of a
//! few slots per block holds the ones in use; a policy decides when experts are copied in
//! (`resident`, `on-demand`, `prefetch` from a predictor, `oracle`), and the layer runs on the
//! cache's slots with results identical to the all-resident layer.
//!
//! - `cache.rs`: one block's slots, least-recently-used eviction, copies in flight (pure logic,
//!   tested against a plain LRU with copies that land late);
//! - `store.rs`: host experts and slot tensors ([`ExpertStore`]); [`TensorStore`] copies with
//!   tensor ops (no overlap: NdArray, wgpu, and the fallback anywhere);
//! - `layer.rs`: expert ids remapped to slots before dispatch, groups when a batch needs more
//!   experts than there are slots, one combine;
//! - `cubecl.rs`: the grouped GEMMs on slots with the full layer's tile configuration;
//! - `engine.rs`: per-block caches, the policy's schedule and the accounting;
//! - `policy.rs`: the policies and their names;
//! - `cuda.rs` (feature `cuda`): [`CudaStore`], copies from pinned host memory on a copy stream
//!   of its own, overlapping compute; the only file of offloading that names CUDA.

mod cache;
#[cfg(feature = "cubecl")]
mod cubecl;
#[cfg(feature = "cuda")]
mod cuda;
mod engine;
mod layer;
mod policy;
mod store;
#[cfg(test)]
mod tests;

pub use cache::{Acquired, BlockCache, ComputeMark, Copier, CopyTicket, Prefetched, Slot};
#[cfg(feature = "cuda")]
pub use cuda::{Cuda, CudaStore, CudaStoreError, PinnedExperts};
pub use engine::{BlockRouting, BlockShape, OffloadEngine, OffloadStats, needed};
pub use layer::{GroupRows, OffloadBackend, combine_groups, run_group};
pub use policy::{OffloadPolicy, UnknownPolicy};
pub use store::{CopyLog, ExpertStore, ExpertWeights, TensorStore};
