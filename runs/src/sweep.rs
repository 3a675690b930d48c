//! Hyperparameter sweeps, as the estimator's HyperDrive runs them: a sweep file wraps a job with
//! a parameter space, a sampling method, a primary metric and an early-termination policy; the
//! sweep is a run of its own whose trials are normal runs.
//!
//! - [`spec`]: the sweep file, validated with the file's line.
//! - [`space`]: parameter expressions (`choice`, `uniform`, `loguniform`, ...) and the grid.
//! - [`tpe`]: bayesian sampling, a tree-structured Parzen estimator.
//! - [`policy`]: early termination: bandit, median stopping, truncation selection.
//! - [`driver`]: a sweep's life: trials started, followed, cut and ended.
//! - [`store`]: trials in the run history.

pub mod driver;
pub mod policy;
pub mod space;
pub mod spec;
pub mod store;
pub mod tpe;

pub use driver::{SweepJob, SweepOutcome, execute, prepare};
pub use policy::{Goal, Policy};
pub use spec::{Sampling, SweepSpec};
pub use store::SWEEP_TARGET;

use serde::Serialize;

use crate::error::RunsError;
use crate::history::RunHistory;
use crate::status::RunStatus;
use space::Params;

/// A sweep as `kiln sweep status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct SweepReport {
    /// The sweep's run id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its state.
    pub status: RunStatus,
    /// Why it failed or was canceled.
    pub error: Option<String>,
    /// The sweep file.
    pub file: String,
    /// The primary metric.
    pub primary_metric_name: String,
    /// Its goal.
    pub primary_metric_goal: Goal,
    /// The sampling method.
    pub sampling: Sampling,
    /// The early-termination policy's name.
    pub policy: String,
    /// The trial limit.
    pub max_total_runs: usize,
    /// The sweep it resumed.
    pub resumed_from: Option<String>,
    /// Its trials in order.
    pub trials: Vec<TrialReport>,
}

/// One trial of a [`SweepReport`].
#[derive(Debug, Clone, Serialize)]
pub struct TrialReport {
    /// The trial number.
    pub trial: usize,
    /// Its run.
    pub run_id: String,
    /// Its state.
    pub status: RunStatus,
    /// Its parameters, as given to the program.
    pub params: serde_json::Map<String, serde_json::Value>,
    /// Its best primary-metric value (`null` when it reported none).
    #[serde(serialize_with = "kiln_engine::train::metrics::json_value::serialize")]
    pub best: f64,
    /// Its last primary-metric value.
    #[serde(serialize_with = "kiln_engine::train::metrics::json_value::serialize")]
    pub last: f64,
    /// How many times it reported the primary metric.
    pub reports: usize,
    /// Why the sweep canceled it, when it did.
    pub note: Option<String>,
}

/// Sweep `id` (an id or unique prefix; the newest sweep when `None`) with its trials.
pub fn report(history: &RunHistory, id: Option<&str>) -> Result<SweepReport, RunsError> {
    let id = match id {
        Some(id) => history.resolve(id)?,
        None => history.latest_sweep()?,
    };
    let run = history.run(&id)?;
    if run.compute_target != SWEEP_TARGET {
        return Err(RunsError::Runs(format!(
            "run {id} is not a sweep (see `kiln runs show {id}`)"
        )));
    }
    let job: SweepJob = serde_json::from_str(&run.job)
        .map_err(|e| RunsError::Runs(format!("sweep {id}: unreadable sweep: {e}")))?;
    let spec = job.spec;
    let mut trials = Vec::new();
    for row in history.trials(&id)? {
        let trial_run = history.run(&row.run_id)?;
        let curve = history.primary_curve(&row.run_id, &spec)?;
        trials.push(TrialReport {
            trial: row.trial,
            run_id: row.run_id,
            status: trial_run.status,
            params: params_json(&row.params),
            best: spec.goal.best(curve.iter().copied()),
            last: curve.last().copied().unwrap_or(f64::NAN),
            reports: curve.len(),
            note: row.note,
        });
    }
    Ok(SweepReport {
        id: run.id,
        name: run.name,
        status: run.status,
        error: run.error,
        file: spec.path.display().to_string(),
        primary_metric_name: spec.primary_metric_name,
        primary_metric_goal: spec.goal,
        sampling: spec.sampling,
        policy: spec.policy.name().to_string(),
        max_total_runs: spec.max_total_runs,
        resumed_from: job.resumed_from,
        trials,
    })
}

impl SweepReport {
    /// The completed trial with the best primary metric.
    pub fn best(&self) -> Option<&TrialReport> {
        self.trials
            .iter()
            .filter(|t| t.status == RunStatus::Completed && !t.best.is_nan())
            .reduce(|a, b| {
                if self.primary_metric_goal.better(b.best, a.best) {
                    b
                } else {
                    a
                }
            })
    }
}

fn params_json(params: &Params) -> serde_json::Map<String, serde_json::Value> {
    params
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                serde_json::to_value(v).expect("a value serialises"),
            )
        })
        .collect()
}

/// Cancels sweep `id`: the sweep cancels its running trials and ends `Canceled`.
pub fn cancel(history: &RunHistory, id: &str) -> Result<RunStatus, RunsError> {
    let run = history.run(id)?;
    if run.compute_target != SWEEP_TARGET {
        return Err(RunsError::Runs(format!(
            "run {} is not a sweep; cancel it with `kiln runs cancel {}`",
            run.id, run.id
        )));
    }
    crate::submit::cancel(history, &run.id)
}
