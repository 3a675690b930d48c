//! What can go wrong in the engine. The three errors users of the designer module know keep
//! their names at the start of the message.

use std::path::Path;

/// An engine error; every message names the file, field or value at fault.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A dataset directory without class folders, or with images lying at its root.
    #[error("NotLabeledDatasetError: {0}")]
    NotLabeledDataset(String),
    /// Train and validation sets whose classes differ.
    #[error("InvalidDatasetError: {0}")]
    InvalidDataset(String),
    /// A model directory without a valid `kiln.json` or weights.
    #[error("InvalidModelDirectoryError: {0}")]
    InvalidModelDirectory(String),
    /// An image that does not decode, or is too large to.
    #[error("cannot decode image {path}: {reason}")]
    BadImage {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// Input of the wrong shape or content.
    #[error("{what}: {reason}; expected {expected}")]
    BadInput {
        /// The file or value.
        what: String,
        /// What was found.
        reason: String,
        /// What was expected.
        expected: &'static str,
    },
    /// A bad training option.
    #[error("invalid option {option} = {value}: expected {expected}")]
    BadOption {
        /// The option's name.
        option: &'static str,
        /// Its value.
        value: String,
        /// What it may be.
        expected: String,
    },
    /// A `--device` this build or machine does not have.
    #[error("--device {device}: {reason}")]
    NoDevice {
        /// The device asked for.
        device: &'static str,
        /// Why it cannot be opened.
        reason: String,
    },
    /// A training option with a value it cannot take.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// A file system error on a named path. The OS error is part of the message, not a
    /// separate cause, so it is printed once.
    #[error("{path}: {error}")]
    Io {
        /// The path.
        path: String,
        /// The error.
        error: std::io::Error,
    },
    /// A distributed job that lost a rank, could not form, or was refused.
    #[error("distributed training failed: {0}")]
    Distributed(String),
    /// A model or weights error.
    #[error(transparent)]
    Model(#[from] kiln_models::ModelError),
}

impl EngineError {
    /// An I/O error on `path`.
    pub fn io(path: &Path, error: std::io::Error) -> Self {
        EngineError::Io {
            path: path.display().to_string(),
            error,
        }
    }
}
