//! Runs: what `kiln submit` makes of a job file, and where everything about it is kept.
//!
//! - [`history`]: [`RunHistory`], the SQLite run history (experiments, runs, metrics, artifacts,
//!   models).
//! - [`snapshot`]: copying `source_directory` into the run (`.kilnignore`, size limit, git state).
//! - [`command`]: the command line a job runs as (local, `mpirun`, an `sbatch` script).
//! - [`submit`]: a run's life, `Queued -> Preparing -> Running -> Finalizing -> Completed |
//!   Failed | Canceled`, with logs streamed and metrics ingested while it goes; cancel.
//! - [`ingest`]: metrics read from `logs/metrics.jsonl` as programs append them.
//! - [`registry`]: [`ModelRegistry`], versioned model files with SHA-256.
//!
//! A run lives in `$KILN_HOME/runs/<id>/`: `snapshot/` (the working directory, with `outputs`
//! and `logs` linked to the run's own), `outputs/`, `logs/` (`output.log`, `metrics.jsonl`).

pub mod command;
pub mod history;
pub mod ingest;
pub mod registry;
mod schema;
pub mod snapshot;
pub mod submit;

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use rand::Rng;
use serde::Serialize;

pub use history::{Metric, RunHistory, RunRecord};
pub use registry::ModelRegistry;

/// The file a live `kiln submit` holds locked for its run's whole life.
pub const LOCK_FILE: &str = ".submitter.lock";

/// A run's lifecycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum RunStatus {
    /// Recorded, not started.
    Queued,
    /// Snapshotting the source and writing the command.
    Preparing,
    /// The program is running.
    Running,
    /// The program ended; metrics and artifacts are being recorded.
    Finalizing,
    /// Exit code 0.
    Completed,
    /// A non-zero exit, a start failure, or a lost submitter.
    Failed,
    /// Stopped by `kiln runs cancel` or Ctrl-C.
    Canceled,
}

impl RunStatus {
    /// The name stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Queued => "Queued",
            RunStatus::Preparing => "Preparing",
            RunStatus::Running => "Running",
            RunStatus::Finalizing => "Finalizing",
            RunStatus::Completed => "Completed",
            RunStatus::Failed => "Failed",
            RunStatus::Canceled => "Canceled",
        }
    }

    /// Whether the run has ended.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            RunStatus::Completed | RunStatus::Failed | RunStatus::Canceled
        )
    }
}

impl std::str::FromStr for RunStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [
            RunStatus::Queued,
            RunStatus::Preparing,
            RunStatus::Running,
            RunStatus::Finalizing,
            RunStatus::Completed,
            RunStatus::Failed,
            RunStatus::Canceled,
        ]
        .into_iter()
        .find(|v| v.as_str() == s)
        .ok_or_else(|| format!("unknown run status '{s}'"))
    }
}

impl std::fmt::Display for RunStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `$KILN_HOME`, default `~/.kiln`.
pub fn kiln_home() -> PathBuf {
    if let Some(home) = std::env::var_os("KILN_HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(home);
    }
    let user_home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    user_home.join(".kiln")
}

/// The directory of run `id`.
pub fn run_dir(home: &Path, id: &str) -> PathBuf {
    home.join("runs").join(id)
}

/// Seconds since the Unix epoch.
pub fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// A short id: 10 lowercase letters and digits (about 51 bits).
pub fn new_run_id() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..10)
        .map(|i| {
            // A letter first, so ids never look like numbers.
            let n = if i == 0 { 26 } else { ALPHABET.len() };
            ALPHABET[rng.random_range(0..n)] as char
        })
        .collect()
}

/// An exclusive `flock` on a run's lock file, held while its `kiln submit` lives; the kernel
/// drops it when the process dies, however it dies.
pub struct SubmitterLock {
    _file: File,
}

impl SubmitterLock {
    /// Takes the lock, waiting while someone checks it.
    pub fn acquire(path: &Path) -> std::io::Result<Self> {
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)?;
        // SAFETY: flock on a file descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Self { _file: file })
    }

    /// Whether a live process holds the lock at `path`.
    pub fn is_held(path: &Path) -> bool {
        let Ok(file) = File::options().write(true).open(path) else {
            return false;
        };
        // SAFETY: flock on a file descriptor we own; released when `file` closes.
        unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) != 0 }
    }
}
