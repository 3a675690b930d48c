//! Data: image folders and their checks, decoding, transforms, the parallel loader with
//! per-rank sharding, and IDX import.

pub mod decode;
pub mod folder;
pub mod idx;
pub mod loader;
pub mod transform;

pub use folder::{ImageFolder, check_same_classes};
pub use loader::{Batch, Loader, LoaderConfig, Sampler};
pub use transform::Augment;
