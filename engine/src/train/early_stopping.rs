//! `EarlyStopping`: stop when the monitored metric has not improved by more than `min_delta`
//! for `patience` epochs, and remember the best epoch so its weights can be restored.

use serde::{Deserialize, Serialize};

use crate::config::Monitor;

/// Early-stopping state; serialisable so a resumed run decides exactly as an uninterrupted one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EarlyStopping {
    /// Metric watched.
    pub monitor: Monitor,
    /// Epochs without improvement tolerated.
    pub patience: usize,
    /// Smallest improvement that counts.
    #[serde(with = "crate::train::checkpoint::exact_f64")]
    pub min_delta: f64,
    /// Best value so far.
    #[serde(with = "crate::train::checkpoint::exact_f64::option")]
    pub best: Option<f64>,
    /// Epoch (0-based) of the best value.
    pub best_epoch: Option<usize>,
    /// Epochs since the last improvement.
    pub bad_epochs: usize,
}

/// What to do after an epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// This epoch is the best so far.
    Improved,
    /// No improvement, patience left.
    Continue,
    /// No improvement for `patience` epochs: stop.
    Stop,
}

impl EarlyStopping {
    /// A fresh tracker.
    pub fn new(monitor: Monitor, patience: usize, min_delta: f64) -> Self {
        Self {
            monitor,
            patience,
            min_delta,
            best: None,
            best_epoch: None,
            bad_epochs: 0,
        }
    }

    /// Records `epoch`'s value of the monitored metric.
    pub fn update(&mut self, epoch: usize, value: f64) -> Verdict {
        let improved = match (self.best, self.monitor) {
            (None, _) => value.is_finite(),
            (Some(best), Monitor::ValLoss) => value < best - self.min_delta,
            (Some(best), Monitor::ValAcc) => value > best + self.min_delta,
        };
        if improved {
            self.best = Some(value);
            self.best_epoch = Some(epoch);
            self.bad_epochs = 0;
            Verdict::Improved
        } else {
            self.bad_epochs += 1;
            if self.bad_epochs >= self.patience.max(1) {
                Verdict::Stop
            } else {
                Verdict::Continue
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stops_after_patience_epochs_without_improvement() {
        let mut es = EarlyStopping::new(Monitor::ValLoss, 3, 0.0);
        let losses = [1.0, 0.8, 0.7, 0.75, 0.71, 0.70, 0.9];
        let verdicts: Vec<Verdict> = losses
            .iter()
            .enumerate()
            .map(|(e, &l)| es.update(e, l))
            .collect();
        use Verdict::*;
        assert_eq!(
            verdicts[..6],
            [Improved, Improved, Improved, Continue, Continue, Stop]
        );
        assert_eq!(es.best_epoch, Some(2));
        assert_eq!(es.best, Some(0.7));
    }

    #[test]
    fn min_delta_and_max_mode() {
        let mut es = EarlyStopping::new(Monitor::ValAcc, 2, 0.05);
        assert_eq!(es.update(0, 0.5), Verdict::Improved);
        assert_eq!(es.update(1, 0.54), Verdict::Continue, "within min_delta");
        assert_eq!(es.update(2, 0.6), Verdict::Improved);
        assert_eq!(es.update(3, 0.6), Verdict::Continue);
        assert_eq!(es.update(4, 0.1), Verdict::Stop);
        assert_eq!(es.best_epoch, Some(2));
    }
}
