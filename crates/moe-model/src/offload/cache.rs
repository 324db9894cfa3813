//! The device cache of one MoE block: which expert each slot holds, which copies into it are
//! still in flight, and which slot to give up next.
//!
//! Policy: least recently used. A use is a forward that reads the expert, or a prefetch that
//! loads it (a prefetched expert enters as the most recently used, so it survives until its
//! block runs unless the cache is smaller than what the block needs). An empty slot is always
//! taken before an occupied one; the experts a forward pass is about to read, or a prefetch is
//! loading together, are never evicted for one another.
//!
//! The cache only decides; a [`Copier`] moves the bytes. A copy into a slot is ordered after the
//! compute that last read that slot ([`ComputeMark`]), and an expert is served only after the
//! copy that loaded it has landed: the caller waits on the tickets [`BlockCache::acquire`]
//! returns.

/// A copy started by a [`Copier`]; tickets grow in the order copies are started, and copies land
/// in that order (one copy stream).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CopyTicket(pub u64);

/// A point in the compute stream: the kernels enqueued before it. A copy into a slot waits for
/// the mark of the last compute that read the slot. `ComputeMark(0)`: nothing read it yet.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct ComputeMark(pub u64);

/// Moves expert weights from host memory into device slots.
pub trait Copier {
    /// Starts copying `expert` of `block` into `slot` of that block's cache, once the compute up
    /// to `after` no longer reads the slot. Returns at once (or, where the backend cannot
    /// overlap copies, when the copy is done).
    fn start_copy(
        &mut self,
        block: usize,
        expert: usize,
        slot: usize,
        after: ComputeMark,
    ) -> CopyTicket;

    /// Blocks until the copy of `ticket` (and every copy started before it) has landed and is
    /// visible to kernels enqueued from now on.
    fn wait_copy(&mut self, ticket: CopyTicket);
}

/// One slot of a block's cache.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Slot {
    /// The expert the slot holds, or is being loaded with.
    pub expert: Option<usize>,
    /// The copy loading `expert`, until the cache is told it landed.
    pub pending: Option<CopyTicket>,
    /// The last compute that read this slot.
    pub last_read: ComputeMark,
    /// Loaded by a prefetch and not read since.
    pub unused_prefetch: bool,
    last_use: u64,
}

/// What [`BlockCache::acquire`] decided for a group of experts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Acquired {
    /// The slot of each expert of the group, in the group's order.
    pub slots: Vec<usize>,
    /// Experts that were in the cache already (loaded, or still loading from a prefetch).
    pub hits: usize,
    /// Experts that had to be copied now.
    pub misses: usize,
    /// Copies to wait for before the group may be read (each slot's own pending copy).
    pub waits: Vec<(usize, CopyTicket)>,
    /// Prefetched experts evicted before any forward read them.
    pub wasted_prefetches: usize,
}

/// What [`BlockCache::prefetch`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Prefetched {
    /// Copies started.
    pub started: usize,
    /// Prefetched experts evicted before any forward read them.
    pub wasted_prefetches: usize,
}

/// The expert slots of one MoE block.
#[derive(Clone, Debug)]
pub struct BlockCache {
    slots: Vec<Slot>,
    clock: u64,
}

impl BlockCache {
    /// An empty cache of `num_slots` slots.
    pub fn new(num_slots: usize) -> Self {
        Self {
            slots: vec![Slot::default(); num_slots],
            clock: 0,
        }
    }

    /// Number of slots.
    pub fn num_slots(&self) -> usize {
        self.slots.len()
    }

    /// The slots, in slot order.
    pub fn slots(&self) -> &[Slot] {
        &self.slots
    }

    /// The slot holding (or loading) `expert`.
    pub fn slot_of(&self, expert: usize) -> Option<usize> {
        self.slots.iter().position(|s| s.expert == Some(expert))
    }

    /// The slot to load into: the first empty one, else the least recently used one outside
    /// `protected`; `None` when every slot is protected.
    pub fn victim(&self, protected: &[usize]) -> Option<usize> {
        if let Some(empty) = self.slots.iter().position(|s| s.expert.is_none()) {
            return Some(empty);
        }
        (0..self.slots.len())
            .filter(|s| !protected.contains(s))
            .min_by_key(|&s| self.slots[s].last_use)
    }

    /// Records that the copy of `ticket` loads `expert` into `slot` (the slot's old expert is
    /// gone) and makes it the most recently used; returns whether the old expert was an unused
    /// prefetch.
    fn install(&mut self, slot: usize, expert: usize, ticket: CopyTicket, prefetch: bool) -> bool {
        let old = std::mem::take(&mut self.slots[slot]);
        self.slots[slot] = Slot {
            expert: Some(expert),
            pending: Some(ticket),
            last_read: old.last_read,
            unused_prefetch: prefetch,
            last_use: 0,
        };
        self.touch(slot);
        old.unused_prefetch
    }

    /// Makes `slot` the most recently used.
    fn touch(&mut self, slot: usize) {
        self.clock += 1;
        self.slots[slot].last_use = self.clock;
    }

    /// Tells the cache that the copy into `slot` has landed (if `ticket` is still the slot's
    /// pending copy; a newer copy into the slot stays pending).
    pub fn landed(&mut self, slot: usize, ticket: CopyTicket) {
        if self.slots[slot].pending == Some(ticket) {
            self.slots[slot].pending = None;
        }
    }

    /// Records that the compute up to `mark` reads `slot`.
    pub fn mark_read(&mut self, slot: usize, mark: ComputeMark) {
        let last = &mut self.slots[slot].last_read;
        *last = (*last).max(mark);
    }

    /// Starts copies for the `experts` (at most as many as there are slots, in the given order)
    /// that are not in the cache; evicts none of `experts`. Experts already present become the
    /// most recently used.
    pub fn prefetch(
        &mut self,
        copier: &mut impl Copier,
        block: usize,
        experts: &[usize],
    ) -> Prefetched {
        let experts = &experts[..experts.len().min(self.slots.len())];
        let mut protected: Vec<usize> = experts.iter().filter_map(|&e| self.slot_of(e)).collect();
        let mut done = Prefetched::default();
        for &expert in experts {
            if let Some(slot) = self.slot_of(expert) {
                self.touch(slot);
                continue;
            }
            let Some(slot) = self.victim(&protected) else {
                break;
            };
            let ticket = copier.start_copy(block, expert, slot, self.slots[slot].last_read);
            if self.install(slot, expert, ticket, true) {
                done.wasted_prefetches += 1;
            }
            protected.push(slot);
            done.started += 1;
        }
        done
    }

    /// Makes every expert of `group` (distinct, at most as many as there are slots) resident:
    /// hits are kept and touched, misses are copied into empty or least recently used slots
    /// outside the group. The caller must wait for `waits` before reading the slots.
    ///
    /// # Panics
    /// If the group holds more experts than the cache has slots (the engine splits larger sets).
    pub fn acquire(&mut self, copier: &mut impl Copier, block: usize, group: &[usize]) -> Acquired {
        assert!(
            group.len() <= self.slots.len(),
            "a group of {} experts in a cache of {} slots",
            group.len(),
            self.slots.len()
        );
        let mut protected: Vec<usize> = group.iter().filter_map(|&e| self.slot_of(e)).collect();
        let mut acquired = Acquired::default();
        for &expert in group {
            let slot = match self.slot_of(expert) {
                Some(slot) => {
                    acquired.hits += 1;
                    self.touch(slot);
                    self.slots[slot].unused_prefetch = false;
                    slot
                }
                None => {
                    let slot = self
                        .victim(&protected)
                        .expect("a group no larger than the cache always finds a slot");
                    let ticket = copier.start_copy(block, expert, slot, self.slots[slot].last_read);
                    if self.install(slot, expert, ticket, false) {
                        acquired.wasted_prefetches += 1;
                    }
                    protected.push(slot);
                    acquired.misses += 1;
                    slot
                }
            };
            if let Some(ticket) = self.slots[slot].pending {
                acquired.waits.push((slot, ticket));
            }
            acquired.slots.push(slot);
        }
        acquired
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{RngExt, SeedableRng};

    use super::*;

    /// A device whose copies land late: a started copy sits in a queue and lands (in start
    /// order) at a random later moment, or when waited for. Reading a slot checks that its
    /// content is what the cache claims and that no copy into it is still queued.
    struct LateDevice {
        content: Vec<Option<usize>>,
        queue: Vec<(CopyTicket, usize, usize)>,
        next: u64,
        rng: StdRng,
        /// Compute marks each copy was ordered after, checked against the reads of its slot.
        reads: Vec<ComputeMark>,
    }

    impl LateDevice {
        fn new(slots: usize, seed: u64) -> Self {
            Self {
                content: vec![None; slots],
                queue: Vec::new(),
                next: 0,
                rng: StdRng::seed_from_u64(seed),
                reads: vec![ComputeMark(0); slots],
            }
        }

        fn land_until(&mut self, ticket: CopyTicket) {
            while let Some(&(t, slot, expert)) = self.queue.first() {
                if t > ticket {
                    break;
                }
                self.content[slot] = Some(expert);
                self.queue.remove(0);
            }
        }

        /// Lands a random prefix of the queue: copies finish while compute runs.
        fn progress(&mut self) {
            if !self.queue.is_empty() && self.rng.random_bool(0.5) {
                let upto = self.rng.random_range(0..self.queue.len());
                let ticket = self.queue[upto].0;
                self.land_until(ticket);
            }
        }
    }

    impl Copier for LateDevice {
        fn start_copy(
            &mut self,
            _block: usize,
            expert: usize,
            slot: usize,
            after: ComputeMark,
        ) -> CopyTicket {
            assert!(
                after >= self.reads[slot],
                "copy into slot {slot} not ordered after its last read"
            );
            self.next += 1;
            let ticket = CopyTicket(self.next);
            self.queue.push((ticket, slot, expert));
            ticket
        }

        fn wait_copy(&mut self, ticket: CopyTicket) {
            self.land_until(ticket);
        }
    }

    /// The plain LRU the cache must agree with: experts in order of use, least recent first.
    struct ReferenceLru {
        capacity: usize,
        order: Vec<usize>,
    }

    impl ReferenceLru {
        /// Uses every expert of `group`; returns (hits, misses).
        fn access(&mut self, group: &[usize]) -> (usize, usize) {
            let (mut hits, mut misses) = (0, 0);
            for &expert in group {
                if let Some(at) = self.order.iter().position(|&e| e == expert) {
                    self.order.remove(at);
                    hits += 1;
                } else {
                    if self.order.len() == self.capacity {
                        let at = self
                            .order
                            .iter()
                            .position(|e| !group.contains(e))
                            .expect("a victim outside the group");
                        self.order.remove(at);
                    }
                    misses += 1;
                }
                self.order.push(expert);
            }
            (hits, misses)
        }

        fn prefetch(&mut self, experts: &[usize]) -> usize {
            let experts = &experts[..experts.len().min(self.capacity)];
            let mut started = 0;
            for &expert in experts {
                if let Some(at) = self.order.iter().position(|&e| e == expert) {
                    self.order.remove(at);
                } else {
                    if self.order.len() == self.capacity {
                        let Some(at) = self.order.iter().position(|e| !experts.contains(e)) else {
                            break;
                        };
                        self.order.remove(at);
                    }
                    started += 1;
                }
                self.order.push(expert);
            }
            started
        }
    }

    fn random_set(rng: &mut StdRng, num_experts: usize, max_len: usize) -> Vec<usize> {
        let len = rng.random_range(1..=max_len.min(num_experts));
        let mut set: Vec<usize> = Vec::new();
        while set.len() < len {
            // Skewed: low ids are popular, so hits and evictions both happen.
            let e = (rng.random_range(0.0f64..1.0).powi(2) * num_experts as f64) as usize;
            if !set.contains(&e) {
                set.push(e);
            }
        }
        set
    }

    #[test]
    fn never_serves_a_stale_or_wrong_expert_and_agrees_with_a_plain_lru() {
        for seed in 0..40 {
            let mut rng = StdRng::seed_from_u64(seed);
            let num_experts = rng.random_range(2..24);
            let num_slots = rng.random_range(1..=num_experts);
            let mut cache = BlockCache::new(num_slots);
            let mut device = LateDevice::new(num_slots, seed + 1000);
            let mut reference = ReferenceLru {
                capacity: num_slots,
                order: Vec::new(),
            };
            let mut mark = 0;
            for step in 0..300 {
                if rng.random_bool(0.4) {
                    let set = random_set(&mut rng, num_experts, num_slots + 2);
                    let started = cache.prefetch(&mut device, 0, &set).started;
                    assert_eq!(started, reference.prefetch(&set), "seed {seed} step {step}");
                } else {
                    let group = random_set(&mut rng, num_experts, num_slots);
                    let acquired = cache.acquire(&mut device, 0, &group);
                    let expected = reference.access(&group);
                    assert_eq!(
                        (acquired.hits, acquired.misses),
                        expected,
                        "seed {seed} step {step}"
                    );
                    for &(slot, ticket) in &acquired.waits {
                        device.wait_copy(ticket);
                        cache.landed(slot, ticket);
                    }
                    // Serve: every slot must hold its expert, with nothing still to land in it.
                    for (&expert, &slot) in group.iter().zip(&acquired.slots) {
                        assert_eq!(
                            device.content[slot],
                            Some(expert),
                            "seed {seed} step {step}"
                        );
                        assert!(
                            device.queue.iter().all(|&(_, s, _)| s != slot),
                            "seed {seed} step {step}: slot {slot} still has a copy queued"
                        );
                    }
                    let mut slots = acquired.slots.clone();
                    slots.sort_unstable();
                    slots.dedup();
                    assert_eq!(slots.len(), group.len(), "two experts share a slot");
                    mark += 1;
                    for &slot in &acquired.slots {
                        cache.mark_read(slot, ComputeMark(mark));
                        device.reads[slot] = ComputeMark(mark);
                    }
                }
                device.progress();
                let mut held: Vec<usize> = cache.slots().iter().filter_map(|s| s.expert).collect();
                let mut expected = reference.order.clone();
                held.sort_unstable();
                expected.sort_unstable();
                assert_eq!(
                    held, expected,
                    "seed {seed} step {step}: resident sets differ"
                );
            }
        }
    }

    #[test]
    fn prefetched_experts_are_hits_and_survive_until_used() {
        let mut cache = BlockCache::new(2);
        let mut device = LateDevice::new(2, 1);
        assert_eq!(cache.prefetch(&mut device, 3, &[4, 7]).started, 2);
        let acquired = cache.acquire(&mut device, 3, &[7, 4]);
        assert_eq!((acquired.hits, acquired.misses), (2, 0));
        assert_eq!(
            acquired.waits.len(),
            2,
            "both copies may still be in flight"
        );
        // A prefetch larger than the cache loads only what fits.
        let mut small = BlockCache::new(1);
        assert_eq!(small.prefetch(&mut device, 0, &[1, 2, 3]).started, 1);
        assert_eq!(small.slot_of(1), Some(0));
        // A wrong prediction evicted before use is counted as wasted.
        let evicting = small.prefetch(&mut device, 0, &[2]);
        assert_eq!((evicting.started, evicting.wasted_prefetches), (1, 1));
        let read = small.acquire(&mut device, 0, &[2]);
        assert_eq!((read.hits, read.wasted_prefetches), (1, 0));
        let demand = small.acquire(&mut device, 0, &[5]);
        assert_eq!(
            demand.wasted_prefetches, 0,
            "a prefetch that was read is not wasted"
        );
    }
}
