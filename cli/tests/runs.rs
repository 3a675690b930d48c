//! The job runner end to end through the binary: `kiln submit` of a built-in training job and
//! of scripts (completed, failed, canceled, two ranks, mpirun, a fake Slurm), metrics from
//! four concurrent runs, a killed submitter's run marked lost, job-file errors, the model
//! registry's round trip, a lost or damaged history recovered from disk, and a read-only
//! `KILN_HOME` still read.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use kiln_engine::kernels::testing::temp_dir;
use serde_json::Value;

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
const KILN: &str = env!("CARGO_BIN_EXE_kiln");

fn kiln(home: &Path, args: &[&str]) -> Output {
    Command::new(KILN)
        .args(args)
        .env("KILN_HOME", home)
        .env("RAYON_NUM_THREADS", "1")
        .output()
        .expect("kiln runs")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn json(home: &Path, args: &[&str]) -> Value {
    let o = kiln(home, args);
    assert!(o.status.success(), "{args:?}: {}", text(&o));
    serde_json::from_slice(&o.stdout).expect("json")
}

/// The id `kiln submit` prints first: `run <id>: ...`.
fn run_id(out: &str) -> String {
    out.lines()
        .find_map(|l| l.strip_prefix("run ")?.split(':').next())
        .expect("a run id")
        .to_string()
}

fn write(path: &Path, text: &str) {
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p).expect("dir");
    }
    std::fs::write(path, text).expect("write");
}

fn executable(path: &Path, text: &str) {
    write(path, text);
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

fn wait_for(home: &Path, id: &str, what: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let show = json(home, &["runs", "show", id, "--json"]);
        if what(&show) {
            return show;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "timed out: {show}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn alive(pid: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| s.split(' ').nth(2).is_none_or(|state| state != "Z"))
}

#[test]
fn built_in_training_job_completes_and_its_model_registers() {
    let dir = temp_dir("builtin");
    let home = dir.join("home");
    let data = Path::new(ROOT).join("data/fashion-mnist-mini");
    let job = dir.join("job.toml");
    write(
        &job,
        &format!(
            "name = \"mini\"\nexperiment = \"fashion\"\n[train]\ndata = \"{}\"\nepochs = 2\n\
             max_steps_per_epoch = 3\nbatch_size = 8\nimage_size = 32\nworkers = 1\n",
            data.display()
        ),
    );
    let o = kiln(&home, &["submit", job.to_str().unwrap()]);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(
        out.contains("epoch 2/2"),
        "the trainer's output streams: {out}"
    );
    let id = run_id(&out);
    let show = json(&home, &["runs", "show", &id, "--json"]);
    assert_eq!(show["status"], "Completed", "{show}");
    assert_eq!(show["exit_code"], 0);
    assert_eq!(show["experiment"], "fashion");
    assert!(show["duration"].as_f64().unwrap() > 0.0);
    let last: Vec<String> = show["last_metrics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m[0].as_str().unwrap().to_string())
        .collect();
    assert!(last.contains(&"val/acc".to_string()), "{last:?}");
    let artifacts = show["artifacts"].to_string();
    for f in [
        "outputs/model/model.safetensors",
        "outputs/model/kiln.json",
        "logs/output.log",
    ] {
        assert!(artifacts.contains(f), "{f}: {artifacts}");
    }
    let metrics = json(&home, &["runs", "metrics", &id, "--json"]);
    let values = metrics.as_array().expect("one JSON array");
    assert_eq!(values.len(), 2 * 8, "two epochs of 8 values each");
    let plot = dir.join("curves.png");
    let o = kiln(
        &home,
        &["runs", "metrics", &id, "--plot", plot.to_str().unwrap()],
    );
    assert!(
        o.status.success() && plot.metadata().unwrap().len() > 1000,
        "{}",
        text(&o)
    );
    let list = kiln(&home, &["runs", "list"]);
    assert!(
        text(&list).contains(&id) && text(&list).contains("Completed"),
        "{}",
        text(&list)
    );

    // Three registrations at once get versions 1, 2 and 3; download keeps every sha256.
    let registering: Vec<Child> = (0..3)
        .map(|_| {
            Command::new(KILN)
                .args(["models", "register", "--run", &id, "--name", "fashion-r18"])
                .env("KILN_HOME", &home)
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut versions: Vec<String> = registering
        .into_iter()
        .map(|c| {
            let o = c.wait_with_output().unwrap();
            assert!(o.status.success(), "{}", text(&o));
            let out = text(&o);
            let after = out.split("fashion-r18:").nth(1).unwrap();
            after.split(' ').next().unwrap().to_string()
        })
        .collect();
    versions.sort();
    assert_eq!(versions, ["1", "2", "3"]);
    let models = json(&home, &["models", "list", "--json"]);
    assert_eq!(models.as_array().unwrap().len(), 3, "{models}");
    let dest = dir.join("download");
    let o = kiln(
        &home,
        &[
            "models",
            "download",
            "fashion-r18:1",
            dest.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let source = home.join("runs").join(&id).join("outputs/model");
    for name in ["model.safetensors", "kiln.json"] {
        assert_eq!(
            sha256(&source.join(name)),
            sha256(&dest.join(name)),
            "{name}"
        );
    }
    let again = kiln(
        &home,
        &["models", "download", "fashion-r18", dest.to_str().unwrap()],
    );
    assert!(!again.status.success() && text(&again).contains("already exists"));
    let stored = home.join("models/fashion-r18/2/kiln.json");
    std::fs::write(&stored, "{}").unwrap();
    let fresh = dir.join("corrupt");
    let o = kiln(
        &home,
        &[
            "models",
            "download",
            "fashion-r18:2",
            fresh.to_str().unwrap(),
        ],
    );
    assert!(
        !o.status.success() && text(&o).contains("corrupt"),
        "{}",
        text(&o)
    );
    assert!(!fresh.exists(), "nothing is written from a corrupt model");
    for (args, expect) in [
        (
            vec!["models", "register", "--run", &id, "--name", "../x"],
            "model name",
        ),
        (
            vec![
                "models",
                "register",
                "--run",
                &id,
                "--name",
                "m",
                "--path",
                "../../etc",
            ],
            "inside the run",
        ),
        (
            vec![
                "models",
                "register",
                "--run",
                &id,
                "--name",
                "m",
                "--path",
                "outputs/nope",
            ],
            "has no outputs/nope",
        ),
        (
            vec!["models", "register", "--run", "zzzzzz", "--name", "m"],
            "no run 'zzzzzz'",
        ),
        (
            vec!["models", "download", "nothing", "/tmp/x"],
            "no model named nothing",
        ),
        (
            vec!["models", "download", "fashion-r18:9", "/tmp/x"],
            "version 9",
        ),
    ] {
        let o = kiln(&home, &args);
        assert!(
            !o.status.success() && text(&o).contains(expect),
            "{args:?}: {}",
            text(&o)
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn sha256(path: &Path) -> String {
    let o = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum");
    String::from_utf8_lossy(&o.stdout)
        .split(' ')
        .next()
        .unwrap()
        .to_string()
}

/// A source directory with a script, a file `.kilnignore` leaves out, and a git commit.
fn script_project(dir: &Path, script: &str) -> PathBuf {
    let src = dir.join("project");
    executable(&src.join("run.sh"), script);
    write(&src.join(".kilnignore"), "*.bin\n");
    write(&src.join("big.bin"), "not copied");
    write(&src.join("conf/settings.txt"), "copied");
    src
}

#[test]
fn script_job_runs_in_its_snapshot_with_params_env_metrics_and_git() {
    let dir = temp_dir("script");
    let home = dir.join("home");
    let src = script_project(
        &dir,
        "#!/bin/bash\nset -e\necho \"args: $*\"\necho \"to stderr\" >&2\nls\n\
         cat conf/settings.txt; echo\necho done > outputs/result.txt\n\
         \"$KILN\" log-metric loss 0.5 --step 1\n\"$KILN\" log-metric loss 0.25 --step 2\n\
         echo \"run $KILN_RUN_ID greeting=$GREETING\"\n",
    );
    let git = |args: &[&str]| {
        Command::new("git")
            .args(["-c", "user.email=k@k", "-c", "user.name=k", "-C"])
            .arg(&src)
            .args(args)
            .output()
    };
    let have_git = git(&["init", "-q"]).is_ok_and(|o| o.status.success())
        && git(&["add", "."]).is_ok_and(|o| o.status.success())
        && git(&["commit", "-qm", "x"]).is_ok_and(|o| o.status.success());
    write(&src.join("untracked.txt"), "makes the tree dirty");
    let job = dir.join("job.toml");
    write(
        &job,
        &format!(
            "source_directory = \"project\"\nentry_script = \"run.sh\"\n\
             script_params = {{ \"--epochs\" = 3, \"--verbose\" = \"\" }}\n\
             [environment]\nKILN = \"{KILN}\"\nGREETING = \"hi\"\n"
        ),
    );
    let o = kiln(&home, &["submit", job.to_str().unwrap()]);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    let id = run_id(&out);
    let log = std::fs::read_to_string(home.join("runs").join(&id).join("logs/output.log")).unwrap();
    for line in [
        "args: --epochs 3 --verbose",
        "to stderr",
        "copied",
        &format!("run {id} greeting=hi"),
    ] {
        assert!(log.contains(line), "{line}: {log}");
        assert!(out.contains(line), "streamed to the terminal: {line}");
    }
    assert!(
        !log.contains("big.bin"),
        ".kilnignore keeps big.bin out: {log}"
    );
    let show = json(&home, &["runs", "show", &id, "--json"]);
    assert_eq!(show["status"], "Completed", "{show}");
    assert_eq!(show["name"], "job", "the job file's stem names the run");
    assert!(show["artifacts"].to_string().contains("outputs/result.txt"));
    if have_git {
        assert_eq!(show["git_commit"].as_str().unwrap().len(), 40, "{show}");
        assert_eq!(show["git_dirty"], true);
    }
    let metrics = kiln(&home, &["runs", "metrics", &id]);
    let table = text(&metrics);
    assert!(table.contains("loss") && table.contains("0.25"), "{table}");
    let logs = kiln(&home, &["runs", "logs", &id]);
    assert!(text(&logs).contains("args: --epochs 3 --verbose"));
    let dest = dir.join("result.txt");
    let o = kiln(
        &home,
        &[
            "runs",
            "download",
            &id,
            "outputs/result.txt",
            dest.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(std::fs::read_to_string(&dest).unwrap(), "done\n");
    let o = kiln(
        &home,
        &["runs", "download", &id, "../../etc/passwd", "/tmp/x"],
    );
    assert!(!o.status.success() && text(&o).contains("inside the run"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_failing_script_fails_with_its_exit_code() {
    let dir = temp_dir("fail");
    let home = dir.join("home");
    script_project(&dir, "#!/bin/sh\necho about to fail\nexit 3\n");
    let job = dir.join("job.toml");
    write(
        &job,
        "source_directory = \"project\"\nentry_script = \"run.sh\"\n",
    );
    let o = kiln(&home, &["submit", job.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    let show = json(&home, &["runs", "show", &run_id(&text(&o)), "--json"]);
    assert_eq!(show["status"], "Failed");
    assert_eq!(show["exit_code"], 3);
    assert!(
        show["error"]
            .as_str()
            .unwrap()
            .contains("exited with code 3")
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn cancel_stops_the_process_tree() {
    let dir = temp_dir("cancel");
    let home = dir.join("home");
    script_project(
        &dir,
        "#!/bin/bash\nsleep 300 &\necho \"$$ $!\" > outputs/pids\nwait\n",
    );
    let job = dir.join("job.toml");
    write(
        &job,
        "source_directory = \"project\"\nentry_script = \"run.sh\"\n",
    );
    let o = kiln(&home, &["submit", job.to_str().unwrap(), "--detach"]);
    assert!(o.status.success(), "{}", text(&o));
    let id = run_id(&text(&o));
    let pids_file = home.join("runs").join(&id).join("outputs/pids");
    let start = Instant::now();
    while !pids_file.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the script never started"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(200));
    let pids = std::fs::read_to_string(&pids_file).unwrap();
    let pids: Vec<&str> = pids.split_whitespace().collect();
    assert!(pids.iter().all(|p| alive(p)));
    assert_eq!(
        json(&home, &["runs", "show", &id, "--json"])["status"],
        "Running"
    );
    let o = kiln(&home, &["runs", "cancel", &id]);
    assert!(
        o.status.success() && text(&o).contains("Canceled"),
        "{}",
        text(&o)
    );
    std::thread::sleep(Duration::from_millis(300));
    for pid in pids {
        assert!(!alive(pid), "process {pid} of the run survived the cancel");
    }
    let o = kiln(&home, &["runs", "cancel", &id]);
    assert!(!o.status.success() && text(&o).contains("already ended"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_killed_submitter_leaves_a_lost_run_not_a_running_one() {
    let dir = temp_dir("lost");
    let home = dir.join("home");
    script_project(
        &dir,
        "#!/bin/bash\nsleep 300 &\necho \"$$ $!\" > outputs/started\nwait\n",
    );
    let job = dir.join("job.toml");
    write(
        &job,
        "source_directory = \"project\"\nentry_script = \"run.sh\"\n",
    );
    let mut submitter: Child = Command::new(KILN)
        .args(["submit", job.to_str().unwrap()])
        .env("KILN_HOME", &home)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let runs = home.join("runs");
    let started = loop {
        let found = std::fs::read_dir(&runs).ok().and_then(|d| {
            d.flatten()
                .map(|e| e.path().join("outputs/started"))
                .find(|p| p.exists())
        });
        if let Some(f) = found {
            break f;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "never started");
        std::thread::sleep(Duration::from_millis(100));
    };
    let id = started
        .parent()
        .and_then(Path::parent)
        .and_then(Path::file_name)
        .unwrap()
        .to_string_lossy()
        .into_owned();
    submitter.kill().unwrap();
    submitter.wait().unwrap();
    // Lost runs are found by anyone who looks, after the hand-over grace period.
    let show = wait_for(&home, &id, |s| s["status"] != "Running");
    assert_eq!(show["status"], "Failed", "{show}");
    assert!(show["error"].as_str().unwrap().contains("lost"), "{show}");
    let pids = std::fs::read_to_string(&started).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    for pid in pids.split_whitespace() {
        assert!(!alive(pid), "process {pid} outlived its lost run");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn four_concurrent_runs_lose_no_metric() {
    let dir = temp_dir("concurrent");
    let home = dir.join("home");
    // 10,000 records in bursts, so the submitter ingests while the script writes.
    script_project(
        &dir,
        "#!/bin/bash\nfor burst in $(seq 0 9); do\n  seq 1 1000 | awk -v b=$burst \
         '{printf \"{\\\"name\\\":\\\"m\\\",\\\"step\\\":%d,\\\"value\\\":%d}\\n\", b*1000+$1, $1}' \
         >> \"$KILN_LOGS/metrics.jsonl\"\n  sleep 0.05\ndone\n",
    );
    let job = dir.join("job.toml");
    write(
        &job,
        "source_directory = \"project\"\nentry_script = \"run.sh\"\n",
    );
    let start = Instant::now();
    let submitters: Vec<Child> = (0..4)
        .map(|_| {
            Command::new(KILN)
                .args(["submit", job.to_str().unwrap()])
                .env("KILN_HOME", &home)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut ids = Vec::new();
    for s in submitters {
        let o = s.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", text(&o));
        ids.push(run_id(&text(&o)));
    }
    let seconds = start.elapsed().as_secs_f64();
    for id in &ids {
        let values = json(&home, &["runs", "metrics", id, "--json"]);
        let values = values.as_array().expect("one JSON array");
        assert_eq!(values.len(), 10_000, "run {id}: no row lost, none twice");
        let steps: std::collections::BTreeSet<i64> =
            values.iter().map(|v| v["step"].as_i64().unwrap()).collect();
        assert_eq!(steps.len(), 10_000, "run {id}");
        assert_eq!((steps.first(), steps.last()), (Some(&1), Some(&10_000)));
    }
    eprintln!(
        "4 concurrent runs x 10,000 metrics: {seconds:.2} s end to end, {:.0} rows/s",
        40_000.0 / seconds
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_two_process_local_job_is_one_run_with_both_ranks() {
    let dir = temp_dir("two");
    let home = dir.join("home");
    script_project(
        &dir,
        "#!/bin/bash\necho \"hello from rank $RANK of $WORLD_SIZE\"\n\"$KILN\" log-metric seen 1\n",
    );
    let job = dir.join("job.toml");
    write(
        &job,
        &format!(
            "source_directory = \"project\"\nentry_script = \"run.sh\"\nprocess_count_per_node = 2\n\
             [environment]\nKILN = \"{KILN}\"\n"
        ),
    );
    let o = kiln(&home, &["submit", job.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let id = run_id(&text(&o));
    let log = text(&kiln(&home, &["runs", "logs", &id]));
    for rank in ["hello from rank 0 of 2", "hello from rank 1 of 2"] {
        assert!(log.contains(rank), "{rank}: {log}");
    }
    let metrics = json(&home, &["runs", "metrics", &id, "--json"]);
    let values = metrics.as_array().expect("one JSON array");
    assert_eq!(values.len(), 2, "{metrics}");
    let ranks: std::collections::BTreeSet<i64> =
        values.iter().map(|v| v["rank"].as_i64().unwrap()).collect();
    assert_eq!(ranks.into_iter().collect::<Vec<_>>(), [0, 1]);
    assert_eq!(
        json(&home, &["runs", "list", "--json"])
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn mpi_compute_target_runs_under_mpirun() {
    if Command::new("mpirun").arg("--version").output().is_err() {
        assert!(
            std::env::var_os("KILN_REQUIRE_MPI").is_none(),
            "KILN_REQUIRE_MPI is set but mpirun is missing"
        );
        eprintln!("skipped: mpirun not found (Debian: openmpi-bin)");
        return;
    }
    let dir = temp_dir("mpi");
    let home = dir.join("home");
    script_project(
        &dir,
        "#!/bin/bash\necho \"mpi rank $OMPI_COMM_WORLD_RANK of $OMPI_COMM_WORLD_SIZE in run $KILN_RUN_ID\"\n",
    );
    let job = dir.join("job.toml");
    write(
        &job,
        "source_directory = \"project\"\nentry_script = \"run.sh\"\ncompute_target = \"mpi\"\n\
         process_count_per_node = 2\n",
    );
    let o = kiln(&home, &["submit", job.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let id = run_id(&text(&o));
    let log = text(&kiln(&home, &["runs", "logs", &id]));
    for rank in 0..2 {
        assert!(
            log.contains(&format!("mpi rank {rank} of 2 in run {id}")),
            "{log}"
        );
    }
    let show = json(&home, &["runs", "show", &id, "--json"]);
    assert!(
        show["command"]
            .as_str()
            .unwrap()
            .starts_with("mpirun -np 2"),
        "{show}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn slurm_jobs_go_through_sbatch() {
    let dir = temp_dir("slurm");
    let home = dir.join("home");
    // A stand-in Slurm: sbatch runs the script in the background as Slurm would, honouring
    // its --chdir and --output lines; srun runs one task.
    let bin = dir.join("bin");
    executable(
        &bin.join("sbatch"),
        "#!/bin/bash\nscript=\"${@: -1}\"\ncp \"$script\" \"$(dirname \"$script\")/seen.sbatch\"\n\
         out=$(sed -n 's/^#SBATCH --output=//p' \"$script\")\n\
         cd \"$(sed -n 's/^#SBATCH --chdir=//p' \"$script\")\"\n\
         SLURM_JOB_NODELIST=localhost SLURM_JOB_ID=4242 setsid bash \"$script\" > \"$out\" 2>&1 &\necho 4242\n",
    );
    executable(
        &bin.join("srun"),
        "#!/bin/bash\nSLURM_PROCID=0 SLURM_NTASKS=1 exec \"$@\"\n",
    );
    executable(&bin.join("scontrol"), "#!/bin/bash\necho localhost\n");
    script_project(
        &dir,
        "#!/bin/bash\necho \"slurm says $MASTER_ADDR $SLURM_PROCID\"\nexit 0\n",
    );
    let job = dir.join("job.toml");
    write(
        &job,
        "source_directory = \"project\"\nentry_script = \"run.sh\"\ncompute_target = \"slurm\"\n\
         use_gpu = true\n",
    );
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let o = Command::new(KILN)
        .args(["submit", job.to_str().unwrap()])
        .env("KILN_HOME", &home)
        .env("PATH", path)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("slurm says localhost 0"), "{}", text(&o));
    let id = run_id(&text(&o));
    let show = json(&home, &["runs", "show", &id, "--json"]);
    assert_eq!(show["scheduler_id"], "4242", "{show}");
    assert_eq!(show["status"], "Completed");
    let script = std::fs::read_to_string(home.join("runs").join(&id).join("seen.sbatch")).unwrap();
    assert!(
        script.contains("#SBATCH --gpus-per-node=1") && script.contains("\nsrun "),
        "{script}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn job_file_errors_name_the_line_and_key() {
    let dir = temp_dir("errors");
    let home = dir.join("home");
    for (body, expect) in [
        (
            "name = \"x\"\nexperimnt = \"e\"\n",
            "job.toml:2: unknown key 'experimnt'; did you mean 'experiment'?",
        ),
        (
            "[train]\nepoch = 2\n",
            "job.toml:2: unknown key 'epoch' in [train]; did you mean 'epochs'?",
        ),
        (
            "node_count = \"2\"\n",
            "job.toml:1: node_count: invalid type",
        ),
        (
            "process_count_per_node = 0\n",
            "job.toml:1: process_count_per_node: 0 is out of range",
        ),
        (
            "compute_target = \"cloud\"\n",
            "job.toml:1: compute_target: unknown value 'cloud'",
        ),
        (
            "[train]\nmomentum = 1.5\n",
            "job.toml:2: momentum: 1.5 is out of range",
        ),
        ("name = \n", "job.toml:1: name: "),
        (
            "[environment]\nKILN_LOGS = \"/x\"\n",
            "job.toml:2: environment: KILN_LOGS is set by kiln",
        ),
        (
            "[environment]\n\"A B\" = 1\n",
            "job.toml:2: environment: 'A B' is not a variable name",
        ),
        (
            "hosts = [\"a\"]\n",
            "job.toml:1: hosts: a local job runs on this machine",
        ),
        ("[train]\ngamma = 0.0\n", "job.toml:2: gamma:"),
    ] {
        let job = dir.join("job.toml");
        write(&job, body);
        let o = kiln(&home, &["submit", job.to_str().unwrap()]);
        assert!(!o.status.success(), "{body}");
        assert!(text(&o).contains(expect), "{body}: {}", text(&o));
    }
    let o = kiln(&home, &["runs", "list", "--json"]);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "[]",
        "no run was recorded"
    );
    write(&dir.join("project/a.txt"), "0123456789");
    write(&dir.join("job.toml"), "source_directory = \"project\"\n");
    let o = Command::new(KILN)
        .args(["submit", dir.join("job.toml").to_str().unwrap()])
        .env("KILN_HOME", &home)
        .env("KILN_SNAPSHOT_LIMIT_MB", "0.000005")
        .output()
        .unwrap();
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("over the") && text(&o).contains(".kilnignore"),
        "{}",
        text(&o)
    );
    let runs = json(&home, &["runs", "list", "--json"]);
    assert_eq!(runs[0]["status"], "Failed", "{runs}");
    assert!(
        runs[0]["error"].as_str().unwrap().contains("over the"),
        "{runs}"
    );
    let o = kiln(&home, &["log-metric", "x", "1"]);
    assert!(!o.status.success() && text(&o).contains("KILN_LOGS"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn logs_follow_a_detached_run_to_its_end() {
    let dir = temp_dir("follow");
    let home = dir.join("home");
    script_project(
        &dir,
        "#!/bin/bash\nfor i in 1 2 3; do echo \"line $i\"; sleep 0.3; done\necho last\n",
    );
    let job = dir.join("job.toml");
    write(
        &job,
        "source_directory = \"project\"\nentry_script = \"run.sh\"\n",
    );
    let o = kiln(&home, &["submit", job.to_str().unwrap(), "--detach"]);
    assert!(o.status.success(), "{}", text(&o));
    let id = run_id(&text(&o));
    let followed = kiln(&home, &["runs", "logs", &id, "--follow"]);
    let log = text(&followed);
    assert!(log.contains("line 1") && log.ends_with("last\n"), "{log}");
    assert_eq!(
        json(&home, &["runs", "show", &id, "--json"])["status"],
        "Completed"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn what_a_program_leaves_running_ends_with_it() {
    let dir = temp_dir("leftover");
    let home = dir.join("home");
    script_project(
        &dir,
        "#!/bin/bash\nsleep 300 &\necho $! > outputs/bg\necho done\n",
    );
    let job = dir.join("job.toml");
    write(
        &job,
        "source_directory = \"project\"\nentry_script = \"run.sh\"\n",
    );
    let start = Instant::now();
    let o = kiln(&home, &["submit", job.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "a background child kept submit waiting"
    );
    let id = run_id(&text(&o));
    let bg = std::fs::read_to_string(home.join("runs").join(&id).join("outputs/bg")).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert!(!alive(bg.trim()), "the background sleep outlived its run");
    assert_eq!(
        json(&home, &["runs", "show", &id, "--json"])["status"],
        "Completed"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Everything `kiln runs` and `kiln models` show of `ids`: the lists, each run's page and its
/// metric values (JSON lines, as text).
fn everything_shown(home: &Path, ids: &[&str]) -> Vec<Value> {
    let mut shown = vec![
        json(home, &["runs", "list", "--json"]),
        json(home, &["models", "list", "--json"]),
    ];
    for &id in ids {
        shown.push(json(home, &["runs", "show", id, "--json"]));
        let o = kiln(home, &["runs", "metrics", id, "--json"]);
        assert!(o.status.success(), "{}", text(&o));
        shown.push(Value::String(
            String::from_utf8_lossy(&o.stdout).into_owned(),
        ));
    }
    shown
}

#[test]
fn recover_rebuilds_a_lost_history_from_the_runs_and_models_on_disk() {
    let dir = temp_dir("recover");
    let home = dir.join("home");
    script_project(
        &dir,
        "#!/bin/bash\nset -e\nmkdir -p outputs/model\necho weights > outputs/model/w.bin\n\
         \"$KILN\" log-metric loss 0.5 --step 1\n\"$KILN\" log-metric loss 0.25 --step 2\n\
         exit \"$EXIT\"\n",
    );
    let submit = |name: &str, exit: u8| {
        let job = dir.join(format!("{name}.toml"));
        write(
            &job,
            &format!(
                "source_directory = \"project\"\nentry_script = \"run.sh\"\n\
                 experiment = \"recovery\"\n[environment]\nKILN = \"{KILN}\"\nEXIT = \"{exit}\"\n"
            ),
        );
        let o = kiln(&home, &["submit", job.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(i32::from(exit)), "{}", text(&o));
        run_id(&text(&o))
    };
    let done = submit("done", 0);
    let broken = submit("broken", 3);
    let o = kiln(
        &home,
        &["models", "register", "--run", &done, "--name", "tiny"],
    );
    assert!(o.status.success(), "{}", text(&o));
    let before = everything_shown(&home, &[done.as_str(), broken.as_str()]);
    assert_eq!(before[0].as_array().unwrap().len(), 2, "{}", before[0]);

    for name in ["kiln.db", "kiln.db-wal", "kiln.db-shm"] {
        let _ = std::fs::remove_file(home.join(name));
    }
    let o = kiln(&home, &["runs", "list"]);
    assert!(
        !o.status.success() && text(&o).contains("`kiln runs recover`"),
        "{}",
        text(&o)
    );
    let o = kiln(&home, &["runs", "recover"]);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(
        out.contains(
            "recovered 2 run(s), 4 metric value(s), 0 sweep trial(s) and 1 model version(s)"
        ),
        "{out}"
    );
    assert!(!out.contains("moved"), "there was no file to move: {out}");
    // Both runs ended and so kept their end records, and the model its registration record:
    // every field comes back as it was, to the last digit of every time. Nothing is left out
    // of the comparison. (A run without an end record, ended before kiln kept them or with
    // its submitter killed, comes back with its end inferred: kiln-runs' recover tests.)
    assert_eq!(
        everything_shown(&home, &[done.as_str(), broken.as_str()]),
        before
    );
    let o = kiln(
        &home,
        &[
            "models",
            "download",
            "tiny:1",
            dir.join("tiny").to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "sha256 still checked: {}", text(&o));
    // A sound history is rebuilt only when asked twice.
    let o = kiln(&home, &["runs", "recover"]);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("is sound (2 run(s))") && text(&o).contains("--force"),
        "{}",
        text(&o)
    );
    let o = kiln(&home, &["runs", "recover", "--force"]);
    assert!(
        o.status.success() && text(&o).contains("aside to"),
        "{}",
        text(&o)
    );
    assert_eq!(
        everything_shown(&home, &[done.as_str(), broken.as_str()]),
        before
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn recover_moves_a_damaged_history_aside_and_rebuilds_it() {
    let dir = temp_dir("recover-damaged");
    let home = dir.join("home");
    script_project(&dir, "#!/bin/sh\necho hi\n");
    let job = dir.join("job.toml");
    write(
        &job,
        "source_directory = \"project\"\nentry_script = \"run.sh\"\n",
    );
    let o = kiln(&home, &["submit", job.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let id = run_id(&text(&o));
    let before = everything_shown(&home, &[id.as_str()]);
    let garbage = b"not a database at all, but long enough to be read".to_vec();
    std::fs::write(home.join("kiln.db"), &garbage).unwrap();
    let o = kiln(&home, &["runs", "list"]);
    assert!(
        !o.status.success()
            && text(&o).contains("cannot be read")
            && text(&o).contains("`kiln runs recover`"),
        "{}",
        text(&o)
    );
    let o = kiln(&home, &["runs", "recover"]);
    assert!(o.status.success(), "{}", text(&o));
    let aside: Vec<PathBuf> = std::fs::read_dir(&home)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            name.starts_with("kiln.db.damaged-")
                && !name.ends_with("-wal")
                && !name.ends_with("-shm")
        })
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!(
        std::fs::read(&aside[0]).unwrap(),
        garbage,
        "the damaged file is kept as it was"
    );
    assert!(
        text(&o).contains(&aside[0].display().to_string()),
        "where it went is said: {}",
        text(&o)
    );
    assert_eq!(everything_shown(&home, &[id.as_str()]), before);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_read_only_kiln_home_is_still_listed_and_shown() {
    let dir = temp_dir("read-only");
    let home = dir.join("home");
    script_project(&dir, "#!/bin/sh\necho hi\n");
    let job = dir.join("job.toml");
    write(
        &job,
        "source_directory = \"project\"\nentry_script = \"run.sh\"\n",
    );
    let o = kiln(&home, &["submit", job.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let id = run_id(&text(&o));
    let before = json(&home, &["runs", "show", &id, "--json"]);
    let chmod = |path: &Path, mode: u32| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod")
    };
    chmod(&home.join("kiln.db"), 0o444);
    chmod(&home, 0o555);
    // Root writes whatever the mode bits say, so as root the commands run as `nobody`.
    // SAFETY: geteuid only reads this process's user id.
    let root = unsafe { libc::geteuid() } == 0;
    let as_reader = |program: &str, args: &[&str]| {
        let mut cmd = Command::new(program);
        cmd.args(args)
            .env("KILN_HOME", &home)
            .env("RAYON_NUM_THREADS", "1");
        if root {
            cmd.uid(65534).gid(65534);
        }
        cmd.output()
    };
    let db = home.join("kiln.db");
    let reachable = as_reader(
        "/bin/sh",
        &[
            "-c",
            "test -x \"$0\" && test -r \"$1\"",
            KILN,
            db.to_str().unwrap(),
        ],
    )
    .is_ok_and(|o| o.status.success());
    let outputs: Vec<Output> = if reachable {
        [
            vec!["runs", "list", "--json"],
            vec!["runs", "show", &id, "--json"],
            vec!["submit", job.to_str().unwrap()],
        ]
        .iter()
        .map(|args| as_reader(KILN, args.as_slice()).expect("kiln runs"))
        .collect()
    } else {
        Vec::new()
    };
    chmod(&home, 0o755);
    chmod(&db, 0o644);
    if !reachable {
        // A private temporary or target directory above them (as `.ci/run` makes, as root);
        // the read-only open itself is tested in kiln-runs (history::open) whoever runs it.
        eprintln!("skipped: nobody cannot reach {KILN} and {}", db.display());
        let _ = std::fs::remove_dir_all(&dir);
        return;
    }
    let (list, show, submit) = (&outputs[0], &outputs[1], &outputs[2]);
    assert!(list.status.success(), "{}", text(list));
    assert!(
        text(list).contains("cannot be written here"),
        "read as it is: {}",
        text(list)
    );
    let runs: Value = serde_json::from_slice(&list.stdout).expect("json");
    assert_eq!(runs[0]["id"], id.as_str(), "{runs}");
    assert!(show.status.success(), "{}", text(show));
    assert_eq!(
        serde_json::from_slice::<Value>(&show.stdout).expect("json"),
        before
    );
    assert!(
        !submit.status.success() && text(submit).contains("cannot be written"),
        "{}",
        text(submit)
    );
    assert_eq!(json(&home, &["runs", "show", &id, "--json"]), before);
    let _ = std::fs::remove_dir_all(&dir);
}
