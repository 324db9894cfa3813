//! Repeated device timings summarised as a median and a spread.

use std::time::Duration;

use cubecl::prelude::*;

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

/// Device time of `work` (events around it on CUDA), `warmup` calls first and then `repeats`
/// measured ones.
pub fn device_timing<R: Runtime>(
    client: &ComputeClient<R>,
    warmup: usize,
    repeats: usize,
    mut work: impl FnMut() + Send,
) -> Timing {
    for _ in 0..warmup {
        work();
    }
    super::sync(client);
    let samples = (0..repeats.max(1))
        .map(|_| {
            let (_, duration) = client.profile(&mut work, "bench").expect("profiling");
            cubecl::future::block_on(duration.resolve()).duration()
        })
        .collect();
    Timing::of(samples)
}
