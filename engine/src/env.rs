//! The environment variables kiln reads and sets, each named once here, and [`RunContext`],
//! what a training process learns from `kiln submit`'s variables (read in one place).
//!
//! The distributed contract's variables (`RANK`, `WORLD_SIZE`, Open MPI's, Slurm's) are read by
//! [`crate::dist::WorldInfo`]; `KILN_HOME` by the job runner.

use std::ffi::OsString;
use std::path::PathBuf;

/// The run id `kiln submit` gives a run's processes.
pub const RUN_ID: &str = "KILN_RUN_ID";
/// The run's `outputs/` directory.
pub const OUTPUTS: &str = "KILN_OUTPUTS";
/// The run's `logs/` directory (where `metrics.jsonl` goes).
pub const LOGS: &str = "KILN_LOGS";
/// The job runner's home: run history, runs, registered models (default `~/.kiln`).
pub const HOME: &str = "KILN_HOME";
/// The secret every worker of a distributed job presents to rank 0.
pub const JOB_TOKEN: &str = "KILN_JOB_TOKEN";
/// Seconds a dead or silent worker is waited for.
pub const DIST_TIMEOUT: &str = "KILN_DIST_TIMEOUT";
/// The largest source snapshot `kiln submit` takes, in MiB.
pub const SNAPSHOT_LIMIT_MB: &str = "KILN_SNAPSHOT_LIMIT_MB";

/// What `kiln submit` tells a run's training process: its id and where its files go. Outside
/// a submitted run, the run is `local` and the files go where the config says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunContext {
    /// The run's id (`local` outside `kiln submit`).
    pub run_id: String,
    /// The run's `outputs/`, which replaces the default output directory.
    pub outputs: Option<PathBuf>,
    /// The run's `logs/`, where `metrics.jsonl` and the TensorBoard files go.
    pub logs: Option<PathBuf>,
}

impl RunContext {
    /// Reads `KILN_RUN_ID`, `KILN_OUTPUTS` and `KILN_LOGS`.
    pub fn from_env() -> Self {
        let path = |name: &str| {
            std::env::var_os(name)
                .filter(|v: &OsString| !v.is_empty())
                .map(PathBuf::from)
        };
        Self {
            run_id: std::env::var(RUN_ID).unwrap_or_else(|_| "local".into()),
            outputs: path(OUTPUTS),
            logs: path(LOGS),
        }
    }

    /// A run outside `kiln submit`.
    pub fn local() -> Self {
        Self {
            run_id: "local".into(),
            outputs: None,
            logs: None,
        }
    }
}
