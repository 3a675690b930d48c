//! The guard: a small process between a run's submitter (`kiln submit`, its `--detach`
//! worker, or `kiln sweep`) and the run's program, so that whichever kiln process is killed,
//! SIGKILL included, no process of the run outlives it for more than a few seconds.
//!
//! The submitter starts `kiln guard` in a process group of its own (signals from the terminal
//! reach the submitter only) with one end of a socket as its standard input. The guard makes
//! itself a child subreaper (`PR_SET_CHILD_SUBREAPER`: whatever the program starts and
//! orphans, by `setsid`, a double fork or a parent that died, becomes the guard's child, not
//! init's) and starts the program in another process group, the one `kiln runs cancel`
//! signals; it reports the program's pid and waits.
//!
//! - The program ends: the guard stops whatever is still below it (SIGTERM, SIGKILL a second
//!   later), reports the exit code or signal to the submitter, and exits.
//! - The submitter dies, however it dies: its end of the socket closes and the guard reads
//!   end-of-file (`PR_SET_PDEATHSIG` wakes it too). The guard stops everything below it
//!   (SIGTERM, SIGKILL after [`LOST_GRACE`]), then marks the run `Failed` (lost), ended when
//!   it last saw the submitter alive.
//! - The guard dies: its program gets SIGTERM (`PR_SET_PDEATHSIG`), and the submitter, which
//!   got no report, kills whatever carries the run's `KILN_RUN_ID`.
//!
//! A cgroup would hold the run's processes without a guard, but making one needs a writable,
//! delegated cgroup v2 tree, which a user on most machines, containers and batch nodes does
//! not have; a subreaper needs Linux 3.4 and nothing else, and the process tree below it is
//! the run. Neither holds a process handed to a service outside the tree (`systemd-run`,
//! `docker run`).

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, ChildStderr, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::history::RunHistory;
use crate::home::RunPaths;
use crate::submit::append_to;
use crate::{now, procs};

/// How long the processes of a lost run have between SIGTERM and SIGKILL.
pub const LOST_GRACE: Duration = Duration::from_secs(3);

/// How long what a finished program left running has between SIGTERM and SIGKILL.
const LEFTOVER_GRACE: Duration = Duration::from_secs(1);

/// How long after SIGKILL the guard waits for processes that cannot die yet (uninterruptible
/// sleep) before it gives up on them.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// How often, in milliseconds, the guard looks at its program and its submitter.
const POLL_MS: i32 = 100;

/// Set by SIGTERM, SIGINT and SIGHUP (the death signal is SIGTERM): pass SIGTERM on to the
/// program.
static STOP: AtomicBool = AtomicBool::new(false);

/// What the guard tells its submitter, one line each.
#[derive(Debug, Clone, PartialEq)]
enum Report {
    /// The program runs; its pid is its process group.
    Started(i32),
    /// The program could not start: why.
    Failed(String),
    /// The program exited with this code, and nothing it started runs any more.
    Exited(i32),
    /// This signal ended the program, and nothing it started runs any more.
    Signaled(i32),
}

impl Report {
    fn line(&self) -> String {
        match self {
            Report::Started(pid) => format!("started {pid}\n"),
            Report::Failed(why) => format!("failed {}\n", why.replace('\n', " ")),
            Report::Exited(code) => format!("exited {code}\n"),
            Report::Signaled(signal) => format!("signaled {signal}\n"),
        }
    }

    fn parse(line: &str) -> Option<Self> {
        let (word, rest) = line.trim_end_matches('\n').split_once(' ')?;
        match word {
            "started" => rest.parse().ok().map(Report::Started),
            "failed" => Some(Report::Failed(rest.to_string())),
            "exited" => rest.parse().ok().map(Report::Exited),
            "signaled" => rest.parse().ok().map(Report::Signaled),
            _ => None,
        }
    }
}

/// A run's program running under its guard, as the submitter holds it.
pub(crate) struct Guarded {
    guard: Child,
    /// The submitter's end of the socket: the guard's reports arrive on it, and its closing,
    /// however this process ends, tells the guard that the submitter is gone.
    reports: BufReader<UnixStream>,
    /// The program's process group (its pid), which a cancel signals.
    pub(crate) pgid: i32,
}

/// How a guarded program ended.
pub(crate) enum ProgramEnd {
    /// With this exit code (128 + the signal, when a signal ended it); nothing it started
    /// runs any more.
    Exited { code: i64, signal: Option<i32> },
    /// The guard died before the program's end (it was killed): why. What the program
    /// started may still run.
    GuardDied(String),
}

impl Guarded {
    /// Starts `program` with `args` and `env` for the run at `paths` under a guard, run from
    /// the kiln executable `kiln`: in the run's snapshot, standard input empty, output piped.
    /// `Err` says why the program did not start.
    pub(crate) fn start(
        kiln: &Path,
        paths: &RunPaths,
        program: &Path,
        args: &[String],
        env: &[(String, String)],
    ) -> Result<Self, String> {
        let (ours, theirs) =
            UnixStream::pair().map_err(|e| format!("cannot start the run's guard: {e}"))?;
        let mut cmd = Command::new(kiln);
        cmd.arg("guard")
            .arg("--run")
            .arg(&paths.id)
            .arg("--home")
            .arg(&paths.home)
            .arg("--")
            .arg(program)
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .current_dir(&paths.snapshot)
            .stdin(Stdio::from(OwnedFd::from(theirs)))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        // SAFETY: geteuid cannot fail.
        if program.as_os_str() == "mpirun" && unsafe { libc::geteuid() } == 0 {
            // Open MPI refuses root unless asked twice; containers often run as root.
            cmd.env("OMPI_ALLOW_RUN_AS_ROOT", "1")
                .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1");
        }
        // SAFETY: prctl is async-signal-safe. The death signal wakes the guard when this
        // thread ends; the socket tells it when this process ends.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let spawned = cmd.spawn();
        // The guard's end of the socket must not stay open here, or the guard could never
        // see this process go.
        drop(cmd);
        let mut guard =
            spawned.map_err(|e| format!("cannot start the run's guard {}: {e}", kiln.display()))?;
        let mut reports = BufReader::new(ours);
        match read_report(&mut reports) {
            Some(Report::Started(pgid)) => Ok(Self {
                guard,
                reports,
                pgid,
            }),
            Some(Report::Failed(why)) => {
                let _ = guard.wait();
                Err(why)
            }
            _ => {
                // The guard may have died after starting the program: nothing of the run may
                // hold the output pipes open while its stderr is read.
                crate::lock::signal_run(&paths.id, None, libc::SIGKILL);
                // Whatever the guard said on the way out (a usage error) says why.
                let said = guard.wait_with_output().map(|o| {
                    let text = String::from_utf8_lossy(&o.stderr).trim().to_string();
                    (o.status, text)
                });
                let (status, text) = match said {
                    Ok((status, text)) => (Ok(status), text),
                    Err(e) => (Err(e), String::new()),
                };
                Err(format!(
                    "the run's guard ({} guard) {} before starting the program{}{text}",
                    kiln.display(),
                    describe(status),
                    if text.is_empty() { "" } else { ": " }
                ))
            }
        }
    }

    /// A way to hang up on the guard from another thread while [`Guarded::wait`] waits: the
    /// guard then takes the submitter for gone, stops the run's processes and marks it lost.
    pub(crate) fn hangup(&self) -> Option<UnixStream> {
        self.reports.get_ref().try_clone().ok()
    }

    /// The program's output, to be read as it comes (the program writes to the guard's).
    pub(crate) fn output(&mut self) -> (Option<ChildStdout>, Option<ChildStderr>) {
        (self.guard.stdout.take(), self.guard.stderr.take())
    }

    /// Waits for the program's end: the guard's last report, then the guard's exit.
    pub(crate) fn wait(mut self) -> ProgramEnd {
        let mut last = None;
        while let Some(report) = read_report(&mut self.reports) {
            last = Some(report);
        }
        let pid = self.guard.id();
        let status = self.guard.wait();
        match last {
            Some(Report::Exited(code)) => ProgramEnd::Exited {
                code: code.into(),
                signal: None,
            },
            Some(Report::Signaled(signal)) => ProgramEnd::Exited {
                code: 128 + i64::from(signal),
                signal: Some(signal),
            },
            _ => ProgramEnd::GuardDied(format!(
                "the run's guard (pid {pid}) {} before its program ended",
                describe(status)
            )),
        }
    }
}

/// The next report on `reports`; `None` at end-of-file.
fn read_report(reports: &mut impl BufRead) -> Option<Report> {
    let mut line = String::new();
    loop {
        line.clear();
        match reports.read_line(&mut line) {
            Ok(0) | Err(_) => return None,
            Ok(_) => {
                if let Some(report) = Report::parse(&line) {
                    return Some(report);
                }
            }
        }
    }
}

fn describe(status: std::io::Result<ExitStatus>) -> String {
    match status {
        Ok(s) => match (s.code(), s.signal()) {
            (Some(code), _) => format!("exited with code {code}"),
            (_, Some(signal)) => format!("was killed by signal {signal}"),
            _ => "ended".to_string(),
        },
        Err(e) => format!("could not be waited for ({e})"),
    }
}

extern "C" fn on_stop(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// `kiln guard`: runs `program` with `args` for run `id` of the history at `home`, as this
/// module says; its parent is the submitter, connected on standard input. Returns the
/// guard's exit code: 0 once the program's end is reported, 1 when the submitter was lost,
/// 127 when the program could not start.
pub fn guard(id: &str, home: &Path, program: &OsStr, args: &[OsString]) -> u8 {
    // SAFETY: the handler only stores to an atomic; prctl changes only this process.
    unsafe {
        for signal in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            libc::signal(signal, on_stop as *const () as libc::sighandler_t);
        }
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, libc::c_ulong::from(true));
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong);
    }
    // SAFETY: getppid cannot fail.
    let submitter = unsafe { libc::getppid() };
    // SAFETY: standard input is the socket the submitter handed over; nothing else here
    // owns it.
    let mut socket = unsafe { UnixStream::from_raw_fd(0) };
    let mut command = Command::new(program);
    command.args(args).stdin(Stdio::null()).process_group(0);
    // SAFETY: prctl is async-signal-safe. Should the guard be killed, the program hears of it.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let pgid = match command.spawn() {
        Ok(child) => child.id() as i32,
        Err(e) => {
            let why = format!("cannot start {}: {e}", program.to_string_lossy());
            let _ = send(&mut socket, &Report::Failed(why));
            return 127;
        }
    };
    let _ = send(&mut socket, &Report::Started(pgid));
    let mut seen = now();
    let mut passed_on = false;
    loop {
        if let Some((_, status)) = reap().into_iter().find(|(pid, _)| *pid == pgid) {
            stop_below(LEFTOVER_GRACE);
            let end = if libc::WIFSIGNALED(status) {
                Report::Signaled(libc::WTERMSIG(status))
            } else {
                Report::Exited(libc::WEXITSTATUS(status))
            };
            if send(&mut socket, &end).is_ok() {
                return 0;
            }
            if passed_on {
                // The program ended on the SIGTERM the guard passed on, which a dying
                // submitter sends (`PR_SET_PDEATHSIG`) before its end of the socket closes:
                // the run was lost, not ended by its program.
                lose(id, home, submitter, seen);
            } else {
                // The submitter went as the program ended: the program's own end is known.
                record_end(id, home, submitter, &end);
            }
            return 1;
        }
        if STOP.load(Ordering::SeqCst) && !passed_on {
            // SAFETY: signals the program's own group; the program is not reaped yet, so the
            // group id is still its.
            unsafe { libc::killpg(pgid, libc::SIGTERM) };
            passed_on = true;
        }
        if submitter_gone(&mut socket, submitter) {
            stop_below(LOST_GRACE);
            lose(id, home, submitter, seen);
            return 1;
        }
        seen = now();
    }
}

fn send(socket: &mut UnixStream, report: &Report) -> std::io::Result<()> {
    socket.write_all(report.line().as_bytes())
}

/// Waits up to [`POLL_MS`] for news on the socket; returns whether the submitter is gone:
/// its end closed (it writes nothing, so end-of-file is all there is to read) or this guard
/// has another parent.
fn submitter_gone(socket: &mut UnixStream, submitter: i32) -> bool {
    let mut fd = libc::pollfd {
        fd: socket.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: polls one descriptor this process owns, for a bounded time.
    if unsafe { libc::poll(&mut fd, 1, POLL_MS) } > 0 {
        let mut buf = [0u8; 64];
        match socket.read(&mut buf) {
            Ok(0) => return true,
            Err(e) if e.kind() != std::io::ErrorKind::Interrupted => return true,
            _ => {}
        }
    }
    // SAFETY: getppid cannot fail.
    let parent = unsafe { libc::getppid() };
    parent != submitter
}

/// Reaps every child that has ended (orphans below the guard are its children too); returns
/// their pids and wait statuses.
fn reap() -> Vec<(i32, libc::c_int)> {
    let mut ended = Vec::new();
    loop {
        let mut status = 0;
        // SAFETY: waits, without blocking, for any child of this process.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid <= 0 {
            return ended;
        }
        ended.push((pid, status));
    }
}

/// Stops every process below the guard: SIGTERM, then SIGKILL once `grace` has passed,
/// reaping them as they end, until none is left (or [`KILL_WAIT`] after the SIGKILL).
fn stop_below(grace: Duration) {
    let me = std::process::id() as i32;
    let start = Instant::now();
    let mut warned = HashSet::new();
    loop {
        reap();
        let below = procs::descendants(me);
        if below.is_empty() || start.elapsed() > grace + KILL_WAIT {
            return;
        }
        let late = start.elapsed() >= grace;
        for pid in below {
            // SAFETY: signals a process below this guard, which only the run's are.
            if late {
                unsafe { libc::kill(pid, libc::SIGKILL) };
            } else if warned.insert(pid) {
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Records run `id` lost: its submitter, pid `submitter`, was last seen alive at `seen`.
fn lose(id: &str, home: &Path, submitter: i32, seen: f64) {
    let log = RunPaths::new(home, id).output_log();
    append_to(
        &log,
        &format!(
            "kiln: the kiln process running this run (pid {submitter}) is gone; its guard \
             stopped the program\n"
        ),
    );
    let marked = RunHistory::open(home).and_then(|h| h.mark_lost(id, Some(submitter.into()), seen));
    if let Err(e) = marked {
        append_to(
            &log,
            &format!("kiln: the run could not be marked lost: {e}\n"),
        );
    }
}

/// Records how run `id`'s program ended when its submitter, pid `submitter`, was gone by then
/// (its outputs are not listed: that was the submitter's to do).
fn record_end(id: &str, home: &Path, submitter: i32, end: &Report) {
    let (code, what) = match *end {
        Report::Exited(code) => (
            i64::from(code),
            format!("the program exited with code {code}"),
        ),
        Report::Signaled(signal) => (
            128 + i64::from(signal),
            format!("the program was killed by signal {signal}"),
        ),
        Report::Started(_) | Report::Failed(_) => return,
    };
    let log = RunPaths::new(home, id).output_log();
    append_to(
        &log,
        &format!(
            "kiln: {what} after the kiln process running this run (pid {submitter}) was gone\n"
        ),
    );
    let status = if code == 0 {
        crate::RunStatus::Completed
    } else {
        crate::RunStatus::Failed
    };
    let error = (code != 0).then_some(what);
    let recorded =
        RunHistory::open(home).and_then(|h| h.finish(id, status, Some(code), error.as_deref()));
    if let Err(e) = recorded {
        append_to(
            &log,
            &format!("kiln: the run's end could not be recorded: {e}\n"),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_read_back_as_written() {
        let reports = [
            Report::Started(4242),
            Report::Failed("cannot start x: No such file\nor directory".into()),
            Report::Exited(3),
            Report::Signaled(9),
        ];
        let text: String = reports.iter().map(Report::line).collect();
        let mut reader = BufReader::new(text.as_bytes());
        let mut back = Vec::new();
        while let Some(r) = read_report(&mut reader) {
            back.push(r);
        }
        assert_eq!(back[0], Report::Started(4242));
        assert_eq!(
            back[1],
            Report::Failed("cannot start x: No such file or directory".into())
        );
        assert_eq!(back[2..], [Report::Exited(3), Report::Signaled(9)]);
    }
}
