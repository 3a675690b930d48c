//! A run as its directory tells it: the end record [`RunHistory::finish`] leaves there
//! ([`END_RECORD`]), or, for a run without one, what `job.json` and its files' times say, its end
//! inferred from its files; and its metrics, read from `logs/metrics.jsonl` as they were ingested.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use kiln_engine::model_dir::INFO_FILE;
use rusqlite::{TransactionBehavior, params};
use serde::{Deserialize, Serialize};

use super::END_RECORD;
use crate::error::RunsError;
use crate::history::{Metric, RunHistory, db_error, experiment_id};
use crate::home::RunPaths;
use crate::ingest::MetricsTail;
use crate::job::JobSpec;
use crate::submit::{Ended, artifacts};
use crate::sweep::store::TrialRow;
use crate::sweep::{SWEEP_TARGET, SweepJob};
use crate::{RunStatus, now, run_dir};

/// The error of a run whose end neither an end record nor its files show.
const UNKNOWN_END: &str = "recovered from disk: final status unknown (the run kept no end \
                           record: it ended before kiln kept one, or its kiln submit was killed)";

/// A run's row as the history holds it, with its artifacts and, for a sweep, its trials: what
/// [`END_RECORD`] keeps, and what a run without one is rebuilt as.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct EndRecord {
    name: String,
    experiment: String,
    status: RunStatus,
    #[serde(with = "super::exact_time")]
    pub(super) created: f64,
    #[serde(with = "super::exact_time::option")]
    started: Option<f64>,
    #[serde(with = "super::exact_time::option")]
    ended: Option<f64>,
    exit_code: Option<i64>,
    error: Option<String>,
    host: String,
    compute_target: String,
    command: Option<String>,
    git_commit: Option<String>,
    git_dirty: Option<bool>,
    scheduler_id: Option<String>,
    /// The job as the history holds it (JSON text).
    job: String,
    pub(super) artifacts: Vec<(String, u64)>,
    #[serde(default)]
    pub(super) trials: Vec<TrialRow>,
}

impl EndRecord {
    fn of(history: &RunHistory, id: &str) -> Result<Self, RunsError> {
        let run = history.run(id)?;
        let trials = if run.compute_target == SWEEP_TARGET {
            history.trials(id)?
        } else {
            Vec::new()
        };
        Ok(Self {
            name: run.name,
            experiment: run.experiment,
            status: run.status,
            created: run.created,
            started: run.started,
            ended: run.ended,
            exit_code: run.exit_code,
            error: run.error,
            host: run.host,
            compute_target: run.compute_target,
            command: run.command,
            git_commit: run.git_commit,
            git_dirty: run.git_dirty,
            scheduler_id: run.scheduler_id,
            job: run.job,
            artifacts: history.artifacts(id)?,
            trials,
        })
    }
}

/// Writes run `id`'s end record into its directory, whole and then renamed into place. The
/// history holds the truth and the record only lets `kiln runs recover` rebuild it, so failing
/// to write it fails nothing (a run whose directory was never made has none).
pub(crate) fn keep_end_record(history: &RunHistory, id: &str) {
    let dir = run_dir(history.home(), id);
    if !dir.is_dir() {
        return;
    }
    let Ok(record) = EndRecord::of(history, id) else {
        return;
    };
    let json = serde_json::to_string_pretty(&record).expect("an end record serialises");
    let partial = dir.join(format!(".{END_RECORD}.partial"));
    if std::fs::write(&partial, json).is_ok() {
        let _ = std::fs::rename(&partial, dir.join(END_RECORD));
    }
}

/// Run directory `paths` as the history would hold it, and whether its end was inferred (it
/// has no readable end record); `None` when the directory holds nothing of a run.
pub(super) fn read_run(paths: &RunPaths) -> Option<(EndRecord, bool)> {
    let kept = std::fs::read_to_string(paths.dir.join(END_RECORD))
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok());
    match kept {
        Some(record) => Some((record, false)),
        None => infer_run(paths).map(|record| (record, true)),
    }
}

/// A run without an end record, from `job.json` and its files: its times are theirs, its end
/// is [`inferred_end`]; what only the history knew (host, command line, git state) is unknown.
fn infer_run(paths: &RunPaths) -> Option<EndRecord> {
    let job_file = paths.dir.join("job.json");
    let text = std::fs::read_to_string(&job_file).ok();
    let has_files = paths.logs.is_dir() || paths.outputs.is_dir();
    if text.is_none() && !has_files {
        return None;
    }
    let job = JobSummary::read(text.as_deref(), &paths.id);
    let created = born(&paths.dir)
        .or_else(|| modified(&job_file))
        .or_else(|| modified(&paths.dir))
        .unwrap_or_else(now);
    let ended = [
        paths.output_log(),
        paths.metrics_file(),
        paths.logs.join("exit_code"),
    ]
    .iter()
    .filter_map(|p| modified(p))
    .reduce(f64::max)
    .unwrap_or(created);
    let end = inferred_end(paths, job.built_in);
    Some(EndRecord {
        name: job.name,
        experiment: job.experiment,
        status: end.status,
        created,
        started: born(&paths.output_log()),
        ended: Some(ended),
        exit_code: end.exit_code,
        error: end.error,
        host: "unknown".into(),
        compute_target: job.compute_target,
        command: None,
        git_commit: None,
        git_dirty: None,
        scheduler_id: None,
        job: job.json,
        artifacts: artifacts(paths),
        trials: Vec::new(),
    })
}

/// How a run without an end record ended, as far as its files tell: a Slurm job leaves its
/// exit code in `logs/exit_code`, and kiln's trainer writes `outputs/model` only once training
/// is done. Otherwise the end is unknown, recorded as `Failed` saying so.
fn inferred_end(paths: &RunPaths, built_in: bool) -> Ended {
    let code = std::fs::read_to_string(paths.logs.join("exit_code"))
        .ok()
        .and_then(|text| text.trim().parse::<i64>().ok());
    if let Some(code) = code {
        return Ended::from_code(code, None, false);
    }
    if built_in && paths.outputs.join("model").join(INFO_FILE).is_file() {
        return Ended {
            status: RunStatus::Completed,
            exit_code: None,
            error: None,
        };
    }
    Ended::failed(UNKNOWN_END.into())
}

/// What a run's `job.json` says: its name, experiment and compute target, the job as the
/// history holds it (compact JSON), and whether kiln's own trainer runs it.
struct JobSummary {
    name: String,
    experiment: String,
    compute_target: String,
    json: String,
    built_in: bool,
}

impl JobSummary {
    fn read(text: Option<&str>, id: &str) -> Self {
        if let Some(job) = text.and_then(|t| serde_json::from_str::<JobSpec>(t).ok()) {
            let target = serde_json::to_value(job.compute_target).expect("a target serialises");
            return Self {
                compute_target: target.as_str().unwrap_or("local").to_string(),
                json: serde_json::to_string(&job).expect("a job serialises"),
                built_in: job.entry_script.is_none(),
                name: job.name,
                experiment: job.experiment,
            };
        }
        if let Some(sweep) = text.and_then(|t| serde_json::from_str::<SweepJob>(t).ok()) {
            return Self {
                json: serde_json::to_string(&sweep).expect("a sweep serialises"),
                name: sweep.spec.name,
                experiment: sweep.spec.job.experiment,
                compute_target: SWEEP_TARGET.to_string(),
                built_in: false,
            };
        }
        // No readable job: the run keeps its id as its name, in the default experiment.
        Self {
            name: id.to_string(),
            experiment: "default".to_string(),
            compute_target: "local".to_string(),
            json: text.unwrap_or("{}").to_string(),
            built_in: false,
        }
    }
}

/// The run's metric values as its submitter ingested them (whole lines; a line that is not a
/// record is skipped and counted), and how many lines were skipped.
pub(super) fn read_metrics(paths: &RunPaths) -> (Vec<Metric>, usize) {
    let file = paths.metrics_file();
    let mut tail = MetricsTail::new(file.clone());
    let mut metrics = tail.poll();
    metrics.extend(tail.finish());
    // A value without a time was given the moment it was ingested; the file's last write is
    // the nearest there is now.
    if let Some(t) = modified(&file) {
        for m in &mut metrics {
            m.time = m.time.or(Some(t));
        }
    }
    (metrics, tail.bad_lines())
}

fn seconds(time: SystemTime) -> f64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

pub(super) fn modified(path: &Path) -> Option<f64> {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .map(seconds)
}

/// When `path` was made, where the file system records it.
fn born(path: &Path) -> Option<f64> {
    std::fs::metadata(path)
        .and_then(|m| m.created())
        .ok()
        .map(seconds)
}

/// The rows recovery writes that no other path does.
impl RunHistory {
    /// Inserts run `id` as `r` describes it, creating its experiment (at the run's creation)
    /// when new.
    pub(super) fn insert_run(&mut self, id: &str, r: &EndRecord) -> Result<(), RunsError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db_error)?;
        let experiment = experiment_id(&tx, &r.experiment, r.created)?;
        tx.execute(
            "INSERT INTO runs (id, name, experiment_id, status, created, updated, started, ended,
                exit_code, error, host, compute_target, command, git_commit, git_dirty,
                scheduler_id, job)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)",
            params![
                id,
                r.name,
                experiment,
                r.status.as_str(),
                r.created,
                r.ended.unwrap_or(r.created),
                r.started,
                r.ended,
                r.exit_code,
                r.error,
                r.host,
                r.compute_target,
                r.command,
                r.git_commit,
                r.git_dirty,
                r.scheduler_id,
                r.job
            ],
        )
        .map_err(db_error)?;
        tx.commit().map_err(db_error)
    }
}
