//! Device time of a call, without the host's launch overhead.
//!
//! Back-to-back launches followed by one sync ([`time_per_call`]) measure what a caller waits
//! when every launch costs host time. When the host runs ahead of the device (a busy stream, or
//! launches replayed from a captured graph) only the device's own time counts. To measure it, the
//! calls are queued behind a kernel that keeps the device busy long enough for the host to
//! enqueue all of them: device time per call = (time of spin + N calls - time of spin) / N.

use std::time::{Duration, Instant};

use cubecl::prelude::*;
use cubecl::server::Handle;

use super::{sync, time_per_call};

/// Most calls queued behind one spin: CUDA blocks the host once about a thousand launches are
/// pending, and a routing stage is up to four launches.
const MAX_QUEUED_CALLS: usize = 100;

/// A dependent chain of `steps` multiply-adds in one unit: a device busy for a chosen time.
#[cube(launch_unchecked)]
fn spin_kernel(output: &mut Array<f32>, steps: u32) {
    let mut x = f32::cast_from(UNIT_POS);
    for _ in 0..steps {
        x = x * f32::new(0.9999) + f32::new(0.0001);
    }
    output[0] = x;
}

/// Keeps the device busy for a requested time (calibrated once per device).
pub struct Spinner<R: Runtime> {
    client: ComputeClient<R>,
    output: Handle,
    steps_per_second: f64,
}

impl<R: Runtime> Spinner<R> {
    /// Measures how many spin steps the device runs per second.
    pub fn calibrate(client: &ComputeClient<R>) -> Self {
        let mut spinner = Self {
            client: client.clone(),
            output: client.empty(size_of::<f32>()),
            steps_per_second: 0.0,
        };
        let (short, long) = (1u32 << 18, 1u32 << 20);
        spinner.time_alone(short); // compile
        let extra = spinner
            .time_alone(long)
            .saturating_sub(spinner.time_alone(short));
        spinner.steps_per_second = f64::from(long - short) / extra.as_secs_f64().max(1e-9);
        spinner
    }

    fn launch(&self, steps: u32) {
        // SAFETY: the kernel writes element 0 of a one-element buffer.
        unsafe {
            spin_kernel::launch_unchecked::<R>(
                &self.client,
                CubeCount::Static(1, 1, 1),
                CubeDim::new_1d(1),
                ArrayArg::from_raw_parts(self.output.clone(), 1),
                steps,
            );
        }
    }

    /// Wall time of one spin of `steps` and a sync.
    fn time_alone(&self, steps: u32) -> Duration {
        let start = Instant::now();
        self.launch(steps);
        sync(&self.client);
        start.elapsed()
    }

    /// Spin steps that keep the device busy for `duration`.
    fn steps_for(&self, duration: Duration) -> u32 {
        (duration.as_secs_f64() * self.steps_per_second).min(f64::from(u32::MAX)) as u32
    }
}

/// Per call: `(wall, device)`, the back-to-back wall time (with launch overhead) and the device
/// time (without), from `iterations` calls of `work` (at most [`MAX_QUEUED_CALLS`] for the second).
pub fn wall_and_device_time<R: Runtime>(
    spinner: &Spinner<R>,
    iterations: usize,
    mut work: impl FnMut(),
) -> (Duration, Duration) {
    let wall = time_per_call(&spinner.client, iterations, &mut work);
    let queued = iterations.min(MAX_QUEUED_CALLS);
    let steps = spinner.steps_for(wall * 2 * queued as u32 + Duration::from_millis(2));
    let mut alone = Duration::MAX;
    let mut with_work = Duration::MAX;
    for _ in 0..3 {
        alone = alone.min(spinner.time_alone(steps));
        let start = Instant::now();
        spinner.launch(steps);
        for _ in 0..queued {
            work();
        }
        sync(&spinner.client);
        with_work = with_work.min(start.elapsed());
    }
    (wall, with_work.saturating_sub(alone) / queued as u32)
}
