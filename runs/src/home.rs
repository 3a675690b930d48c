//! Where runs live on disk and how they are named: `$KILN_HOME`, a run's directory and the
//! layout inside it, run ids and timestamps.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use rand::Rng;

/// `$KILN_HOME`, default `~/.kiln`, made absolute: programs run in their snapshot directory
/// and must still find the run's paths.
pub fn kiln_home() -> PathBuf {
    let home = match std::env::var_os(kiln_engine::env::HOME).filter(|h| !h.is_empty()) {
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

/// Where a run's pieces are.
#[derive(Debug, Clone)]
pub struct RunPaths {
    /// The run's id.
    pub id: String,
    /// `$KILN_HOME`.
    pub home: PathBuf,
    /// `$KILN_HOME/runs/<id>`.
    pub dir: PathBuf,
    /// The working directory: the source snapshot.
    pub snapshot: PathBuf,
    /// `KILN_OUTPUTS`.
    pub outputs: PathBuf,
    /// `KILN_LOGS`.
    pub logs: PathBuf,
}

impl RunPaths {
    /// The layout of run `id` under `home`.
    pub fn new(home: &Path, id: &str) -> Self {
        let dir = run_dir(home, id);
        Self {
            id: id.to_string(),
            home: home.to_path_buf(),
            snapshot: dir.join("snapshot"),
            outputs: dir.join("outputs"),
            logs: dir.join("logs"),
            dir,
        }
    }

    /// The combined stdout and stderr of the run.
    pub fn output_log(&self) -> PathBuf {
        self.logs.join("output.log")
    }

    /// The metrics file programs append to.
    pub fn metrics_file(&self) -> PathBuf {
        self.logs.join("metrics.jsonl")
    }

    /// The `[train]` table the built-in trainer reads.
    pub fn train_job(&self) -> PathBuf {
        self.dir.join("train.toml")
    }
}
