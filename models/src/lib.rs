//! kiln's image classifiers: every torchvision ResNet and DenseNet variant, with torchvision's
//! structure, initialisation and state-dict names.
//!
//! ```no_run
//! use kiln_models::{Arch, torchvision};
//! # fn main() -> Result<(), kiln_models::ModelError> {
//! let device = burn::tensor::Device::flex();
//! let model = Arch::Resnet18.init(10, &device);
//! torchvision::save_safetensors(&model, "resnet18.safetensors".as_ref(), None)?;
//! let back = torchvision::load(Arch::Resnet18, "resnet18.safetensors".as_ref(), None, &device)?;
//! # Ok(()) }
//! ```

pub mod arch;
pub mod autocast;
pub mod densenet;
pub mod error;
pub mod head;
pub mod layers;
pub mod macs;
pub mod norm;
pub mod onnx;
pub mod resnet;
pub mod torchvision;

pub use arch::{Arch, Model};
pub use error::ModelError;
