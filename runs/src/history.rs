//! `RunHistory`: experiments, runs, metrics, artifacts and registered models in one SQLite
//! database (`$KILN_HOME/kiln.db`, WAL, a busy timeout so several writers wait their turn),
//! with a schema version and forward migrations. Opening it (read-write, read-only, or anew
//! for `kiln runs recover`) is in `history/open.rs`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rusqlite::{Connection, TransactionBehavior, params};
use serde::{Deserialize, Serialize};

use kiln_engine::train::metrics::json_value;

use crate::error::RunsError;
use crate::{RunStatus, now};

pub(crate) mod open;

pub use open::DB_FILE;

/// How often a live submitter records that it is alive ([`RunHistory::heartbeat`]).
pub const HEARTBEAT: Duration = Duration::from_secs(5);

/// One run as the history holds it.
#[derive(Debug, Clone, Serialize)]
pub struct RunRecord {
    /// Short unique id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Experiment name.
    pub experiment: String,
    /// Lifecycle state.
    pub status: RunStatus,
    /// Seconds since the Unix epoch.
    pub created: f64,
    /// When the program started.
    pub started: Option<f64>,
    /// When the run reached its final state.
    pub ended: Option<f64>,
    /// Seconds from start to end (or to now while running).
    pub duration: Option<f64>,
    /// The program's exit code.
    pub exit_code: Option<i64>,
    /// Why a run failed or was canceled.
    pub error: Option<String>,
    /// The machine `kiln submit` ran on.
    pub host: String,
    /// `local`, `mpi` or `slurm`.
    pub compute_target: String,
    /// The command line that ran.
    pub command: Option<String>,
    /// The source directory's git commit.
    pub git_commit: Option<String>,
    /// Whether the git work tree had changes.
    pub git_dirty: Option<bool>,
    /// The Slurm job id.
    pub scheduler_id: Option<String>,
    /// The process group of the program (local and mpi runs).
    #[serde(skip)]
    pub process_group: Option<i64>,
    /// The pid of the submitting `kiln`.
    #[serde(skip)]
    pub submitter_pid: Option<i64>,
    /// The validated job, as JSON.
    #[serde(skip)]
    pub job: String,
    /// Whether `kiln runs cancel` asked for this run to stop.
    #[serde(skip)]
    pub cancel_requested: bool,
    /// The last value of each metric (`split/name` or `name`).
    pub last_metrics: Vec<(String, f64)>,
}

/// One metric value: the trainer's `metrics.jsonl` record, fields optional for other programs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metric {
    /// The worker's rank.
    #[serde(default)]
    pub rank: Option<i64>,
    /// The epoch (1-based), if any.
    #[serde(default)]
    pub epoch: Option<i64>,
    /// The step, if any.
    #[serde(default)]
    pub step: Option<i64>,
    /// `train`, `val` or empty.
    #[serde(default)]
    pub split: Option<String>,
    /// The metric's name.
    pub name: String,
    /// Its value (`null` is NaN; the infinities are `"inf"` and `"-inf"`).
    #[serde(
        default,
        serialize_with = "json_value::serialize_option",
        deserialize_with = "json_value::deserialize_option"
    )]
    pub value: Option<f64>,
    /// Seconds since the Unix epoch.
    #[serde(default)]
    pub time: Option<f64>,
}

impl Metric {
    /// `split/name`, or `name` without a split.
    pub fn key(&self) -> String {
        match self.split.as_deref() {
            Some(s) if !s.is_empty() => format!("{s}/{}", self.name),
            _ => self.name.clone(),
        }
    }
}

/// The id of experiment `name`, created (at `created`) when new.
pub(crate) fn experiment_id(
    tx: &rusqlite::Transaction,
    name: &str,
    created: f64,
) -> Result<i64, RunsError> {
    tx.execute(
        "INSERT OR IGNORE INTO experiments (name, created) VALUES (?1, ?2)",
        params![name, created],
    )
    .map_err(db_error)?;
    tx.query_row("SELECT id FROM experiments WHERE name = ?1", [name], |r| {
        r.get(0)
    })
    .map_err(db_error)
}

/// What a new run starts with.
#[derive(Debug, Clone)]
pub struct NewRun<'a> {
    /// Display name.
    pub name: &'a str,
    /// Experiment (created on first use).
    pub experiment: &'a str,
    /// `local`, `mpi` or `slurm`.
    pub compute_target: &'a str,
    /// The validated job as JSON.
    pub job: &'a str,
}

/// The run history database.
pub struct RunHistory {
    pub(super) conn: Connection,
    home: PathBuf,
    /// Opened with [`RunHistory::open_read_only`]: nothing is written.
    read_only: bool,
}

pub(super) fn db_error(e: rusqlite::Error) -> RunsError {
    RunsError::Runs(format!("run history: {e}"))
}

impl RunHistory {
    /// `$KILN_HOME`.
    pub fn home(&self) -> &Path {
        &self.home
    }

    /// The schema version.
    pub fn schema_version(&self) -> Result<usize, RunsError> {
        self.conn
            .query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))
            .map(|v| v as usize)
            .map_err(db_error)
    }

    /// Records a new `Queued` run with a fresh id.
    pub fn create_run(&mut self, new: &NewRun) -> Result<String, RunsError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db_error)?;
        let experiment = experiment_id(&tx, new.experiment, now())?;
        let id = loop {
            let id = super::new_run_id();
            let taken: bool = tx
                .query_row("SELECT count(*) FROM runs WHERE id = ?1", [&id], |r| {
                    r.get::<_, i64>(0).map(|n| n > 0)
                })
                .map_err(db_error)?;
            if !taken {
                break id;
            }
        };
        let t = now();
        tx.execute(
            "INSERT INTO runs (id, name, experiment_id, status, created, updated, host,
                submitter_pid, compute_target, job)
             VALUES (?1, ?2, ?3, ?4, ?5, ?5, ?6, ?7, ?8, ?9)",
            params![
                id,
                new.name,
                experiment,
                RunStatus::Queued.as_str(),
                t,
                kiln_engine::dist::wire::hostname(),
                std::process::id(),
                new.compute_target,
                new.job
            ],
        )
        .map_err(db_error)?;
        tx.commit().map_err(db_error)?;
        Ok(id)
    }

    /// Moves a run to `status` unless it already ended; returns whether it moved.
    pub fn set_status(&self, id: &str, status: RunStatus) -> Result<bool, RunsError> {
        let n = self
            .conn
            .execute(
                "UPDATE runs SET status = ?2, updated = ?3, submitter_pid = ?4
                 WHERE id = ?1 AND status NOT IN ('Completed', 'Failed', 'Canceled')",
                params![id, status.as_str(), now(), std::process::id()],
            )
            .map_err(db_error)?;
        Ok(n == 1)
    }

    /// Records the source's git state.
    pub fn set_git(&self, id: &str, commit: &str, dirty: bool) -> Result<(), RunsError> {
        self.conn
            .execute(
                "UPDATE runs SET git_commit = ?2, git_dirty = ?3 WHERE id = ?1",
                params![id, commit, dirty],
            )
            .map(drop)
            .map_err(db_error)
    }

    /// Marks a run `Running` with its command line and process group (or scheduler id).
    pub fn set_running(
        &self,
        id: &str,
        command: &str,
        process_group: Option<i64>,
        scheduler_id: Option<&str>,
    ) -> Result<(), RunsError> {
        let t = now();
        self.conn
            .execute(
                "UPDATE runs SET status = 'Running', started = ?2, updated = ?2, command = ?3,
                    process_group = ?4, scheduler_id = ?5
                 WHERE id = ?1 AND status NOT IN ('Completed', 'Failed', 'Canceled')",
                params![id, t, command, process_group, scheduler_id],
            )
            .map(drop)
            .map_err(db_error)
    }

    /// Moves a run to its final state, unless it already has one; returns whether it moved.
    /// The run's directory keeps the row as it ended too (see [`crate::recover`]).
    pub fn finish(
        &self,
        id: &str,
        status: RunStatus,
        exit_code: Option<i64>,
        error: Option<&str>,
    ) -> Result<bool, RunsError> {
        let t = now();
        let n = self
            .conn
            .execute(
                "UPDATE runs SET status = ?2, ended = ?3, updated = ?3, exit_code = ?4, error = ?5
                 WHERE id = ?1 AND status NOT IN ('Completed', 'Failed', 'Canceled')",
                params![id, status.as_str(), t, exit_code, error],
            )
            .map_err(db_error)?;
        if n == 1 {
            crate::recover::keep_end_record(self, id);
        }
        Ok(n == 1)
    }

    /// Records that run `id`'s submitter is alive, at most once every [`HEARTBEAT`] since
    /// `*last`: a lost run's end is taken from it (`updated`).
    pub fn heartbeat(&self, id: &str, last: &mut Instant) -> Result<(), RunsError> {
        if last.elapsed() < HEARTBEAT {
            return Ok(());
        }
        *last = Instant::now();
        self.conn
            .execute(
                "UPDATE runs SET updated = ?2
                 WHERE id = ?1 AND status NOT IN ('Completed', 'Failed', 'Canceled')",
                params![id, now()],
            )
            .map(drop)
            .map_err(db_error)
    }

    /// Marks a run `Failed` (lost): its submitter, pid `submitter`, died without finishing it.
    /// The run ended when the submitter was last seen alive, `seen_alive`, not when the loss
    /// was noticed. Returns whether it moved (a run that already ended stays as it was).
    pub fn mark_lost(
        &self,
        id: &str,
        submitter: Option<i64>,
        seen_alive: f64,
    ) -> Result<bool, RunsError> {
        let why = format!(
            "lost: the kiln submit process (pid {}) on {} stopped without finishing the run",
            submitter.unwrap_or(0),
            kiln_engine::dist::wire::hostname()
        );
        let n = self
            .conn
            .execute(
                "UPDATE runs SET status = ?2, ended = max(?3, coalesce(started, ?3)),
                    updated = ?4, error = ?5
                 WHERE id = ?1 AND status NOT IN ('Completed', 'Failed', 'Canceled')",
                params![id, RunStatus::Failed.as_str(), seen_alive, now(), why],
            )
            .map_err(db_error)?;
        if n == 1 {
            crate::recover::keep_end_record(self, id);
        }
        Ok(n == 1)
    }

    /// Asks for a run to stop; returns false when it already ended.
    pub fn request_cancel(&self, id: &str) -> Result<bool, RunsError> {
        let n = self
            .conn
            .execute(
                "UPDATE runs SET cancel_requested = 1
                 WHERE id = ?1 AND status NOT IN ('Completed', 'Failed', 'Canceled')",
                [id],
            )
            .map_err(db_error)?;
        Ok(n == 1)
    }

    /// Whether `kiln runs cancel` asked for the run to stop.
    pub fn cancel_requested(&self, id: &str) -> Result<bool, RunsError> {
        self.conn
            .query_row(
                "SELECT cancel_requested FROM runs WHERE id = ?1",
                [id],
                |r| r.get(0),
            )
            .map_err(db_error)
    }

    /// Appends metric values in one transaction; returns how many were added.
    pub fn add_metrics(&mut self, id: &str, metrics: &[Metric]) -> Result<usize, RunsError> {
        if metrics.is_empty() {
            return Ok(0);
        }
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db_error)?;
        {
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO metrics (run_id, rank, epoch, step, split, name, value, time)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                )
                .map_err(db_error)?;
            for m in metrics {
                insert
                    .execute(params![
                        id,
                        m.rank,
                        m.epoch,
                        m.step,
                        m.split,
                        m.name,
                        m.value,
                        m.time.unwrap_or_else(now)
                    ])
                    .map_err(db_error)?;
            }
        }
        tx.commit().map_err(db_error)?;
        Ok(metrics.len())
    }

    /// Replaces the run's artifact list with `files` (path relative to the run, size).
    pub fn set_artifacts(&mut self, id: &str, files: &[(String, u64)]) -> Result<(), RunsError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db_error)?;
        tx.execute("DELETE FROM artifacts WHERE run_id = ?1", [id])
            .map_err(db_error)?;
        for (path, size) in files {
            tx.execute(
                "INSERT INTO artifacts (run_id, path, size) VALUES (?1, ?2, ?3)",
                params![id, path, *size as i64],
            )
            .map_err(db_error)?;
        }
        tx.commit().map_err(db_error)
    }

    /// The run's artifacts: path relative to the run directory, size.
    pub fn artifacts(&self, id: &str) -> Result<Vec<(String, u64)>, RunsError> {
        let mut q = self
            .conn
            .prepare("SELECT path, size FROM artifacts WHERE run_id = ?1 ORDER BY path")
            .map_err(db_error)?;
        let rows = q
            .query_map([id], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))
            .map_err(db_error)?;
        rows.collect::<Result<_, _>>().map_err(db_error)
    }

    /// Resolves a run id or a unique prefix of one.
    pub fn resolve(&self, id: &str) -> Result<String, RunsError> {
        if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(RunsError::Runs(format!("no run '{id}'")));
        }
        let mut q = self
            .conn
            .prepare("SELECT id FROM runs WHERE id LIKE ?1 || '%' LIMIT 2")
            .map_err(db_error)?;
        let ids: Vec<String> = q
            .query_map([id], |r| r.get(0))
            .map_err(db_error)?
            .collect::<Result<_, _>>()
            .map_err(db_error)?;
        match ids.as_slice() {
            [one] => Ok(one.clone()),
            [] => Err(RunsError::Runs(format!(
                "no run '{id}' (see `kiln runs list`)"
            ))),
            _ if ids.contains(&id.to_string()) => Ok(id.to_string()),
            _ => Err(RunsError::Runs(format!(
                "'{id}' matches several runs; give more of the id"
            ))),
        }
    }

    /// One run (id or unique prefix), with its last metrics.
    pub fn run(&self, id: &str) -> Result<RunRecord, RunsError> {
        let id = self.resolve(id)?;
        let mut runs = self.query_runs("WHERE r.id = ?1", &[&id])?;
        runs.pop()
            .ok_or_else(|| RunsError::Runs(format!("no run '{id}'")))
    }

    /// All runs, newest first, optionally of one experiment.
    pub fn runs(&self, experiment: Option<&str>) -> Result<Vec<RunRecord>, RunsError> {
        match experiment {
            Some(e) => self.query_runs("WHERE e.name = ?1 ORDER BY r.created DESC", &[&e]),
            None => self.query_runs("ORDER BY r.created DESC", &[]),
        }
    }

    fn query_runs(
        &self,
        clause: &str,
        args: &[&dyn rusqlite::ToSql],
    ) -> Result<Vec<RunRecord>, RunsError> {
        let sql = format!(
            "SELECT r.id, r.name, e.name, r.status, r.created, r.started, r.ended, r.exit_code,
                r.error, r.host, r.compute_target, r.command, r.git_commit, r.git_dirty,
                r.scheduler_id, r.process_group, r.submitter_pid, r.job, r.cancel_requested
             FROM runs r JOIN experiments e ON e.id = r.experiment_id {clause}"
        );
        let mut q = self.conn.prepare(&sql).map_err(db_error)?;
        let rows = q
            .query_map(args, |r| {
                let status: String = r.get(3)?;
                let started: Option<f64> = r.get(5)?;
                let ended: Option<f64> = r.get(6)?;
                Ok(RunRecord {
                    id: r.get(0)?,
                    name: r.get(1)?,
                    experiment: r.get(2)?,
                    status: status.parse().unwrap_or(RunStatus::Failed),
                    created: r.get(4)?,
                    started,
                    ended,
                    duration: started.map(|s| ended.unwrap_or_else(now) - s),
                    exit_code: r.get(7)?,
                    error: r.get(8)?,
                    host: r.get(9)?,
                    compute_target: r.get(10)?,
                    command: r.get(11)?,
                    git_commit: r.get(12)?,
                    git_dirty: r.get(13)?,
                    scheduler_id: r.get(14)?,
                    process_group: r.get(15)?,
                    submitter_pid: r.get(16)?,
                    job: r.get(17)?,
                    cancel_requested: r.get(18)?,
                    last_metrics: Vec::new(),
                })
            })
            .map_err(db_error)?;
        let mut runs: Vec<RunRecord> = rows.collect::<Result<_, _>>().map_err(db_error)?;
        for run in &mut runs {
            run.last_metrics = self.last_metrics(&run.id)?;
        }
        Ok(runs)
    }

    /// Every metric value of a run, in the order logged.
    pub fn metrics(&self, id: &str) -> Result<Vec<Metric>, RunsError> {
        let mut q = self
            .conn
            .prepare(
                "SELECT rank, epoch, step, split, name, value, time FROM metrics
                 WHERE run_id = ?1 ORDER BY rowid",
            )
            .map_err(db_error)?;
        let rows = q
            .query_map([id], |r| {
                Ok(Metric {
                    rank: r.get(0)?,
                    epoch: r.get(1)?,
                    step: r.get(2)?,
                    split: r.get(3)?,
                    name: r.get(4)?,
                    value: r.get(5)?,
                    time: r.get(6)?,
                })
            })
            .map_err(db_error)?;
        rows.collect::<Result<_, _>>().map_err(db_error)
    }

    /// How many metric values a run has.
    pub fn metric_count(&self, id: &str) -> Result<usize, RunsError> {
        self.conn
            .query_row(
                "SELECT count(*) FROM metrics WHERE run_id = ?1",
                [id],
                |r| r.get::<_, i64>(0).map(|n| n as usize),
            )
            .map_err(db_error)
    }

    /// The last value of each metric key of a run.
    pub fn last_metrics(&self, id: &str) -> Result<Vec<(String, f64)>, RunsError> {
        let mut q = self
            .conn
            .prepare(
                "SELECT split, name, value FROM last_metrics WHERE run_id = ?1
                 ORDER BY split, name",
            )
            .map_err(db_error)?;
        let rows = q
            .query_map([id], |r| {
                let m = Metric {
                    rank: None,
                    epoch: None,
                    step: None,
                    split: r.get(0)?,
                    name: r.get(1)?,
                    value: r.get(2)?,
                    time: None,
                };
                Ok((m.key(), m.value.unwrap_or(f64::NAN)))
            })
            .map_err(db_error)?;
        rows.collect::<Result<_, _>>().map_err(db_error)
    }

    /// Runs that say they are active on this machine but whose submitter holds no lock:
    /// their `kiln submit` was killed, and their guard too (or it would have marked them).
    /// Each becomes `Failed` (lost), ended at its last heartbeat; returns their ids. A
    /// read-only history marks nothing: whoever can write it will.
    pub fn reap_lost(&self) -> Result<Vec<String>, RunsError> {
        if self.read_only {
            return Ok(Vec::new());
        }
        let host = kiln_engine::dist::wire::hostname();
        let mut q = self
            .conn
            .prepare(
                "SELECT id, submitter_pid, process_group, updated FROM runs
                 WHERE status IN ('Queued', 'Preparing', 'Running', 'Finalizing')
                   AND host = ?1 AND updated < ?2",
            )
            .map_err(db_error)?;
        // A grace period covers the hand-over from `kiln submit --detach` to its worker.
        type Candidate = (String, Option<i64>, Option<i64>, f64);
        let candidates: Vec<Candidate> = q
            .query_map(params![host, now() - 5.0], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })
            .map_err(db_error)?
            .collect::<Result<_, _>>()
            .map_err(db_error)?;
        let mut lost = Vec::new();
        for (id, pid, group, updated) in candidates {
            let lock = super::run_dir(&self.home, &id).join(super::LOCK_FILE);
            if super::SubmitterLock::is_held(&lock) {
                continue;
            }
            if self.mark_lost(&id, pid, updated)? {
                if let Some(group) = group {
                    super::stop_orphans(group, &id);
                }
                lost.push(id);
            }
        }
        Ok(lost)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn home(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("kiln-history-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn runs_move_forward_and_never_leave_a_final_state() {
        let dir = home("status");
        let mut history = RunHistory::open(&dir).unwrap();
        let new = NewRun {
            name: "n",
            experiment: "e",
            compute_target: "local",
            job: "{}",
        };
        let id = history.create_run(&new).unwrap();
        assert_eq!(history.resolve(&id[..4]).unwrap(), id);
        assert!(history.set_status(&id, RunStatus::Running).unwrap());
        let m = |v: f64| Metric {
            rank: Some(0),
            epoch: Some(1),
            step: None,
            split: Some("val".into()),
            name: "acc".into(),
            value: Some(v),
            time: None,
        };
        history.add_metrics(&id, &[m(0.5), m(0.75)]).unwrap();
        assert_eq!(
            history.last_metrics(&id).unwrap(),
            [("val/acc".into(), 0.75)]
        );
        assert!(
            history
                .finish(&id, RunStatus::Completed, Some(0), None)
                .unwrap()
        );
        assert!(
            !history
                .finish(&id, RunStatus::Failed, Some(1), None)
                .unwrap()
        );
        assert!(!history.set_status(&id, RunStatus::Running).unwrap());
        let run = history.run(&id).unwrap();
        assert_eq!((run.status, run.exit_code), (RunStatus::Completed, Some(0)));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
