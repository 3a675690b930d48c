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
//! - [`job`] reads and validates estimator job files.
//! - [`runs`] is the run directory, the run history (SQLite), submission and the model
//!   registry.
//! - [`error`] holds [`EngineError`].

pub mod data;
pub mod dist;
pub mod error;
pub mod job;
pub mod model_dir;
pub mod runs;
pub mod train;

pub use error::EngineError;
pub use kiln_kernels as kernels;
pub use kiln_models as models;
