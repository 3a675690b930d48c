//! The learning rate at a point in training: linear warm-up, then a schedule.

use crate::train::config::Schedule;

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
