//! A sweep in the run history: its trials (`sweep_trials`), each trial's primary-metric curve,
//! and the sweeps themselves (runs whose compute target is `sweep`).

use std::collections::HashMap;

use rusqlite::params;
use serde::{Deserialize, Serialize};

use super::space::Params;
use super::spec::SweepSpec;
use crate::error::RunsError;
use crate::history::{RunHistory, db_error};

/// The compute target a sweep's own run records.
pub const SWEEP_TARGET: &str = "sweep";

/// A trial as the history holds it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrialRow {
    /// The trial's number in its sweep (from 0).
    pub trial: usize,
    /// The trial's run.
    pub run_id: String,
    /// Its parameters.
    pub params: Params,
    /// Why the sweep canceled it, when it did.
    pub note: Option<String>,
}

impl RunHistory {
    /// Records that run `run` is trial `trial` of `sweep`, with `params`.
    pub fn add_trial(
        &self,
        sweep: &str,
        trial: usize,
        run: &str,
        params: &Params,
    ) -> Result<(), RunsError> {
        let params = serde_json::to_string(params).expect("parameters serialise");
        self.conn
            .execute(
                "INSERT INTO sweep_trials (sweep_id, trial, run_id, params) VALUES (?1, ?2, ?3, ?4)",
                params![sweep, trial as i64, run, params],
            )
            .map(drop)
            .map_err(db_error)
    }

    /// Records why the sweep canceled a trial.
    pub fn set_trial_note(&self, sweep: &str, trial: usize, note: &str) -> Result<(), RunsError> {
        self.conn
            .execute(
                "UPDATE sweep_trials SET note = ?3 WHERE sweep_id = ?1 AND trial = ?2",
                params![sweep, trial as i64, note],
            )
            .map(drop)
            .map_err(db_error)
    }

    /// A sweep's trials in order.
    pub fn trials(&self, sweep: &str) -> Result<Vec<TrialRow>, RunsError> {
        let mut q = self
            .conn
            .prepare(
                "SELECT trial, run_id, params, note FROM sweep_trials WHERE sweep_id = ?1
                 ORDER BY trial",
            )
            .map_err(db_error)?;
        let rows = q
            .query_map([sweep], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, Option<String>>(3)?,
                ))
            })
            .map_err(db_error)?;
        rows.map(|row| {
            let (trial, run_id, params, note) = row.map_err(db_error)?;
            let params = serde_json::from_str(&params).map_err(|e| {
                RunsError::Runs(format!("sweep {sweep}: trial {trial}'s parameters: {e}"))
            })?;
            Ok(TrialRow {
                trial: trial as usize,
                run_id,
                params,
                note,
            })
        })
        .collect()
    }

    /// For every run that is a trial, the first sweep it belongs to.
    pub fn sweep_of_trials(&self) -> Result<HashMap<String, String>, RunsError> {
        let mut q = self
            .conn
            .prepare("SELECT run_id, sweep_id FROM sweep_trials ORDER BY rowid DESC")
            .map_err(db_error)?;
        let rows = q
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(db_error)?;
        rows.collect::<Result<_, _>>().map_err(db_error)
    }

    /// The newest sweep's id.
    pub fn latest_sweep(&self) -> Result<String, RunsError> {
        self.conn
            .query_row(
                "SELECT id FROM runs WHERE compute_target = ?1 ORDER BY created DESC LIMIT 1",
                [SWEEP_TARGET],
                |r| r.get(0),
            )
            .map_err(|e| match e {
                rusqlite::Error::QueryReturnedNoRows => {
                    RunsError::Runs("no sweeps yet (kiln sweep SWEEP.toml starts one)".into())
                }
                e => db_error(e),
            })
    }

    /// The primary metric's reports of run `id`, in order (rank 0, or the only rank).
    pub fn primary_curve(&self, id: &str, spec: &SweepSpec) -> Result<Vec<f64>, RunsError> {
        Ok(self
            .metrics(id)?
            .into_iter()
            .filter(|m| m.rank.unwrap_or(0) == 0 && spec.is_primary(m.split.as_deref(), &m.name))
            .map(|m| m.value.unwrap_or(f64::NAN))
            .collect())
    }
}
