//! `kiln sweep SWEEP.toml [--detach] [--resume SWEEP] | status [SWEEP] [--json] | best [SWEEP]
//! | cancel SWEEP`: hyperparameter sweeps over a job, as the estimator's HyperDrive runs them.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use kiln_runs::sweep::{self, SweepReport, SweepSpec, space::param_text};
use kiln_runs::{self as runs, RunHistory, RunStatus, SubmitterLock};

use crate::table;

/// Arguments of `kiln sweep`.
#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct SweepArgs {
    #[command(subcommand)]
    command: Option<SweepCommand>,
    /// The sweep file (TOML).
    file: Option<PathBuf>,
    /// Return once the sweep is recorded; it goes on in the background.
    #[arg(long)]
    detach: bool,
    /// Reuse the completed trials of this stopped sweep (id or unique prefix).
    #[arg(long, value_name = "SWEEP")]
    resume: Option<String>,
    /// Internal: run an already recorded sweep (what `--detach` starts).
    #[arg(long, hide = true)]
    execute: Option<String>,
    /// Internal: the sweep lock's descriptor, inherited from `--detach`.
    #[arg(long, hide = true)]
    lock_fd: Option<i32>,
}

#[derive(Subcommand, Debug)]
enum SweepCommand {
    /// Each trial's parameters, status and primary metric (the newest sweep when none is named).
    Status {
        /// Sweep id (or a unique prefix).
        sweep: Option<String>,
        /// JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// The completed trial with the best primary metric.
    Best {
        /// Sweep id (or a unique prefix).
        sweep: Option<String>,
        /// JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Stop a sweep and every trial it runs.
    Cancel {
        /// Sweep id (or a unique prefix).
        sweep: String,
    },
}

/// Runs `kiln sweep`.
pub fn run(args: SweepArgs) -> Result<ExitCode> {
    let kiln = std::env::current_exe().context("cannot find the kiln executable")?;
    let mut history = RunHistory::open(&runs::kiln_home())?;
    history.reap_lost()?;
    if let Some(id) = args.execute {
        let lock = args
            .lock_fd
            .map(SubmitterLock::inherit)
            .transpose()
            .context("the sweep lock was not handed over")?;
        let outcome = sweep::execute(&mut history, &id, &kiln, false, lock)?;
        return Ok(exit_code(outcome.status));
    }
    match args.command {
        Some(SweepCommand::Status { sweep, json }) => {
            status(&sweep::report(&history, sweep.as_deref())?, json)
        }
        Some(SweepCommand::Best { sweep, json }) => {
            best(&sweep::report(&history, sweep.as_deref())?, json)
        }
        Some(SweepCommand::Cancel { sweep }) => {
            let status = sweep::cancel(&history, &sweep)?;
            println!("sweep {}: {status}", history.resolve(&sweep)?);
            Ok(if status == RunStatus::Canceled {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        None => {
            let Some(file) = args.file else {
                bail!(
                    "kiln sweep needs a sweep file: kiln sweep SWEEP.toml (or: status, best, \
                     cancel)"
                );
            };
            start(
                &mut history,
                &kiln,
                &file,
                args.resume.as_deref(),
                args.detach,
            )
        }
    }
}

fn start(
    history: &mut RunHistory,
    kiln: &std::path::Path,
    file: &std::path::Path,
    resume: Option<&str>,
    detach: bool,
) -> Result<ExitCode> {
    let spec = SweepSpec::load(file)?;
    let (paths, lock) = sweep::prepare(history, &spec, resume)?;
    let id = paths.id.clone();
    println!(
        "sweep {id}: {} (experiment {}) in {}",
        spec.name,
        spec.job.experiment,
        paths.dir.display()
    );
    if detach {
        crate::submit::detach(history, kiln, "sweep", &paths, &lock)?;
        println!(
            "detached; follow it with `kiln runs logs {id} --follow` or `kiln sweep status {id}`"
        );
        return Ok(ExitCode::SUCCESS);
    }
    let outcome = sweep::execute(history, &id, kiln, true, Some(lock))?;
    Ok(exit_code(outcome.status))
}

/// 0 when completed, 130 when canceled, 1 otherwise.
fn exit_code(status: RunStatus) -> ExitCode {
    match status {
        RunStatus::Completed => ExitCode::SUCCESS,
        RunStatus::Canceled => ExitCode::from(130),
        _ => ExitCode::FAILURE,
    }
}

fn number(v: f64) -> String {
    if v.is_nan() {
        "-".into()
    } else {
        format!("{v:.4}")
    }
}

fn params_text(p: &serde_json::Map<String, serde_json::Value>) -> String {
    p.iter()
        .map(|(k, v)| {
            let v = serde_json::from_value(v.clone())
                .map_or_else(|_| v.to_string(), |v| param_text(&v));
            format!("{k}={v}")
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn status(report: &SweepReport, json: bool) -> Result<ExitCode> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
        return Ok(ExitCode::SUCCESS);
    }
    let count = |s: RunStatus| report.trials.iter().filter(|t| t.status == s).count();
    println!(
        "sweep {} ({}): {}; {} sampling, {} {}, early termination {}",
        report.id,
        report.name,
        report.status,
        serde_json::to_value(report.sampling)?
            .as_str()
            .unwrap_or("?"),
        serde_json::to_value(report.primary_metric_goal)?
            .as_str()
            .unwrap_or("?"),
        report.primary_metric_name,
        report.policy
    );
    println!(
        "{} of {} trials: {} completed, {} canceled, {} failed, {} running",
        report.trials.len(),
        report.max_total_runs,
        count(RunStatus::Completed),
        count(RunStatus::Canceled),
        count(RunStatus::Failed),
        report
            .trials
            .iter()
            .filter(|t| !t.status.is_final())
            .count()
    );
    let rows: Vec<Vec<String>> = report
        .trials
        .iter()
        .map(|t| {
            vec![
                t.trial.to_string(),
                t.run_id.clone(),
                t.status.to_string(),
                params_text(&t.params),
                number(t.best),
                t.reports.to_string(),
                t.note.clone().unwrap_or_default(),
            ]
        })
        .collect();
    print!(
        "{}",
        table::render(
            &[
                "trial",
                "run",
                "status",
                "parameters",
                "best",
                "reports",
                "note"
            ],
            &rows
        )
    );
    Ok(ExitCode::SUCCESS)
}

fn best(report: &SweepReport, json: bool) -> Result<ExitCode> {
    let Some(best) = report.best() else {
        bail!(
            "sweep {}: no trial has completed with a value of {} yet",
            report.id,
            report.primary_metric_name
        );
    };
    if json {
        println!("{}", serde_json::to_string_pretty(best)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "trial {} (run {}): {} {} with {}",
        best.trial,
        best.run_id,
        report.primary_metric_name,
        number(best.best),
        params_text(&best.params)
    );
    Ok(ExitCode::SUCCESS)
}
