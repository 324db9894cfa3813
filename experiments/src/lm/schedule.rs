//! The learning-rate schedule of language-model training: linear warm-up, then cosine decay to a
//! floor (nanoGPT's `get_lr`).

/// Learning rate at each step of a run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LrSchedule {
    /// Rate after warm-up.
    pub peak: f64,
    /// Rate at the last step.
    pub floor: f64,
    /// Steps of the linear warm-up from `peak / warmup` to `peak`.
    pub warmup_steps: usize,
    /// Steps of the whole run.
    pub total_steps: usize,
}

impl LrSchedule {
    /// The rate of step `step` (0-based): `peak * (step + 1) / warmup` during warm-up, then a half
    /// cosine from `peak` down to `floor` at the last step.
    pub fn rate(&self, step: usize) -> f64 {
        if step < self.warmup_steps {
            return self.peak * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let decay_steps = self.total_steps.saturating_sub(self.warmup_steps + 1);
        if decay_steps == 0 {
            return self.peak;
        }
        let progress = ((step - self.warmup_steps) as f64 / decay_steps as f64).min(1.0);
        let cosine = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
        self.floor + (self.peak - self.floor) * cosine
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warms_up_linearly_then_decays_to_the_floor() {
        let schedule = LrSchedule {
            peak: 1e-3,
            floor: 1e-4,
            warmup_steps: 10,
            total_steps: 110,
        };
        let close = |a: f64, b: f64| (a - b).abs() < 1e-12;
        assert!(close(schedule.rate(0), 1e-4));
        assert!(close(schedule.rate(4), 5e-4));
        assert!(close(schedule.rate(9), 1e-3));
        assert!(close(schedule.rate(10), 1e-3));
        // Half-way through the decay (step 10 + 99 / 2): the mean of peak and floor.
        let half = LrSchedule {
            total_steps: 111,
            ..schedule
        };
        assert!(close(half.rate(60), 5.5e-4));
        assert!(close(schedule.rate(109), 1e-4));
        let rates: Vec<f64> = (10..110).map(|s| schedule.rate(s)).collect();
        assert!(rates.windows(2).all(|w| w[1] <= w[0]), "{rates:?}");
    }

    #[test]
    fn a_run_shorter_than_its_warm_up_never_decays() {
        let schedule = LrSchedule {
            peak: 2e-3,
            floor: 0.0,
            warmup_steps: 5,
            total_steps: 3,
        };
        assert!((schedule.rate(2) - 1.2e-3).abs() < 1e-12);
    }
}
