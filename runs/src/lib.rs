//! kiln's job runner, as the estimator it replaces: a job file says what to run and where,
//! `kiln submit` makes each submission a tracked run, and the run history keeps its status,
//! output, metrics and models.
//!
//! - [`job`]: job files (TOML), validated with the file's line and a "did you mean".
//! - [`home`]: `$KILN_HOME`, a run's directory and its layout ([`RunPaths`]), run ids.
//! - [`status`]: [`RunStatus`], `Queued -> Preparing -> Running -> Finalizing -> Completed |
//!   Failed | Canceled`.
//! - [`snapshot`]: copying `source_directory` into the run (`.kilnignore`, size limit, git state).
//! - [`command`]: the command line a job runs as (local, `mpirun`, an `sbatch` script).
//! - [`submit`]: a run's life, with logs streamed and metrics ingested while it goes; cancel.
//! - [`guard`]: `kiln guard`, between a submitter and its program, so a killed submitter takes
//!   every process of its run with it and marks the run lost.
//! - [`lock`]: the lock a live submitter holds, and stopping what a killed one left behind.
//! - `procs`: the process table from `/proc` (parents, groups, a process's run).
//! - [`ingest`]: metrics read from `logs/metrics.jsonl` as programs append them.
//! - [`history`]: [`RunHistory`], the SQLite run history (experiments, runs, metrics, artifacts).
//! - [`sweep`]: hyperparameter sweeps: parameter spaces, sampling, early-termination policies.
//! - [`registry`]: [`ModelRegistry`], versioned model files with SHA-256.
//! - [`recover`]: `kiln runs recover`, the run history rebuilt from the runs and models on disk.
//! - [`error`]: the job runner's error type, [`RunsError`].
//!
//! A run lives in `$KILN_HOME/runs/<id>/`: `snapshot/` (the working directory, with `outputs`
//! and `logs` linked to the run's own), `outputs/`, `logs/` (`output.log`, `metrics.jsonl`), and
//! once it has ended `run.json`, its row as the history holds it.

pub mod command;
pub mod error;
pub mod guard;
pub mod history;
pub mod home;
pub mod ingest;
pub mod job;
pub mod lock;
mod procs;
pub mod recover;
pub mod registry;
mod schema;
pub mod snapshot;
pub mod status;
pub mod submit;
pub mod sweep;

pub use error::RunsError;
pub use history::{Metric, RunHistory, RunRecord};
pub use home::{RunPaths, kiln_home, new_run_id, now, run_dir};
pub use job::JobSpec;
pub use lock::{LOCK_FILE, SubmitterLock, stop_orphans};
pub use registry::ModelRegistry;
pub use status::RunStatus;
