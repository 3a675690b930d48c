//! A killed submitter takes its run with it. `kill -9` of `kiln submit`, of the worker behind
//! `kiln submit --detach`, or of the run's guard leaves no process of the run within seconds
//! (the script, a grandchild in its process group, and one that left the group and session
//! with `setsid` and was orphaned), and the run is `Failed` with the time it was last seen
//! alive. The history is read directly, never through another kiln command (which would mark
//! lost runs itself). And a program's exit code or signal comes through its guard.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kiln_engine::kernels::testing::temp_dir;
use kiln_runs::{RunHistory, RunRecord, RunStatus, now};

const KILN: &str = env!("CARGO_BIN_EXE_kiln");

/// A grandchild in the script's process group; another started by a subshell that exits at
/// once (so it is orphaned while the script runs) in a session of its own; their pids and the
/// script's in `outputs/`, `outputs/script` last. Then the script waits.
const SCRIPT: &str = r#"#!/bin/bash
sleep 300 &
echo $! > outputs/child
(setsid bash -c 'echo $$ > outputs/escaped.tmp && mv outputs/escaped.tmp outputs/escaped; exec sleep 300' &)
while [ ! -e outputs/escaped ]; do sleep 0.05; done
echo $$ > outputs/script.tmp && mv outputs/script.tmp outputs/script
wait
"#;

/// A job running `script` from a project directory; returns the job file.
fn job_file(dir: &Path, script: &str) -> PathBuf {
    let src = dir.join("project");
    std::fs::create_dir_all(&src).expect("project");
    let run = src.join("run.sh");
    std::fs::write(&run, script).expect("script");
    std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let job = dir.join("job.toml");
    std::fs::write(
        &job,
        "source_directory = \"project\"\nentry_script = \"run.sh\"\n",
    )
    .expect("job");
    job
}

fn submit(home: &Path, job: &Path) -> Command {
    let mut cmd = Command::new(KILN);
    cmd.arg("submit")
        .arg(job)
        .env("KILN_HOME", home)
        .stdin(Stdio::null());
    cmd
}

/// Waits for the script to have written its pids; returns the run's id.
fn started(home: &Path) -> String {
    let start = Instant::now();
    loop {
        let found = std::fs::read_dir(home.join("runs")).ok().and_then(|d| {
            d.flatten()
                .find(|e| e.path().join("outputs/script").exists())
        });
        if let Some(run) = found {
            return run.file_name().to_string_lossy().into_owned();
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the script never started"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The fields of `/proc/PID/stat` after the command name: state, ppid, pgrp, session, ...
fn stat(pid: i32) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = text.rsplit_once(')')?;
    Some(rest.split_whitespace().map(str::to_string).collect())
}

fn field(pid: i32, n: usize) -> Option<i32> {
    stat(pid)?.get(n)?.parse().ok()
}

/// Alive, and not a zombie waiting to be reaped.
fn alive(pid: i32) -> bool {
    stat(pid).is_some_and(|f| f[0] != "Z")
}

/// The script's pid, its grandchild in the group, and the one that left it.
struct Program {
    script: i32,
    child: i32,
    escaped: i32,
}

impl Program {
    fn of(home: &Path, id: &str) -> Self {
        let pid = |name: &str| -> i32 {
            let path = home.join("runs").join(id).join("outputs").join(name);
            let text = std::fs::read_to_string(&path).expect("a pid file");
            text.trim().parse().expect("a pid")
        };
        Self {
            script: pid("script"),
            child: pid("child"),
            escaped: pid("escaped"),
        }
    }

    fn pids(&self) -> Vec<i32> {
        vec![self.script, self.child, self.escaped]
    }

    /// Checks that the grandchildren are where the test says: one in the script's group, one
    /// in another session, orphaned and so handed to the guard.
    fn check_layout(&self, guard: i32) {
        assert_eq!(field(self.child, 2), field(self.script, 2), "same group");
        assert_ne!(field(self.escaped, 3), field(self.script, 3), "own session");
        let start = Instant::now();
        while field(self.escaped, 1) != Some(guard) {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "the orphan's parent is {:?}, not the guard {guard}",
                field(self.escaped, 1)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The `kiln guard` whose parent is `parent`.
fn guard_of(parent: i32) -> i32 {
    let entries = std::fs::read_dir("/proc").expect("/proc");
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .find(|&pid| {
            let args = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let second = args.split(|b| *b == 0).nth(1).unwrap_or_default();
            field(pid, 1) == Some(parent) && second == b"guard"
        })
        .unwrap_or_else(|| panic!("process {parent} has no kiln guard child"))
}

fn all_gone_within_10_s(pids: &[i32]) {
    let start = Instant::now();
    loop {
        let left: Vec<i32> = pids.iter().copied().filter(|&p| alive(p)).collect();
        if left.is_empty() {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "processes {left:?} of the run still run 10 s after the kill"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The run once it has ended, read straight from the history.
fn ended(home: &Path, id: &str) -> RunRecord {
    let start = Instant::now();
    loop {
        let run = RunHistory::open(home)
            .and_then(|h| h.run(id))
            .expect("the run");
        if run.status.is_final() {
            return run;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "run {id} is still {} 10 s after the kill",
            run.status
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `Failed` (lost), naming the killed process, and ended when it was last seen alive.
fn assert_lost(run: &RunRecord, killed: i32, killed_at: f64) {
    assert_eq!(run.status, RunStatus::Failed, "{run:?}");
    let error = run.error.as_deref().unwrap_or_default();
    assert!(
        error.starts_with("lost") && error.contains(&format!("pid {killed}")),
        "{error}"
    );
    // The last time it was seen alive: not after the kill, nor long before (the guard looks
    // ten times a second; a busy machine may keep it waiting).
    let ended = run.ended.expect("an end time");
    assert!(
        ended < killed_at + 1.0 && ended > killed_at - 3.0,
        "ended at {ended}, killed at {killed_at}"
    );
    assert!(run.duration.is_some_and(|d| d > 0.0), "{run:?}");
}

#[test]
fn kill_9_of_kiln_submit_stops_every_process_of_its_run() {
    let dir = temp_dir("guard-submit");
    let home = dir.join("home");
    let job = job_file(&dir, SCRIPT);
    let mut submitter = submit(&home, &job)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("kiln submit");
    let id = started(&home);
    let program = Program::of(&home, &id);
    let pid = submitter.id() as i32;
    let guard = guard_of(pid);
    program.check_layout(guard);
    // Let the guard see the submitter alive after the run started (it looks ten times a
    // second), so the run's recorded end falls after its start.
    std::thread::sleep(Duration::from_millis(400));
    let killed_at = now();
    submitter.kill().expect("SIGKILL");
    submitter.wait().expect("reaped");
    let mut run = program.pids();
    run.push(guard);
    all_gone_within_10_s(&run);
    assert_lost(&ended(&home, &id), pid, killed_at);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn kill_9_of_the_detached_worker_stops_every_process_of_its_run() {
    let dir = temp_dir("guard-detach");
    let home = dir.join("home");
    let job = job_file(&dir, SCRIPT);
    let o = submit(&home, &job)
        .arg("--detach")
        .output()
        .expect("kiln submit");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let id = started(&home);
    let program = Program::of(&home, &id);
    let record = RunHistory::open(&home)
        .and_then(|h| h.run(&id))
        .expect("the run");
    let worker = record.submitter_pid.expect("a submitter pid") as i32;
    let args = std::fs::read(format!("/proc/{worker}/cmdline")).unwrap_or_default();
    assert!(
        String::from_utf8_lossy(&args).contains("--execute"),
        "{worker} is the --execute worker"
    );
    let guard = guard_of(worker);
    program.check_layout(guard);
    // Let the guard see the submitter alive after the run started (it looks ten times a
    // second), so the run's recorded end falls after its start.
    std::thread::sleep(Duration::from_millis(400));
    let killed_at = now();
    // SAFETY: kills the worker this test's `kiln submit --detach` started.
    assert_eq!(unsafe { libc::kill(worker, libc::SIGKILL) }, 0);
    let mut run = program.pids();
    run.extend([guard, worker]);
    all_gone_within_10_s(&run);
    assert_lost(&ended(&home, &id), worker, killed_at);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn kill_9_of_the_guard_stops_every_process_of_its_run() {
    let dir = temp_dir("guard-guard");
    let home = dir.join("home");
    let job = job_file(&dir, SCRIPT);
    let mut submitter = submit(&home, &job)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("kiln submit");
    let id = started(&home);
    let program = Program::of(&home, &id);
    let guard = guard_of(submitter.id() as i32);
    program.check_layout(guard);
    // SAFETY: kills the guard of this test's `kiln submit`.
    assert_eq!(unsafe { libc::kill(guard, libc::SIGKILL) }, 0);
    let mut run = program.pids();
    run.push(guard);
    all_gone_within_10_s(&run);
    let start = Instant::now();
    let status = loop {
        if let Some(status) = submitter.try_wait().expect("kiln submit") {
            break status;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "kiln submit outlived its guard by 30 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success());
    let run = ended(&home, &id);
    assert_eq!(run.status, RunStatus::Failed, "{run:?}");
    let error = run.error.unwrap_or_default();
    assert!(
        error.contains("guard") && error.contains("killed by signal 9"),
        "{error}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_finished_program_takes_what_it_left_running_with_it() {
    let dir = temp_dir("guard-leftover");
    let home = dir.join("home");
    // The orphan keeps the program's output open: the run ends only once it is stopped.
    let job = job_file(
        &dir,
        "#!/bin/bash\n(setsid bash -c 'echo $$ > outputs/escaped.tmp && mv outputs/escaped.tmp \
         outputs/escaped; exec sleep 300' &)\nwhile [ ! -e outputs/escaped ]; do sleep 0.05; \
         done\necho done\n",
    );
    let start = Instant::now();
    let o = submit(&home, &job).output().expect("kiln submit");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{out}");
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "a detached leftover kept kiln submit waiting"
    );
    assert!(out.contains("done"), "{out}");
    let id = std::fs::read_dir(home.join("runs"))
        .expect("runs")
        .flatten()
        .next()
        .expect("a run")
        .file_name()
        .to_string_lossy()
        .into_owned();
    let escaped = std::fs::read_to_string(home.join("runs").join(&id).join("outputs/escaped"))
        .expect("the orphan's pid");
    assert!(
        !alive(escaped.trim().parse().expect("a pid")),
        "the orphan outlived its run"
    );
    let run = ended(&home, &id);
    assert_eq!((run.status, run.exit_code), (RunStatus::Completed, Some(0)));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn exit_codes_and_signals_come_through_the_guard() {
    for (name, script, code, error) in [
        (
            "code",
            "#!/bin/sh\nexit 7\n",
            7,
            "the program exited with code 7",
        ),
        (
            "signal",
            "#!/bin/sh\nkill -9 $$\n",
            137,
            "the program was killed by signal 9",
        ),
    ] {
        let dir = temp_dir(&format!("guard-exit-{name}"));
        let home = dir.join("home");
        let job = job_file(&dir, script);
        let o = submit(&home, &job).output().expect("kiln submit");
        assert_eq!(
            o.status.code(),
            Some(code),
            "{}",
            String::from_utf8_lossy(&o.stdout)
        );
        let id = std::fs::read_dir(home.join("runs"))
            .expect("runs")
            .flatten()
            .next()
            .expect("a run")
            .file_name()
            .to_string_lossy()
            .into_owned();
        let run = ended(&home, &id);
        assert_eq!(run.status, RunStatus::Failed);
        assert_eq!(run.exit_code, Some(i64::from(code)));
        assert_eq!(run.error.as_deref(), Some(error));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
