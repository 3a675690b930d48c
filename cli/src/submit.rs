//! `kiln submit JOB.toml [--detach]`: validates the job file, records a run, snapshots its
//! source and runs it, streaming its output; `--detach` hands the run to a background `kiln`
//! and returns at once.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use anyhow::{Context, Result, bail};
use clap::Args;
use kiln_runs::JobSpec;
use kiln_runs::{self as runs, RunHistory, RunPaths, RunStatus, SubmitterLock, submit};

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
    /// Internal: the submitter lock's descriptor, inherited from `--detach`.
    #[arg(long, hide = true)]
    lock_fd: Option<i32>,
}

/// Runs `kiln submit`.
pub fn run(args: SubmitArgs) -> Result<ExitCode> {
    let kiln = std::env::current_exe().context("cannot find the kiln executable")?;
    let mut history = RunHistory::open(&runs::kiln_home())?;
    if let Some(id) = args.execute {
        let lock = args
            .lock_fd
            .map(SubmitterLock::inherit)
            .transpose()
            .context("the submitter lock was not handed over")?;
        let outcome = submit::execute(&mut history, &id, &kiln, false, lock)?;
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
    println!("its page under `kiln ui`: {}", crate::ui::run_page(&id));
    if args.detach {
        detach(&mut history, &kiln, "submit", &paths, &lock)?;
        println!("detached; follow it with `kiln runs logs {id} --follow`");
        return Ok(ExitCode::SUCCESS);
    }
    let outcome = submit::execute(&mut history, &id, &kiln, true, Some(lock))?;
    let code = outcome
        .exit_code
        .map_or(String::new(), |c| format!(", exit code {c}"));
    println!(
        "run {id} {} in {:.1} s{code}; {} metric values recorded",
        outcome.status, outcome.seconds, outcome.metrics
    );
    if outcome.status == RunStatus::Failed
        && let Some(why) = history.run(&id)?.error
    {
        // Why it failed, where the person who submitted it looks (it is in `runs show` too).
        eprintln!("error: run {id}: {why}");
    }
    Ok(exit_code(outcome.status, outcome.exit_code))
}

/// Hands prepared run `paths` to a background `kiln SUBCOMMAND --execute ID` in a session of
/// its own. The worker inherits the locked descriptor, so the run is never unlocked; its
/// stderr (errors before the program starts) goes to the run's log. A worker that cannot
/// start fails the run.
pub(crate) fn detach(
    history: &mut RunHistory,
    kiln: &Path,
    subcommand: &str,
    paths: &RunPaths,
    lock: &SubmitterLock,
) -> Result<()> {
    let id = &paths.id;
    let log = std::fs::File::options()
        .create(true)
        .append(true)
        .open(paths.output_log())?;
    let fd = lock.raw_fd();
    let mut worker = Command::new(kiln);
    worker
        .args([subcommand, "--execute", id, "--lock-fd", &fd.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    // SAFETY: setsid and fcntl are async-signal-safe; the worker leaves this terminal's
    // session and keeps the lock descriptor across exec.
    unsafe {
        use std::os::unix::process::CommandExt;
        worker.pre_exec(move || {
            libc::setsid();
            if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    if let Err(e) = worker.spawn() {
        let why = format!("cannot start the background worker: {e}");
        history.finish(id, RunStatus::Failed, None, Some(&why))?;
        bail!(why);
    }
    Ok(())
}

/// 0 when completed, the program's own code when it failed, 130 when canceled.
fn exit_code(status: RunStatus, code: Option<i64>) -> ExitCode {
    match status {
        RunStatus::Completed => ExitCode::SUCCESS,
        RunStatus::Canceled => ExitCode::from(130),
        _ => ExitCode::from(code.filter(|c| (1..=255).contains(c)).unwrap_or(1) as u8),
    }
}
