//! Training, by concept (as burn-train splits it):
//!
//! - [`trainer`]: [`Trainer`], a run from its config to its model directory: the epoch loop.
//! - [`setup`]: the data, image size, device, model, loaders, schedule and optimizer a run
//!   starts with.
//! - [`epoch`]: one epoch's training steps and its validation pass.
//! - [`strategies`]: one process, or data-parallel over many, behind one [`Strategy`] seam.
//! - [`outputs`]: what rank 0 writes: metrics, checkpoints, the model directory, the curves.
//! - [`checkpoint`]: checkpoint files, written whole or not at all; the trainer's state.
//! - [`sgd`], [`schedule`], [`early_stopping`], [`loss`], [`scaler`]: the optimizer,
//!   learning-rate schedules, early stopping, the loss and f16's loss scaling.
//! - [`metrics`], [`tensorboard`], [`progress`], [`curves`]: `metrics.jsonl`, TensorBoard
//!   event files, the terminal, `curves.png`.
//! - [`threads`]: the compute thread pool, `--threads` or the cores shared among workers.
//! - [`allocator`]: the allocator settings that keep a step's buffers from being faulted in
//!   afresh every step.

pub mod allocator;
pub mod checkpoint;
pub mod curves;
pub mod early_stopping;
pub(crate) mod epoch;
pub mod loss;
pub mod metrics;
pub mod outputs;
pub mod progress;
pub mod scaler;
pub mod schedule;
pub mod setup;
pub mod sgd;
pub mod strategies;
pub mod tensorboard;
pub mod threads;
pub mod trainer;

pub use crate::config::{Monitor, Schedule, TrainConfig};
pub use early_stopping::EarlyStopping;
pub use strategies::Strategy;
pub use trainer::{StopReason, TrainSummary, Trainer};
