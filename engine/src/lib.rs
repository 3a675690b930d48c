//! The kiln training engine.
//!
//! - [`data`] covers image folders and their checks, decoding, transforms, the parallel loader and
//!   per-rank sharding, IDX import.
//! - [`train`] holds [`train::Trainer`] and its configuration, SGD, schedules, early
//!   stopping, checkpoints, metrics, progress.
//! - [`model_dir`] reads and writes trained model directories (`model.safetensors` +
//!   `kiln.json`).
//! - [`dist`] is data-parallel training: environment, rendezvous, the ring allreduce,
//!   gradient buckets, the local launcher.
//! - [`error`] holds [`EngineError`].
//!
//! The run history (`runs`) and job files (`job`) arrive with their issues.

pub mod data;
pub mod dist;
pub mod error;
pub mod model_dir;
pub mod train;

pub use error::EngineError;
pub use kiln_models as models;
