//! The learning rate at a point in training: linear warm-up, then a schedule.

use crate::config::Schedule;

/// Learning rates for a run of `epochs` epochs of `steps_per_epoch` steps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LrSchedule {
    /// Rate after warm-up, before decay.
    pub base: f64,
    /// Warm-up epochs.
    pub warmup_epochs: usize,
    /// Decay after warm-up.
    pub schedule: Schedule,
    /// Step schedule: epochs between decays.
    pub step_size: usize,
    /// Step schedule: decay factor.
    pub gamma: f64,
    /// Planned epochs.
    pub epochs: usize,
    /// Steps in an epoch.
    pub steps_per_epoch: usize,
}

impl LrSchedule {
    /// The rate at `step` (0-based) of `epoch` (0-based). Warm-up rises linearly per step to
    /// `base`; the decays are per epoch counted from the end of warm-up, as PyTorch's
    /// `StepLR`, `CosineAnnealingLR` and `PolynomialLR` stepped once an epoch.
    pub fn lr(&self, epoch: usize, step: usize) -> f64 {
        let spe = self.steps_per_epoch.max(1);
        if epoch < self.warmup_epochs {
            let done = (epoch * spe + step + 1) as f64;
            return self.base * done / (self.warmup_epochs * spe) as f64;
        }
        let e = (epoch - self.warmup_epochs) as f64;
        let span = self.epochs.saturating_sub(self.warmup_epochs).max(1) as f64;
        match self.schedule {
            Schedule::Constant => self.base,
            Schedule::Step => {
                self.base
                    * self
                        .gamma
                        .powi(((epoch - self.warmup_epochs) / self.step_size.max(1)) as i32)
            }
            Schedule::Cosine => self.base * 0.5 * (1.0 + (std::f64::consts::PI * e / span).cos()),
            Schedule::Poly => self.base * (1.0 - e / span).max(0.0).powf(0.9),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(schedule: Schedule, warmup_epochs: usize) -> LrSchedule {
        LrSchedule {
            base: 0.1,
            warmup_epochs,
            schedule,
            step_size: 2,
            gamma: 0.1,
            epochs: 4,
            steps_per_epoch: 10,
        }
    }

    #[test]
    fn warmup_rises_linearly_per_step_to_the_base_rate() {
        let s = schedule(Schedule::Constant, 2);
        assert!((s.lr(0, 0) - 0.1 / 20.0).abs() < 1e-12);
        assert!((s.lr(1, 9) - 0.1).abs() < 1e-12);
        assert!((s.lr(3, 5) - 0.1).abs() < 1e-12);
    }

    #[test]
    fn step_cosine_and_poly_decay_per_epoch() {
        let step = schedule(Schedule::Step, 0);
        let lrs: Vec<f64> = (0..4).map(|e| step.lr(e, 3)).collect();
        for (lr, want) in lrs.iter().zip([0.1, 0.1, 0.01, 0.01]) {
            assert!((lr - want).abs() < 1e-12, "{lrs:?}");
        }
        let cosine = schedule(Schedule::Cosine, 0);
        assert!((cosine.lr(0, 0) - 0.1).abs() < 1e-12);
        assert!((cosine.lr(2, 0) - 0.05).abs() < 1e-12);
        let poly = schedule(Schedule::Poly, 0);
        assert!((poly.lr(0, 0) - 0.1).abs() < 1e-12);
        assert!((poly.lr(2, 0) - 0.1 * 0.5f64.powf(0.9)).abs() < 1e-12);
        // After warm-up the decay counts from the end of warm-up.
        let warm_step = schedule(Schedule::Step, 1);
        assert!((warm_step.lr(1, 0) - 0.1).abs() < 1e-12);
        assert!((warm_step.lr(3, 0) - 0.01).abs() < 1e-12);
    }
}
