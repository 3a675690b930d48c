//! The kiln training engine: trains a torchvision ResNet or DenseNet on labeled image folders,
//! on one process or data-parallel over many. Each concept is one hop from here:
//!
//! - [`config`]: [`TrainConfig`], every training option with its default, and its one
//!   `validate()`; the device, schedule, monitor and augmentation choices.
//! - [`train`]: [`train::Trainer`] and the loop by concept: setup, epoch, strategies (one
//!   process or many), outputs, checkpoints, SGD, schedules, early stopping, metrics,
//!   progress, curves.
//! - [`device`]: opening `--device`, and what `auto` picks on this machine.
//! - [`data`]: image folders and their checks, decoding, transforms, the parallel loader and
//!   per-rank sharding, IDX import.
//! - [`dist`]: data-parallel training: environment, rendezvous, the ring allreduce, gradient
//!   buckets, the local launcher.
//! - [`model_dir`]: trained model directories (`model.safetensors` + `kiln.json`), ONNX export.
//! - [`infer`]: a loaded model that scores batches, shared by `kiln predict` and `kiln serve`.
//! - [`env`]: the environment variables kiln reads and sets, and the run a process belongs to.
//! - [`error`]: the engine's error type, [`EngineError`].
//!
//! The job runner (job files, run history, registry) is the `kiln-runs` crate, above this one.

pub mod config;
pub mod data;
pub mod device;
pub mod dist;
pub mod env;
pub mod error;
pub mod infer;
pub mod model_dir;
pub mod train;

pub use config::TrainConfig;
pub use error::EngineError;
pub use kiln_kernels as kernels;
pub use kiln_models as models;
