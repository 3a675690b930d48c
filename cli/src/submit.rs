//! `kiln submit JOB.toml [--detach]`: validates the job file, records a run, snapshots its
//! source and runs it, streaming its output; `--detach` hands the run to a background `kiln`
//! and returns at once.

use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};

use anyhow::{Context, Result, bail};
use clap::Args;
use kiln_engine::job::JobSpec;
use kiln_engine::runs::{self, RunHistory, RunStatus, submit};

/// Arguments of `kiln submit`.
#[derive(Args, Debug)]
pub struct SubmitArgs {
    /// The job file (TOML).
    job: Option<PathBuf>,
    /// Return once the run is prepared; it goes on in the background.
    #[arg(long)]
    detach: bool,
    /// Internal: run an already prepared run (what `--detach` starts).
    #[arg(long, hide = true)]
    execute: Option<String>,
}

/// Runs `kiln submit`.
pub fn run(args: SubmitArgs) -> Result<ExitCode> {
    let kiln = std::env::current_exe().context("cannot find the kiln executable")?;
    let mut history = RunHistory::open(&runs::kiln_home())?;
    if let Some(id) = args.execute {
        let outcome = submit::execute(&mut history, &id, &kiln, false)?;
        return Ok(exit_code(outcome.status, outcome.exit_code));
    }
    let Some(job_file) = args.job else {
        bail!("kiln submit needs a job file: kiln submit JOB.toml");
    };
    let job = JobSpec::load(&job_file)?;
    history.reap_lost()?;
    let (paths, lock) = submit::prepare(&mut history, &job)?;
    let id = paths.id.clone();
    println!(
        "run {id}: {} (experiment {}) in {}",
        job.name,
        job.experiment,
        paths.dir.display()
    );
    if args.detach {
        // The worker waits on the lock this process holds until it returns.
        let mut worker = Command::new(&kiln);
        worker
            .args(["submit", "--execute", &id])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: setsid is async-signal-safe; the worker leaves this terminal's session.
        unsafe {
            use std::os::unix::process::CommandExt;
            worker.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        if let Err(e) = worker.spawn() {
            let why = format!("cannot start the background worker: {e}");
            history.finish(&id, RunStatus::Failed, None, Some(&why))?;
            bail!(why);
        }
        drop(lock);
        println!("detached; follow it with `kiln runs logs {id} --follow`");
        return Ok(ExitCode::SUCCESS);
    }
    drop(lock);
    let outcome = submit::execute(&mut history, &id, &kiln, true)?;
    let code = outcome
        .exit_code
        .map_or(String::new(), |c| format!(", exit code {c}"));
    println!(
        "run {id} {} in {:.1} s{code}; {} metric values recorded",
        outcome.status, outcome.seconds, outcome.metrics
    );
    Ok(exit_code(outcome.status, outcome.exit_code))
}

/// 0 when completed, the program's own code when it failed, 130 when canceled.
fn exit_code(status: RunStatus, code: Option<i64>) -> ExitCode {
    match status {
        RunStatus::Completed => ExitCode::SUCCESS,
        RunStatus::Canceled => ExitCode::from(130),
        _ => ExitCode::from(code.filter(|c| (1..=255).contains(c)).unwrap_or(1) as u8),
    }
}
