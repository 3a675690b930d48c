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

/// `$KILN_HOME`, default `~/.kiln`, made absolute: programs run in their snapshot directory
/// and must still find the run's paths.
pub fn kiln_home() -> PathBuf {
    let home = match std::env::var_os("KILN_HOME").filter(|h| !h.is_empty()) {
        Some(home) => PathBuf::from(home),
        None => std::env::var_os("HOME")
            .filter(|h| !h.is_empty())
            .map_or_else(|| PathBuf::from("."), PathBuf::from)
            .join(".kiln"),
    };
    std::path::absolute(&home).unwrap_or(home)
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

/// Sends SIGTERM to the processes left in process group `pgid` that carry run `id`'s
/// `KILN_RUN_ID` (checked in `/proc`, so a recycled group id is never hit): what a killed
/// submitter's program left behind. Returns how many were signalled.
pub fn stop_orphans(pgid: i64, id: &str) -> usize {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let marker = format!("KILN_RUN_ID={id}");
    let mut stopped = 0;
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // Fields after the command name (which may hold spaces): state, ppid, pgrp, ...
        let group = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(2))
            .and_then(|g| g.parse::<i64>().ok());
        if group != Some(pgid) {
            continue;
        }
        let ours = std::fs::read(entry.path().join("environ"))
            .is_ok_and(|env| env.split(|b| *b == 0).any(|v| v == marker.as_bytes()));
        // SAFETY: signals one process of this run, identified by its environment.
        if ours && unsafe { libc::kill(pid, libc::SIGTERM) } == 0 {
            stopped += 1;
        }
    }
    stopped
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

    /// The lock a parent `kiln submit --detach` handed over as file descriptor `fd`; it is
    /// marked close-on-exec again so the run's program never holds it.
    pub fn inherit(fd: i32) -> std::io::Result<Self> {
        use std::os::fd::FromRawFd;
        // SAFETY: fcntl on a descriptor number; fails cleanly when it is not open.
        if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: the descriptor is open (fcntl succeeded) and owned by this process alone.
        let file = unsafe { File::from_raw_fd(fd) };
        // Holding it already, this returns at once; it also proves the fd is the lock.
        // SAFETY: flock on the descriptor just adopted.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Self { _file: file })
    }

    /// The descriptor, for handing the lock to a child process.
    pub fn raw_fd(&self) -> i32 {
        self._file.as_raw_fd()
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
