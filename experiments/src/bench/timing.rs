//! Repeated device timings summarised as a median and a spread, the L2 cache flushed before each
//! repetition.

use std::time::Duration;

use cubecl::prelude::*;

use super::l2_flush::L2Flush;

/// Median and range of repeated timings of one piece of work.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// Median time per call.
    pub median: Duration,
    /// Fastest call.
    pub min: Duration,
    /// Slowest call.
    pub max: Duration,
}

impl Timing {
    /// Summary of `samples` (at least one).
    pub fn of(mut samples: Vec<Duration>) -> Self {
        samples.sort();
        Self {
            median: samples[samples.len() / 2],
            min: samples[0],
            max: samples[samples.len() - 1],
        }
    }
}

/// Device time of `work` (the runtime's profiler around it), `warmup` calls first and then
/// `repeats` measured ones, each after an L2 flush queued outside the timed region (the
/// profiler waits for queued work before it starts), so no repetition finds the weights the one
/// before it left in L2.
pub fn device_timing<R: Runtime>(
    flush: &L2Flush<R>,
    warmup: usize,
    repeats: usize,
    mut work: impl FnMut() + Send,
) -> Timing {
    let client = flush.client();
    for _ in 0..warmup {
        work();
    }
    super::sync(client);
    let samples = (0..repeats.max(1))
        .map(|_| {
            flush.flush();
            let (_, duration) = client.profile(&mut work, "bench").expect("profiling");
            cubecl::future::block_on(duration.resolve()).duration()
        })
        .collect();
    Timing::of(samples)
}
