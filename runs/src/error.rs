//! What can go wrong running jobs: a job file's bad key or value (by line), the run history, a
//! run directory or the registry refusing or failing, a file system error on a named path, or
//! the engine's own errors.

use std::path::Path;

use kiln_engine::EngineError;

/// A job runner error; every message names the file, line, run or value at fault.
#[derive(Debug, thiserror::Error)]
pub enum RunsError {
    /// A job file with a bad key or value.
    #[error("{file}:{line}: {message}")]
    InvalidJob {
        /// The job file.
        file: String,
        /// The 1-based line of the key at fault.
        line: usize,
        /// What was wrong and what was expected.
        message: String,
    },
    /// The run history, a run directory or the model registry.
    #[error("{0}")]
    Runs(String),
    /// A file system error on a named path. The OS error is part of the message, not a
    /// separate cause, so it is printed once.
    #[error("{path}: {error}")]
    Io {
        /// The path.
        path: String,
        /// The error.
        error: std::io::Error,
    },
    /// An error of the training engine (a model directory, an option).
    #[error(transparent)]
    Engine(#[from] EngineError),
}

impl RunsError {
    /// An I/O error on `path`.
    pub fn io(path: &Path, error: std::io::Error) -> Self {
        RunsError::Io {
            path: path.display().to_string(),
            error,
        }
    }
}
