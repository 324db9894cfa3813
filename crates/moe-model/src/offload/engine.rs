//! The offloading runtime: per-block caches over an [`ExpertStore`], a policy that decides when
//! experts are copied, and the accounting of what it cost.
//!
//! One block under a policy that reads the routing (every policy but `resident`):
//! 1. the host waits for the compute enqueued so far (where it reads the router's decision);
//! 2. the experts the block needs that are not in its cache are copied (on demand);
//! 3. prefetch and oracle start copies for block `l + distance` (behind those on the stream);
//! 4. the host waits for the copies of block `l`'s experts that have not landed yet;
//! 5. the block's kernels are enqueued on the slots, and a compute mark orders later copies
//!    into those slots after them.
//!
//! A block whose batch needs more experts than its cache has slots runs in groups of at most
//! that many experts (those already cached first); each group's misses may evict the previous
//! group's experts once its kernels are done (see `layer.rs` for why the output is unchanged).

use std::marker::PhantomData;
use std::time::{Duration, Instant};

use burn::tensor::Tensor;
use moe_kernels::grouped_gemm::ExpertShape;
use moe_kernels::{Activation, InvalidValue, UNUSED_SLOT};
use serde::Serialize;

use super::cache::BlockCache;

use super::layer::{GroupRows, OffloadBackend, combine_groups, run_group};
use super::policy::OffloadPolicy;
use super::store::ExpertStore;

/// Sizes of one MoE block of the offloaded model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct BlockShape {
    /// Experts E per block.
    pub num_experts: usize,
    /// Model width d.
    pub d_model: usize,
    /// Hidden width F of each expert.
    pub width: usize,
    /// The experts' nonlinearity.
    #[serde(skip)]
    pub activation: Activation,
}

/// What one block decides for one batch, given on the host (replayed from a trace or read back
/// from the router).
#[derive(Clone, Debug)]
pub struct BlockRouting<B: OffloadBackend> {
    /// Experts of each token, -1 in unused slots. `[T * K]`, row-major
    pub expert_ids: Vec<i32>,
    /// Routing slots K per token.
    pub slots: usize,
    /// Each slot's weight in the combine, 0 in unused slots. `[T, K]`
    pub weights: Tensor<B, 2>,
    /// The experts the policy's predictor expected this block to use, `distance` blocks
    /// earlier (read by `prefetch` policies only; empty where there was no prediction).
    pub predicted: Vec<usize>,
}

impl<B: OffloadBackend> BlockRouting<B> {
    /// The distinct experts the block uses, ascending.
    pub fn needed(&self) -> Vec<usize> {
        needed(&self.expert_ids)
    }
}

/// The distinct experts among `expert_ids` (-1 ignored), ascending.
pub fn needed(expert_ids: &[i32]) -> Vec<usize> {
    let mut experts: Vec<usize> = expert_ids
        .iter()
        .filter(|&&e| e != UNUSED_SLOT)
        .map(|&e| e as usize)
        .collect();
    experts.sort_unstable();
    experts.dedup();
    experts
}

/// What the runtime did, summed over the batches it ran.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct OffloadStats {
    /// (block, expert) reads by forward passes.
    pub expert_uses: usize,
    /// Reads whose expert was in the cache (loaded, or loading from a prefetch).
    pub hits: usize,
    /// Reads whose expert had to be copied after the router decided.
    pub misses: usize,
    /// Copies started by prefetch or oracle.
    pub prefetch_copies: usize,
    /// Prefetched experts evicted before any forward read them.
    pub wasted_prefetches: usize,
    /// Host time spent waiting for copies to land (the compute path's only copy wait).
    pub wait_time: Duration,
    /// Times the host waited for the compute to read a block's routing.
    pub routing_syncs: usize,
}

impl OffloadStats {
    /// Share of expert reads served from the cache.
    pub fn hit_rate(&self) -> f64 {
        if self.expert_uses == 0 {
            return 1.0;
        }
        self.hits as f64 / self.expert_uses as f64
    }
}

/// The offloading runtime of a model of `store.num_blocks()` MoE blocks.
pub struct OffloadEngine<B: OffloadBackend, S: ExpertStore<B>> {
    store: S,
    caches: Vec<BlockCache>,
    shape: BlockShape,
    policy: OffloadPolicy,
    distance: usize,
    stats: OffloadStats,
    backend: PhantomData<B>,
}

impl<B: OffloadBackend, S: ExpertStore<B>> OffloadEngine<B, S> {
    /// An engine with empty caches. `resident` needs one slot per expert (call
    /// [`OffloadEngine::preload`] before running); prefetch and oracle copy `distance >= 1`
    /// blocks ahead.
    pub fn new(
        store: S,
        shape: BlockShape,
        policy: OffloadPolicy,
        distance: usize,
    ) -> Result<Self, InvalidValue> {
        let slots = store.num_slots();
        if slots == 0 || slots > shape.num_experts {
            return Err(InvalidValue::new(
                "slots",
                slots,
                format!("must be in 1..={} (experts per block)", shape.num_experts),
            ));
        }
        if policy == OffloadPolicy::Resident && slots != shape.num_experts {
            return Err(InvalidValue::new(
                "slots",
                slots,
                format!(
                    "must be {} (every expert) for the resident policy",
                    shape.num_experts
                ),
            ));
        }
        if distance == 0 {
            return Err(InvalidValue::new("distance", 0, "must be >= 1"));
        }
        Ok(Self {
            caches: (0..store.num_blocks())
                .map(|_| BlockCache::new(slots))
                .collect(),
            store,
            shape,
            policy,
            distance,
            stats: OffloadStats::default(),
            backend: PhantomData,
        })
    }

    /// Loads experts `0..slots` of every block into slots in order and waits for them: the
    /// resident model, or a warm start. Not counted in the statistics.
    pub fn preload(&mut self) {
        let experts: Vec<usize> = (0..self.store.num_slots()).collect();
        for block in 0..self.caches.len() {
            let acquired = self.caches[block].acquire(&mut self.store, block, &experts);
            for (slot, ticket) in acquired.waits {
                self.store.wait_copy(ticket);
                self.caches[block].landed(slot, ticket);
            }
        }
        self.store.sync_compute();
    }

    /// Runs a batch through every block in order (each block's output is the next block's
    /// input) under the policy. `blocks` holds one routing per block.
    ///
    /// # Shapes
    /// - `x`: `[T, d]` -> `[T, d]`
    pub fn run_batch(&mut self, x: Tensor<B, 2>, blocks: &[BlockRouting<B>]) -> Tensor<B, 2> {
        assert_eq!(blocks.len(), self.caches.len(), "one routing per block");
        let mut x = x;
        for block in 0..blocks.len() {
            let target = block + self.distance;
            let prefetch = match (&self.policy, blocks.get(target)) {
                (OffloadPolicy::Prefetch { .. }, Some(routing)) => {
                    Some((target, routing.predicted.clone()))
                }
                (OffloadPolicy::Oracle, Some(routing)) => Some((target, routing.needed())),
                _ => None,
            };
            x = self.block_step(block, x, &blocks[block], prefetch);
        }
        x
    }

    /// One block on its cache, without prefetching for later blocks.
    ///
    /// # Shapes
    /// - `x`: `[T, d]` -> `[T, d]`
    pub fn forward_block(
        &mut self,
        block: usize,
        x: Tensor<B, 2>,
        routing: &BlockRouting<B>,
    ) -> Tensor<B, 2> {
        self.block_step(block, x, routing, None)
    }

    fn block_step(
        &mut self,
        block: usize,
        x: Tensor<B, 2>,
        routing: &BlockRouting<B>,
        prefetch: Option<(usize, Vec<usize>)>,
    ) -> Tensor<B, 2> {
        if self.policy.reads_routing() {
            self.store.sync_compute();
            self.stats.routing_syncs += 1;
        }
        let cache = &self.caches[block];
        let (cached, missing): (Vec<usize>, Vec<usize>) = routing
            .needed()
            .into_iter()
            .partition(|&e| cache.slot_of(e).is_some());
        let order: Vec<usize> = cached.into_iter().chain(missing).collect();
        let groups: Vec<&[usize]> = order.chunks(cache.num_slots()).collect();
        let [num_tokens, d_model] = x.dims();
        let full = ExpertShape {
            num_tokens,
            slots: routing.slots,
            num_experts: self.shape.num_experts,
            d_model,
            width: self.shape.width,
        };
        let tile_rows = B::moe_tile_rows(&full, self.shape.activation, x.dtype(), &x.device());
        let mut rows: Vec<GroupRows<B>> = Vec::with_capacity(groups.len());
        for (index, group) in groups.iter().enumerate() {
            let acquired = self.caches[block].acquire(&mut self.store, block, group);
            self.stats.expert_uses += group.len();
            self.stats.hits += acquired.hits;
            self.stats.misses += acquired.misses;
            self.stats.wasted_prefetches += acquired.wasted_prefetches;
            if index == 0
                && let Some((target, experts)) = &prefetch
            {
                let done = self.caches[*target].prefetch(&mut self.store, *target, experts);
                self.stats.prefetch_copies += done.started;
                self.stats.wasted_prefetches += done.wasted_prefetches;
            }
            let start = Instant::now();
            for &(slot, ticket) in &acquired.waits {
                self.store.wait_copy(ticket);
                self.caches[block].landed(slot, ticket);
            }
            self.stats.wait_time += start.elapsed();
            let slot_ids = remap(&routing.expert_ids, group, &acquired.slots);
            let (w_in, w_out) = self.store.slot_weights(block);
            rows.push(run_group(
                x.clone(),
                slot_ids,
                w_in,
                w_out,
                self.shape.activation,
                &full,
                tile_rows,
            ));
            let mark = self.store.mark_compute();
            for &slot in &acquired.slots {
                self.caches[block].mark_read(slot, mark);
            }
        }
        if rows.is_empty() {
            // No token uses any expert (every slot unused): the layer outputs zeros.
            return x.zeros_like();
        }
        combine_groups(rows, routing.weights.clone())
    }

    /// What the runtime did so far.
    pub fn stats(&self) -> OffloadStats {
        self.stats
    }

    /// The caches, one per block.
    pub fn caches(&self) -> &[BlockCache] {
        &self.caches
    }

    /// The store.
    pub fn store_mut(&mut self) -> &mut S {
        &mut self.store
    }

    /// The policy.
    pub fn policy(&self) -> &OffloadPolicy {
        &self.policy
    }
}

/// Each pair's slot when its expert is in `group` (at `slots[i]` for `group[i]`), else -1.
fn remap(expert_ids: &[i32], group: &[usize], slots: &[usize]) -> Vec<i32> {
    expert_ids
        .iter()
        .map(|&e| {
            group
                .iter()
                .position(|&g| e != UNUSED_SLOT && g == e as usize)
                .map_or(UNUSED_SLOT, |i| slots[i] as i32)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remap_sends_group_experts_to_their_slots_and_the_rest_nowhere() {
        let ids = [3, 5, -1, 5, 2, 3];
        assert_eq!(remap(&ids, &[5, 3], &[0, 2]), vec![2, 0, -1, 0, -1, 2]);
        assert_eq!(needed(&ids), vec![2, 3, 5]);
    }
}
