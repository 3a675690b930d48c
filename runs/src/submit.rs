//! A run's life. [`prepare`] records it (`Queued`), snapshots the source (`Preparing`) and
//! writes what the command needs; [`execute`] starts the program (`Running`) under its guard
//! ([`crate::guard`]) with the snapshot as its working directory, streams its output to the
//! terminal and `logs/output.log`, ingests `logs/metrics.jsonl` as it grows, stops it when
//! canceled, and records exit code, duration and artifacts (`Finalizing`, then `Completed`,
//! `Failed` or `Canceled`).

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::command::{self, Launch};
use crate::error::RunsError;
use crate::guard::{Guarded, ProgramEnd};
use crate::history::{NewRun, RunHistory};
use crate::home::RunPaths;
use crate::ingest::MetricsTail;
use crate::job::{ComputeTarget, JobSpec};
use crate::{LOCK_FILE, RunStatus, SubmitterLock, snapshot};

/// How long a canceled program has to exit after SIGTERM before it gets SIGKILL.
const KILL_GRACE: Duration = Duration::from_secs(10);

/// Set by SIGINT/SIGTERM while a run executes: stop the program and mark the run canceled.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub struct RunOutcome {
    /// The run's id.
    pub id: String,
    /// Its final state.
    pub status: RunStatus,
    /// The program's exit code (128 + signal when a signal ended it).
    pub exit_code: Option<i64>,
    /// Seconds the program ran.
    pub seconds: f64,
    /// Metric values ingested.
    pub metrics: usize,
}

/// Records a new run of `job`, snapshots its source and writes its files. Returns the run's
/// paths and the submitter lock, which the caller holds until [`execute`] takes over.
pub fn prepare(
    history: &mut RunHistory,
    job: &JobSpec,
) -> Result<(RunPaths, SubmitterLock), RunsError> {
    let json = serde_json::to_string(job).expect("a job serialises");
    let target = serde_json::to_value(job.compute_target).expect("a target serialises");
    let id = history.create_run(&NewRun {
        name: &job.name,
        experiment: &job.experiment,
        compute_target: target.as_str().unwrap_or("local"),
        job: &json,
    })?;
    let paths = RunPaths::new(history.home(), &id);
    let lock = (|| {
        for dir in [&paths.dir, &paths.outputs, &paths.logs] {
            std::fs::create_dir_all(dir).map_err(|e| RunsError::io(dir, e))?;
        }
        let lock_path = paths.dir.join(LOCK_FILE);
        SubmitterLock::acquire(&lock_path).map_err(|e| RunsError::io(&lock_path, e))
    })();
    let lock = match lock {
        Ok(lock) => lock,
        Err(e) => {
            history.finish(&id, RunStatus::Failed, None, Some(&e.to_string()))?;
            return Err(e);
        }
    };
    history.set_status(&id, RunStatus::Preparing)?;
    if let Err(e) = write_run_files(history, job, &paths) {
        history.finish(&id, RunStatus::Failed, None, Some(&e.to_string()))?;
        return Err(e);
    }
    Ok((paths, lock))
}

fn write_run_files(history: &RunHistory, job: &JobSpec, paths: &RunPaths) -> Result<(), RunsError> {
    let write =
        |path: &Path, text: &str| std::fs::write(path, text).map_err(|e| RunsError::io(path, e));
    match &job.source_directory {
        Some(source) => {
            if let Some((commit, dirty)) = snapshot::git_state(source) {
                history.set_git(&paths.id, &commit, dirty)?;
            }
            snapshot::snapshot(source, &paths.snapshot, snapshot::limit_bytes())?;
        }
        None => std::fs::create_dir_all(&paths.snapshot)
            .map_err(|e| RunsError::io(&paths.snapshot, e))?,
    }
    for name in ["outputs", "logs"] {
        let link = paths.snapshot.join(name);
        std::os::unix::fs::symlink(Path::new("..").join(name), &link)
            .map_err(|e| RunsError::io(&link, e))?;
    }
    write(
        &paths.dir.join("job.json"),
        &serde_json::to_string_pretty(job).expect("serialises"),
    )?;
    if job.entry_script.is_none() {
        write(&paths.train_job(), &job.train_job_toml())?;
    }
    if job.compute_target == ComputeTarget::Mpi && !job.hosts.is_empty() {
        write(&paths.dir.join("hostfile"), &command::hostfile(job))?;
    }
    Ok(())
}

/// Runs prepared run `id` to its end. `kiln` is the executable for built-in training, the
/// launcher and the run's guard (`kiln guard`); `echo` streams the program's output to this
/// process's stdout and stderr; `lock` is the submitter lock [`prepare`] took (taken here when
/// `None`). Any error on the way is recorded as the run's failure.
pub fn execute(
    history: &mut RunHistory,
    id: &str,
    kiln: &Path,
    echo: bool,
    lock: Option<SubmitterLock>,
) -> Result<RunOutcome, RunsError> {
    let result = execute_locked(history, id, kiln, echo, lock);
    if let Err(e) = &result
        && let Ok(id) = history.resolve(id)
    {
        history.finish(&id, RunStatus::Failed, None, Some(&e.to_string()))?;
    }
    result
}

fn execute_locked(
    history: &mut RunHistory,
    id: &str,
    kiln: &Path,
    echo: bool,
    lock: Option<SubmitterLock>,
) -> Result<RunOutcome, RunsError> {
    let record = history.run(id)?;
    let paths = RunPaths::new(history.home(), &record.id);
    let _lock = SubmitterLock::held_or_acquire(lock, &paths)?;
    // Only a prepared run starts, and only once.
    let current = history.run(&record.id)?.status;
    if !matches!(current, RunStatus::Queued | RunStatus::Preparing)
        || !history.set_status(&record.id, RunStatus::Preparing)?
    {
        return Err(RunsError::Runs(format!(
            "run {} is {current}; only a prepared run can start",
            record.id
        )));
    }
    let job: JobSpec = serde_json::from_str(&record.job)
        .map_err(|e| RunsError::Runs(format!("run {id}: unreadable job: {e}")))?;
    install_interrupt_handler();
    let started = Instant::now();
    let mut ingest = MetricsTail::new(paths.metrics_file());
    let mut metrics = 0;
    let ended = if history.cancel_requested(&record.id)? {
        Ended::canceled()
    } else {
        match command::plan(&job, &paths, kiln) {
            Err(e) => Ended::failed(e.to_string()),
            Ok(launch) => {
                let command_line = launch.display();
                let mut beat = Instant::now();
                let mut watch =
                    |history: &mut RunHistory| -> Result<bool, RunsError> {
                        metrics += history.add_metrics(&paths.id, &ingest.poll())?;
                        history.heartbeat(&paths.id, &mut beat)?;
                        Ok(INTERRUPTED.load(Ordering::SeqCst)
                            || history.cancel_requested(&paths.id)?)
                    };
                match &launch {
                    Launch::Process { .. } => run_process(
                        history,
                        &paths,
                        &launch,
                        kiln,
                        &command_line,
                        echo,
                        &mut watch,
                    )?,
                    Launch::Slurm { script } => {
                        run_slurm(history, &paths, script, echo, &mut watch)?
                    }
                }
            }
        }
    };
    let seconds = started.elapsed().as_secs_f64();
    history.set_status(&paths.id, RunStatus::Finalizing)?;
    metrics += history.add_metrics(&paths.id, &ingest.poll())?;
    metrics += history.add_metrics(&paths.id, &ingest.finish())?;
    if ingest.bad_lines() > 0 {
        append_log(
            &paths,
            &format!(
                "kiln: {} lines of {} were not metric records and were skipped\n",
                ingest.bad_lines(),
                paths.metrics_file().display()
            ),
        );
    }
    history.set_artifacts(&paths.id, &artifacts(&paths))?;
    history.finish(
        &paths.id,
        ended.status,
        ended.exit_code,
        ended.error.as_deref(),
    )?;
    let status = history.run(&paths.id)?.status;
    Ok(RunOutcome {
        id: paths.id,
        status,
        exit_code: ended.exit_code,
        seconds,
        metrics,
    })
}

/// The end of the program: state, exit code and why.
pub(crate) struct Ended {
    pub(crate) status: RunStatus,
    pub(crate) exit_code: Option<i64>,
    pub(crate) error: Option<String>,
}

impl Ended {
    fn canceled() -> Self {
        Self {
            status: RunStatus::Canceled,
            exit_code: None,
            error: Some("canceled".into()),
        }
    }

    pub(crate) fn failed(error: String) -> Self {
        Self {
            status: RunStatus::Failed,
            exit_code: None,
            error: Some(error),
        }
    }

    pub(crate) fn from_code(code: i64, signal: Option<i32>, canceled: bool) -> Self {
        if canceled {
            return Self {
                exit_code: Some(code),
                ..Self::canceled()
            };
        }
        match (code, signal) {
            (0, _) => Self {
                status: RunStatus::Completed,
                exit_code: Some(0),
                error: None,
            },
            (_, Some(sig)) => Self {
                status: RunStatus::Failed,
                exit_code: Some(code),
                error: Some(format!("the program was killed by signal {sig}")),
            },
            _ => Self {
                status: RunStatus::Failed,
                exit_code: Some(code),
                error: Some(format!("the program exited with code {code}")),
            },
        }
    }
}

type Watch<'a> = dyn FnMut(&mut RunHistory) -> Result<bool, RunsError> + 'a;

fn run_process(
    history: &mut RunHistory,
    paths: &RunPaths,
    launch: &Launch,
    kiln: &Path,
    command_line: &str,
    echo: bool,
    watch: &mut Watch,
) -> Result<Ended, RunsError> {
    let Launch::Process { program, args, env } = launch else {
        unreachable!("run_process gets a process");
    };
    let mut guarded = match Guarded::start(kiln, paths, program, args, env) {
        Ok(guarded) => guarded,
        Err(why) => {
            append_log(paths, &format!("kiln: {why}\n"));
            return Ok(Ended::failed(why));
        }
    };
    let pgid = guarded.pgid;
    history.set_running(&paths.id, command_line, Some(pgid.into()), None)?;
    let log = open_log(paths)?;
    let (stdout, stderr) = guarded.output();
    let pumps = [
        pump(
            stdout,
            log.clone(),
            echo.then(|| Box::new(std::io::stdout()) as Box<dyn Write + Send>),
        ),
        pump(
            stderr,
            log,
            echo.then(|| Box::new(std::io::stderr()) as Box<dyn Write + Send>),
        ),
    ];
    // A waiter thread reports the end at once; the loop wakes at least every 200 ms to
    // ingest metrics and look for a cancel.
    let (report, reported) = std::sync::mpsc::channel();
    // Should this loop fail, the guard must not wait on: a sweep's trial thread outlives
    // nothing here, but the waiter thread would keep the guard's socket open.
    let hangup = guarded.hangup();
    let give_up = |e: RunsError| {
        if let Some(socket) = &hangup {
            let _ = socket.shutdown(std::net::Shutdown::Both);
        }
        e
    };
    std::thread::spawn(move || {
        let _ = report.send(guarded.wait());
    });
    let mut canceled_at: Option<Instant> = None;
    let mut killed = false;
    let end = loop {
        match reported.recv_timeout(Duration::from_millis(200)) {
            Ok(end) => break end,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                return Err(give_up(RunsError::Runs("lost track of the program".into())));
            }
        }
        if watch(history).map_err(give_up)? {
            let first = match canceled_at {
                Some(t) => t,
                None => {
                    // SAFETY: signals the run's own process group.
                    unsafe { libc::killpg(pgid, libc::SIGTERM) };
                    *canceled_at.insert(Instant::now())
                }
            };
            if !killed && first.elapsed() > KILL_GRACE {
                // SAFETY: as above; the group ignored SIGTERM for the whole grace period.
                unsafe { libc::killpg(pgid, libc::SIGKILL) };
                killed = true;
            }
        }
    };
    match end {
        ProgramEnd::Exited { code, signal } => {
            wait_for_output(pumps);
            // `kiln runs cancel` signals the group itself: the program may end before the flag
            // is seen.
            let canceled = canceled_at.is_some() || watch(history)?;
            Ok(Ended::from_code(code, signal, canceled))
        }
        ProgramEnd::GuardDied(why) => {
            // Nothing stops what the program left running but this: everything that carries
            // the run's id, in its group or not.
            // SAFETY: signals the run's own process group.
            unsafe { libc::killpg(pgid, libc::SIGKILL) };
            crate::lock::signal_run(&paths.id, None, libc::SIGKILL);
            wait_for_output(pumps);
            let why = format!("{why}; kiln stopped the program");
            append_log(paths, &format!("kiln: {why}\n"));
            Ok(Ended::failed(why))
        }
    }
}

/// Waits for the program's output to end. Its guard stopped every process that could hold it
/// open; one handed to a service outside the run's process tree is not waited for long.
fn wait_for_output(pumps: [std::thread::JoinHandle<()>; 2]) {
    let start = Instant::now();
    while pumps.iter().any(|p| !p.is_finished()) && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    for p in pumps.into_iter().filter(|p| p.is_finished()) {
        let _ = p.join();
    }
}

fn run_slurm(
    history: &mut RunHistory,
    paths: &RunPaths,
    script: &str,
    echo: bool,
    watch: &mut Watch,
) -> Result<Ended, RunsError> {
    let script_path = paths.dir.join("job.sbatch");
    std::fs::write(&script_path, script).map_err(|e| RunsError::io(&script_path, e))?;
    let submitted = Command::new("sbatch")
        .arg("--parsable")
        .arg(&script_path)
        .current_dir(&paths.dir)
        .stdin(Stdio::null())
        .output();
    let job_id = match submitted {
        Err(e) => return Ok(Ended::failed(format!("cannot run sbatch: {e}"))),
        Ok(o) if !o.status.success() => {
            return Ok(Ended::failed(format!(
                "sbatch refused the job: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            )));
        }
        Ok(o) => {
            let out = String::from_utf8_lossy(&o.stdout);
            out.trim().split(';').next().unwrap_or_default().to_string()
        }
    };
    history.set_running(
        &paths.id,
        &format!("sbatch --parsable {}", script_path.display()),
        None,
        Some(&job_id),
    )?;
    let exit_file = paths.logs.join("exit_code");
    let mut echoed = 0u64;
    let mut canceled = false;
    let mut last_check = Instant::now();
    let mut gone_since: Option<Instant> = None;
    loop {
        if echo {
            echoed = print_appended(&paths.output_log(), echoed).unwrap_or(echoed);
        }
        if let Ok(text) = std::fs::read_to_string(&exit_file) {
            let code = text.trim().parse::<i64>().unwrap_or(1);
            if echo {
                let _ = print_appended(&paths.output_log(), echoed);
            }
            let canceled = canceled || watch(history)?;
            return Ok(Ended::from_code(code, None, canceled));
        }
        if last_check.elapsed() > Duration::from_secs(10) {
            last_check = Instant::now();
            // A job killed by its time limit or a node failure never writes its exit code.
            if slurm_job_gone(&job_id) {
                let since = *gone_since.get_or_insert_with(Instant::now);
                if since.elapsed() > Duration::from_secs(20) {
                    return Ok(Ended::failed(format!(
                        "Slurm job {job_id} left the queue without an exit code (see sacct -j \
                         {job_id})"
                    )));
                }
            }
        }
        if watch(history)? && !canceled {
            canceled = true;
            let _ = Command::new("scancel").arg(&job_id).status();
        }
        if canceled {
            // scancel stops the batch script before it writes an exit code.
            std::thread::sleep(Duration::from_secs(2));
            if !exit_file.exists() {
                return Ok(Ended::canceled());
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Whether `squeue` runs and no longer lists `job` (false when squeue cannot tell).
fn slurm_job_gone(job: &str) -> bool {
    Command::new("squeue")
        .args(["-h", "-j", job, "-o", "%T"])
        .output()
        .is_ok_and(|o| {
            let listed = !o.stdout.iter().all(u8::is_ascii_whitespace);
            // squeue forgets finished jobs after a while and then calls the id invalid.
            let forgotten = String::from_utf8_lossy(&o.stderr).contains("Invalid job id");
            (o.status.success() && !listed) || forgotten
        })
}

/// Prints what was appended to `path` after byte `from` to stdout; returns the new end (`from`
/// while the file does not exist yet). `kiln runs logs --follow` and a Slurm run's echo use it.
pub fn print_appended(path: &Path, from: u64) -> std::io::Result<u64> {
    let Ok(mut file) = File::open(path) else {
        return Ok(from);
    };
    file.seek(SeekFrom::Start(from))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    let mut out = std::io::stdout().lock();
    out.write_all(&bytes)?;
    out.flush()?;
    Ok(from + bytes.len() as u64)
}

fn open_log(paths: &RunPaths) -> Result<Arc<Mutex<File>>, RunsError> {
    let path = paths.output_log();
    let file = File::options()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(|e| RunsError::io(&path, e))?;
    Ok(Arc::new(Mutex::new(file)))
}

fn append_log(paths: &RunPaths, text: &str) {
    append_to(&paths.output_log(), text);
}

/// Appends `text` to the log at `path`, if it can (a note in a run's log is never worth
/// failing the run for).
pub(crate) fn append_to(path: &Path, text: &str) {
    if let Ok(mut file) = File::options().create(true).append(true).open(path) {
        let _ = file.write_all(text.as_bytes());
    }
}

/// Copies a child's stream line by line into the run's log and, when echoing, the terminal.
fn pump(
    stream: Option<impl Read + Send + 'static>,
    log: Arc<Mutex<File>>,
    mut echo: Option<Box<dyn Write + Send>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let Some(stream) = stream else { return };
        let mut reader = BufReader::new(stream);
        let mut line = Vec::new();
        while reader.read_until(b'\n', &mut line).is_ok_and(|n| n > 0) {
            if let Ok(mut file) = log.lock() {
                let _ = file.write_all(&line);
            }
            if let Some(out) = echo.as_mut() {
                let _ = out.write_all(&line);
                let _ = out.flush();
            }
            line.clear();
        }
    })
}

/// Every file under the run's `outputs/` and `logs/`, relative to the run, with its size.
pub(crate) fn artifacts(paths: &RunPaths) -> Vec<(String, u64)> {
    fn walk(root: &Path, rel: &Path, out: &mut Vec<(String, u64)>) {
        let Ok(entries) = std::fs::read_dir(root.join(rel)) else {
            return;
        };
        for entry in entries.flatten() {
            let path = rel.join(entry.file_name());
            match entry.file_type() {
                Ok(t) if t.is_dir() => walk(root, &path, out),
                Ok(t) if t.is_file() => {
                    let size = entry.metadata().map_or(0, |m| m.len());
                    out.push((path.to_string_lossy().into_owned(), size));
                }
                _ => {}
            }
        }
    }
    let mut out = Vec::new();
    walk(&paths.dir, Path::new("outputs"), &mut out);
    walk(&paths.dir, Path::new("logs"), &mut out);
    out.sort();
    out
}

/// Stops run `id`: asks its submitter, signals its process group (or `scancel`s its Slurm job),
/// and waits until it ends; a run whose submitter is gone is marked `Canceled` here.
pub fn cancel(history: &RunHistory, id: &str) -> Result<RunStatus, RunsError> {
    let run = history.run(id)?;
    if run.status.is_final() {
        return Err(RunsError::Runs(format!(
            "run {} already ended ({})",
            run.id, run.status
        )));
    }
    history.request_cancel(&run.id)?;
    let here = run.host == kiln_engine::dist::wire::hostname();
    let signal = |sig: i32| {
        let Some(pg) = history.run(&run.id).ok().and_then(|r| r.process_group) else {
            return;
        };
        if here && pg > 1 {
            // SAFETY: signals the run's process group, recorded when it started.
            unsafe { libc::killpg(pg as i32, sig) };
        }
    };
    if let Some(job) = &run.scheduler_id {
        let _ = Command::new("scancel").arg(job).status();
    }
    signal(libc::SIGTERM);
    let start = Instant::now();
    let mut killed = false;
    while start.elapsed() < KILL_GRACE + Duration::from_secs(5) {
        let now = history.run(&run.id)?;
        if now.status.is_final() {
            return Ok(now.status);
        }
        if !killed && start.elapsed() > KILL_GRACE {
            signal(libc::SIGKILL);
            killed = true;
        }
        if !SubmitterLock::is_held(&super::run_dir(history.home(), &run.id).join(LOCK_FILE))
            && start.elapsed() > Duration::from_secs(1)
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    history.finish(&run.id, RunStatus::Canceled, None, Some("canceled"))?;
    Ok(history.run(&run.id)?.status)
}

extern "C" fn on_interrupt(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Whether SIGINT, SIGTERM or SIGHUP arrived since [`install_interrupt_handler`].
pub(crate) fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Turns SIGINT, SIGTERM and SIGHUP into a cancel of what this process runs.
pub(crate) fn install_interrupt_handler() {
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::signal(signal, on_interrupt as *const () as libc::sighandler_t);
        }
    }
}
