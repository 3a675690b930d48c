//! Training: configuration, the loop, SGD, learning-rate schedules, early stopping,
//! checkpoints, metrics, progress reporting and the curves plot, and the allocator settings
//! that keep a step's buffers from being faulted in afresh every step.

pub mod allocator;
pub mod checkpoint;
pub mod config;
pub mod curves;
pub mod early_stopping;
pub mod loss;
pub mod metrics;
pub mod progress;
pub mod replication;
pub mod schedule;
pub mod sgd;
pub mod trainer;

pub use config::{Monitor, Schedule, TrainConfig};
pub use early_stopping::EarlyStopping;
pub use trainer::{GradientHook, StopReason, TrainSummary, Trainer};
