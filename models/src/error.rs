//! What can go wrong building a model or reading its weights.

use std::path::PathBuf;

/// A model or weight-file error; every message names the file, key or value at fault.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// An architecture name torchvision does not have.
    #[error("unknown architecture '{name}'; valid names: {valid}")]
    UnknownArch {
        /// The name given.
        name: String,
        /// The names kiln builds, comma-separated.
        valid: String,
    },
    /// A file that is not the weights format its name or contents claim.
    #[error("cannot read weights from {path}: {reason}; expected {expected}")]
    BadFile {
        /// The file.
        path: PathBuf,
        /// What the reader reported.
        reason: String,
        /// What kiln expected to find.
        expected: &'static str,
    },
    /// A weights file whose tensors do not fit the model.
    #[error("weights in {path} do not fit {arch} with {num_classes} classes: {detail}")]
    Mismatch {
        /// The file.
        path: PathBuf,
        /// The model's architecture.
        arch: String,
        /// The model's class count.
        num_classes: usize,
        /// The first mismatched key and both shapes, or the missing/unexpected keys.
        detail: String,
    },
    /// A model that cannot be exported as asked.
    #[error("cannot export: {0}")]
    Export(String),
    /// A file that could not be written.
    #[error("cannot write {path}: {reason}")]
    Write {
        /// The file.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
}
