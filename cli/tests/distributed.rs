//! Distributed `kiln train` end to end on the bundled dataset: the `--nproc-per-node`
//! launcher, the same binary under `mpirun`, a worker killed mid-epoch, and a stranger with
//! the wrong token knocking on rank 0's port.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

use kiln_engine::dist::wire::Hello;
use kiln_engine::kernels::testing::{free_port, temp_dir};
use kiln_engine::train::threads::{default_threads, threads_per_worker};

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

/// A short training: 32 px, a few steps per epoch, one decode thread per worker.
fn train_args(outputs: &Path, epochs: &str, steps: &str) -> Vec<String> {
    [
        "train",
        "--epochs",
        epochs,
        "--max-steps-per-epoch",
        steps,
        "--batch-size",
        "8",
        "--image-size",
        "32",
        "--workers",
        "1",
        "--patience",
        "10",
        "--output-dir",
        outputs.to_str().expect("utf8"),
    ]
    .map(String::from)
    .to_vec()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Starts kiln with piped output; lines of stdout and stderr arrive on the receiver.
fn spawn(args: &[String]) -> (Child, Receiver<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .current_dir(ROOT)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kiln starts");
    let (tx, rx) = channel();
    for stream in [
        Box::new(child.stdout.take().expect("stdout")) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().expect("stderr")),
    ] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
    }
    (child, rx)
}

/// Collects lines until one contains `needle` (panics after `within`).
fn wait_for(rx: &Receiver<String>, seen: &mut Vec<String>, needle: &str, within: Duration) {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(100)) {
            let found = line.contains(needle);
            seen.push(line);
            if found {
                return;
            }
        }
    }
    panic!(
        "no line with '{needle}' within {within:?}:\n{}",
        seen.join("\n")
    );
}

/// Waits for the launcher to exit, killing it (and failing) after `within`.
fn finish(
    mut child: Child,
    rx: &Receiver<String>,
    seen: &mut Vec<String>,
    within: Duration,
) -> (std::process::ExitStatus, Duration) {
    let started = Instant::now();
    loop {
        while let Ok(line) = rx.try_recv() {
            seen.push(line);
        }
        if let Some(status) = child.try_wait().expect("wait") {
            std::thread::sleep(Duration::from_millis(200));
            while let Ok(line) = rx.try_recv() {
                seen.push(line);
            }
            return (status, started.elapsed());
        }
        if started.elapsed() > within {
            let _ = child.kill();
            panic!("kiln did not exit within {within:?}:\n{}", seen.join("\n"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// How rank 0's start line names its compute threads when it shares this machine's cores
/// with `workers - 1` others (or takes `RAYON_NUM_THREADS`, where `from_env` and it is set).
fn shared_threads(workers: usize, from_env: bool) -> String {
    let threads = if from_env && std::env::var_os("RAYON_NUM_THREADS").is_some() {
        default_threads()
    } else {
        threads_per_worker(workers)
    };
    let s = if threads == 1 { "" } else { "s" };
    format!(", {threads} compute thread{s}")
}

/// The launcher's children and the rank each was given.
fn workers_of(launcher: u32) -> Vec<(u32, usize)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // Field 4 (after the parenthesised name) is the parent's pid.
        let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        if after.split_whitespace().nth(1) != Some(&launcher.to_string()) {
            continue;
        }
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        let rank = environ
            .split(|b| *b == 0)
            .find_map(|v| v.strip_prefix(b"RANK="))
            .and_then(|v| std::str::from_utf8(v).ok()?.parse().ok());
        if let Some(rank) = rank {
            out.push((pid, rank));
        }
    }
    out
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        !s.rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
    })
}

#[test]
fn nproc_per_node_trains_two_workers_and_rank_0_writes() {
    let out = temp_dir("launch");
    let outputs = out.join("outputs");
    let mut args = train_args(&outputs, "2", "6");
    args.extend(["--nproc-per-node", "2"].map(String::from));
    let o: Output = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(&args)
        .current_dir(ROOT)
        .output()
        .expect("kiln runs");
    let (stdout, stderr) = (text(&o.stdout), text(&o.stderr));
    assert!(o.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("[rank 0] epoch 2/2"), "{stdout}");
    assert!(
        !stdout.contains("[rank 1] epoch"),
        "only rank 0 reports epochs:\n{stdout}"
    );
    assert!(stdout.contains("images (10 classes)"), "{stdout}");
    // The launcher shares the cores between its two workers.
    let threads = shared_threads(2, true);
    assert!(stdout.contains(&threads), "want {threads}:\n{stdout}");
    assert!(outputs.join("model/model.safetensors").is_file());
    let metrics = std::fs::read_to_string(out.join("logs/metrics.jsonl")).expect("metrics");
    assert!(metrics.lines().count() >= 2 * 8, "{metrics}");
    assert!(
        metrics.lines().all(|l| l.contains("\"rank\":0")),
        "{metrics}"
    );
}

#[test]
fn mpirun_starts_the_same_binary() {
    let Ok(found) = Command::new("mpirun").arg("--version").output() else {
        assert!(
            std::env::var_os("KILN_REQUIRE_MPI").is_none(),
            "KILN_REQUIRE_MPI is set but mpirun is missing (apt-get install openmpi-bin)"
        );
        eprintln!("skipped: mpirun not found (Debian: openmpi-bin)");
        return;
    };
    assert!(found.status.success());
    let out = temp_dir("mpirun");
    let outputs = out.join("outputs");
    let o = Command::new("mpirun")
        .args(["--allow-run-as-root", "--oversubscribe", "-np", "2"])
        .args(["-x", "MASTER_PORT"])
        .arg(env!("CARGO_BIN_EXE_kiln"))
        .args(train_args(&outputs, "1", "4"))
        .env("MASTER_PORT", free_port().to_string())
        // Nothing sets RAYON_NUM_THREADS here: each worker takes its share from mpirun's
        // local size, not every core.
        .env_remove("RAYON_NUM_THREADS")
        .current_dir(ROOT)
        .output()
        .expect("mpirun runs");
    let (stdout, stderr) = (text(&o.stdout), text(&o.stderr));
    assert!(o.status.success(), "{stdout}\n{stderr}");
    assert_eq!(
        stdout.matches("epoch 1/1").count(),
        1,
        "rank 0 alone reports:\n{stdout}"
    );
    let threads = shared_threads(2, false);
    assert!(stdout.contains(&threads), "want {threads}:\n{stdout}");
    assert!(
        outputs.join("model/model.safetensors").is_file(),
        "{stdout}\n{stderr}"
    );
}

#[test]
fn a_killed_worker_stops_the_job_and_is_named() {
    let out = temp_dir("kill");
    let mut args = train_args(&out.join("outputs"), "3", "1000");
    args.extend(["--nproc-per-node", "3", "--dist-timeout", "10"].map(String::from));
    let (child, rx) = spawn(&args);
    let launcher = child.id();
    let mut seen = Vec::new();
    wait_for(
        &rx,
        &mut seen,
        "[rank 0] training resnet18",
        Duration::from_secs(120),
    );
    std::thread::sleep(Duration::from_secs(2));
    let workers = workers_of(launcher);
    assert_eq!(workers.len(), 3, "{workers:?}");
    let victim = workers.iter().find(|(_, r)| *r == 1).expect("rank 1").0;
    Command::new("kill")
        .args(["-9", &victim.to_string()])
        .status()
        .expect("kill");
    let (status, took) = finish(child, &rx, &mut seen, Duration::from_secs(60));
    let all = seen.join("\n");
    assert!(!status.success(), "{all}");
    assert!(
        took < Duration::from_secs(10 + 5 + 5),
        "took {took:?}:\n{all}"
    );
    assert!(all.contains("lost rank 1"), "{all}");
    assert!(all.contains("worker rank 1 killed by signal 9"), "{all}");
    for (pid, rank) in workers {
        assert!(!alive(pid), "rank {rank} (pid {pid}) outlived the job");
    }
}

#[test]
fn a_stranger_with_a_bad_token_is_refused_while_training_goes_on() {
    let out = temp_dir("token");
    let outputs = out.join("outputs");
    let port = free_port();
    let mut args = train_args(&outputs, "1", "30");
    args.extend(["--nproc-per-node", "2", "--master-port", &port.to_string()].map(String::from));
    let (child, rx) = spawn(&args);
    let mut seen = Vec::new();
    wait_for(
        &rx,
        &mut seen,
        "[rank 0] training resnet18",
        Duration::from_secs(120),
    );
    let mut stranger = std::net::TcpStream::connect(("127.0.0.1", port)).expect("rank 0 listens");
    Hello {
        token: "not-the-token".into(),
        rank: 1,
        world_size: 2,
        host: "intruder".into(),
        ring_port: 1,
    }
    .write(&mut stranger)
    .expect("hello sent");
    let mut garbage = std::net::TcpStream::connect(("127.0.0.1", port)).expect("rank 0 listens");
    garbage.write_all(b"GET / HTTP/1.0\r\n\r\n").expect("sent");
    let (status, _) = finish(child, &rx, &mut seen, Duration::from_secs(300));
    let all = seen.join("\n");
    assert!(status.success(), "{all}");
    assert!(all.contains("wrong or missing KILN_JOB_TOKEN"), "{all}");
    assert!(all.contains("no valid hello"), "{all}");
    assert!(all.contains("[rank 0] epoch 1/1"), "{all}");
    assert!(outputs.join("model/model.safetensors").is_file());
}

#[test]
fn a_stalled_worker_stops_the_job_after_the_timeout() {
    let out = temp_dir("stall");
    let mut args = train_args(&out.join("outputs"), "3", "1000");
    args.extend(["--nproc-per-node", "3", "--dist-timeout", "4"].map(String::from));
    let (child, rx) = spawn(&args);
    let launcher = child.id();
    let mut seen = Vec::new();
    wait_for(
        &rx,
        &mut seen,
        "[rank 0] training resnet18",
        Duration::from_secs(120),
    );
    std::thread::sleep(Duration::from_secs(1));
    let workers = workers_of(launcher);
    let victim = workers.iter().find(|(_, r)| *r == 2).expect("rank 2").0;
    Command::new("kill")
        .args(["-STOP", &victim.to_string()])
        .status()
        .expect("kill");
    let (status, took) = finish(child, &rx, &mut seen, Duration::from_secs(60));
    let all = seen.join("\n");
    assert!(!status.success(), "{all}");
    // 4 s to notice, then the launcher gives the stalled worker 4 + 5 s before killing it.
    assert!(
        took < Duration::from_secs(4 + 4 + 5 + 5),
        "took {took:?}:\n{all}"
    );
    assert!(
        all.contains("lost rank 2") && all.contains("no heartbeat for 4s"),
        "{all}"
    );
    for (pid, rank) in workers {
        assert!(!alive(pid), "rank {rank} (pid {pid}) outlived the job");
    }
}

#[test]
fn two_launchers_form_one_job_as_two_nodes() {
    let out = temp_dir("nodes");
    let outputs = out.join("outputs");
    let port = free_port().to_string();
    let launch = |node: &str| {
        let mut args = train_args(&outputs, "1", "4");
        args.extend(
            [
                "--nproc-per-node",
                "1",
                "--nnodes",
                "2",
                "--node-rank",
                node,
                "--master-addr",
                "127.0.0.1",
                "--master-port",
                &port,
            ]
            .map(String::from),
        );
        Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args(&args)
            .current_dir(ROOT)
            .env("KILN_JOB_TOKEN", "two-nodes-token")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kiln starts")
    };
    let (node0, node1) = (launch("0"), launch("1"));
    let (o0, o1) = (
        node0.wait_with_output().expect("node 0"),
        node1.wait_with_output().expect("node 1"),
    );
    let all = format!(
        "{}\n{}\n{}\n{}",
        text(&o0.stdout),
        text(&o0.stderr),
        text(&o1.stdout),
        text(&o1.stderr)
    );
    assert!(o0.status.success() && o1.status.success(), "{all}");
    assert!(text(&o0.stdout).contains("[rank 0] epoch 1/1"), "{all}");
    assert!(outputs.join("model/model.safetensors").is_file(), "{all}");
    // Without rank 0's address, or without a shared token, a multi-node launcher refuses.
    let mut args = train_args(&outputs, "1", "1");
    args.extend(["--nproc-per-node", "1", "--nnodes", "2"].map(String::from));
    let o = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(&args)
        .current_dir(ROOT)
        .env("KILN_JOB_TOKEN", "t")
        .output()
        .expect("kiln runs");
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("--master-addr"),
        "{}",
        text(&o.stderr)
    );
    args.extend(["--master-addr", "127.0.0.1"].map(String::from));
    let o = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(&args)
        .current_dir(ROOT)
        .env_remove("KILN_JOB_TOKEN")
        .output()
        .expect("kiln runs");
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("KILN_JOB_TOKEN"),
        "{}",
        text(&o.stderr)
    );
}
