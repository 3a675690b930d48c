//! `kiln train --nproc-per-node N`, as torchrun: starts N workers of this node with the
//! distributed contract's variables, forwards their output line by line with a rank prefix,
//! and when one fails gives the others the timeout to stop on their own before killing them.
//! The launcher forwards its workers' output; that is its job, so it writes to the terminal.

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use rand::RngCore;

use crate::dist::env::{DEFAULT_PORT, DEFAULT_TIMEOUT};
use crate::env;
use crate::error::EngineError;
use crate::train::threads::threads_per_worker;

/// Where and how many workers to start.
#[derive(Debug, Clone)]
pub struct LaunchConfig {
    /// The worker program (kiln itself).
    pub program: PathBuf,
    /// Its arguments, without the launcher's own flags.
    pub args: Vec<OsString>,
    /// Workers on this node.
    pub nproc_per_node: usize,
    /// Nodes in the job.
    pub nnodes: usize,
    /// This node's index.
    pub node_rank: usize,
    /// Rank 0's host (default 127.0.0.1 for one node).
    pub master_addr: Option<String>,
    /// Rank 0's port (default: a free port for one node, 29500 for several).
    pub master_port: Option<u16>,
    /// How long a silent worker is waited for.
    pub timeout: Duration,
    /// Prefix each line of a worker's output with `[rank N] ` (off: passed through as is).
    pub prefix_output: bool,
}

/// The most workers one node starts: enough for any machine, few enough that a typo
/// (`--nproc-per-node 100000`) is refused at once instead of forking until the system says no.
pub const MAX_WORKERS_PER_NODE: usize = 1024;

impl LaunchConfig {
    /// One node of `nproc` workers running `program args`.
    pub fn local(program: PathBuf, args: Vec<OsString>, nproc: usize) -> Self {
        Self {
            program,
            args,
            nproc_per_node: nproc,
            nnodes: 1,
            node_rank: 0,
            master_addr: None,
            master_port: None,
            timeout: DEFAULT_TIMEOUT,
            prefix_output: true,
        }
    }
}

/// How the workers ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchOutcome {
    /// `(rank, what happened)` for each worker that did not succeed, first failure first.
    pub failures: Vec<(usize, String)>,
}

impl LaunchOutcome {
    /// Every worker succeeded.
    pub fn success(&self) -> bool {
        self.failures.is_empty()
    }
}

fn describe(status: ExitStatus) -> String {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(signal) = status.signal() {
            return format!("killed by signal {signal}");
        }
    }
    match status.code() {
        Some(code) => format!("exited with code {code}"),
        None => "ended".into(),
    }
}

fn forward(source: impl Read + Send + 'static, prefix: String, to_stderr: bool) {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(source);
        let mut line = Vec::new();
        while matches!(reader.read_until(b'\n', &mut line), Ok(n) if n > 0) {
            let mut out: Box<dyn Write> = if to_stderr {
                Box::new(std::io::stderr().lock())
            } else {
                Box::new(std::io::stdout().lock())
            };
            let _ = out.write_all(prefix.as_bytes());
            let _ = out.write_all(&line);
            if !line.ends_with(b"\n") {
                let _ = out.write_all(b"\n");
            }
            let _ = out.flush();
            line.clear();
        }
    });
}

/// A TCP port free on this machine now (for a local rendezvous).
pub fn free_port() -> Result<u16, EngineError> {
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| EngineError::Distributed(format!("no free port for the rendezvous: {e}")))
}

fn spawn_worker(
    config: &LaunchConfig,
    local_rank: usize,
    env: &[(String, String)],
) -> std::io::Result<Child> {
    let n = config.nproc_per_node;
    let rank = config.node_rank * n + local_rank;
    let mut command = Command::new(&config.program);
    command
        .args(&config.args)
        .envs(env.iter().cloned())
        .env("RANK", rank.to_string())
        .env("LOCAL_RANK", local_rank.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: prctl is async-signal-safe; it only asks the kernel to kill the worker when
        // the launcher dies, so no worker outlives a killed launcher.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
    }
    command.spawn()
}

/// Starts this node's workers and waits for them. A failed worker stops the job: the others
/// get `timeout` plus a grace period to exit (they learn of the loss through the ring) and are
/// killed after it.
pub fn launch(config: &LaunchConfig) -> Result<LaunchOutcome, EngineError> {
    let env = worker_env(config)?;
    let children = spawn_all(config, &env)?;
    Ok(supervise(config, children))
}

/// The variables every worker of this node gets (each adds its own `RANK` and `LOCAL_RANK`).
fn worker_env(config: &LaunchConfig) -> Result<Vec<(String, String)>, EngineError> {
    let n = config.nproc_per_node;
    if !(1..=MAX_WORKERS_PER_NODE).contains(&n) {
        return Err(EngineError::BadOption {
            option: "nproc_per_node",
            value: n.to_string(),
            expected: format!("1 to {MAX_WORKERS_PER_NODE} workers on a node"),
        });
    }
    if config.node_rank >= config.nnodes.max(1) {
        return Err(EngineError::BadOption {
            option: "node_rank",
            value: config.node_rank.to_string(),
            expected: format!("below --nnodes {}", config.nnodes),
        });
    }
    let multi_node = config.nnodes > 1;
    if multi_node && config.master_addr.is_none() {
        return Err(EngineError::BadOption {
            option: "master_addr",
            value: "unset".into(),
            expected: "rank 0's host name or address (--master-addr) for a multi-node job".into(),
        });
    }
    let token = match std::env::var(env::JOB_TOKEN) {
        Ok(t) if !t.is_empty() => t,
        _ if multi_node => {
            return Err(EngineError::BadOption {
                option: env::JOB_TOKEN,
                value: "unset".into(),
                expected: "the same secret exported on every node of a multi-node job".into(),
            });
        }
        _ => {
            let mut bytes = [0u8; 16];
            rand::rng().fill_bytes(&mut bytes);
            bytes.iter().map(|b| format!("{b:02x}")).collect()
        }
    };
    let port = match config.master_port {
        Some(p) => p,
        None if multi_node => DEFAULT_PORT,
        None => free_port()?,
    };
    let mut vars = vec![
        (
            "WORLD_SIZE".to_string(),
            (n * config.nnodes.max(1)).to_string(),
        ),
        ("LOCAL_WORLD_SIZE".to_string(), n.to_string()),
        (
            "MASTER_ADDR".to_string(),
            config
                .master_addr
                .clone()
                .unwrap_or_else(|| "127.0.0.1".into()),
        ),
        ("MASTER_PORT".to_string(), port.to_string()),
        (env::JOB_TOKEN.to_string(), token),
        (
            env::DIST_TIMEOUT.to_string(),
            config.timeout.as_secs_f64().to_string(),
        ),
    ];
    // Workers on one machine share its cores rather than each taking all of them.
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let threads = threads_per_worker(n);
        vars.push(("RAYON_NUM_THREADS".into(), threads.to_string()));
    }
    Ok(vars)
}

/// Starts every worker of this node with its output forwarded under a rank prefix; if one
/// cannot start, those already started are killed.
fn spawn_all(
    config: &LaunchConfig,
    env: &[(String, String)],
) -> Result<Vec<Option<Child>>, EngineError> {
    let n = config.nproc_per_node.max(1);
    let mut children: Vec<Option<Child>> = Vec::with_capacity(n);
    for local in 0..n {
        match spawn_worker(config, local, env) {
            Ok(mut child) => {
                let rank = config.node_rank * n + local;
                let prefix = if config.prefix_output {
                    format!("[rank {rank}] ")
                } else {
                    String::new()
                };
                if let Some(out) = child.stdout.take() {
                    forward(out, prefix.clone(), false);
                }
                if let Some(err) = child.stderr.take() {
                    forward(err, prefix, true);
                }
                children.push(Some(child));
            }
            Err(e) => {
                for mut c in children.into_iter().flatten() {
                    let _ = c.kill();
                    let _ = c.wait();
                }
                return Err(EngineError::Distributed(format!(
                    "cannot start {}: {e}",
                    config.program.display()
                )));
            }
        }
    }
    Ok(children)
}

/// Waits for every worker; after the first failure the others have the timeout and a grace
/// period to stop before they are killed.
fn supervise(config: &LaunchConfig, mut children: Vec<Option<Child>>) -> LaunchOutcome {
    let n = children.len();
    let mut failures = Vec::new();
    let mut kill_at: Option<Instant> = None;
    while children.iter().any(Option::is_some) {
        for (local, slot) in children.iter_mut().enumerate() {
            let Some(child) = slot else { continue };
            let rank = config.node_rank * n + local;
            match child.try_wait() {
                Ok(Some(status)) => {
                    if !status.success() {
                        failures.push((rank, describe(status)));
                        kill_at.get_or_insert(
                            Instant::now() + config.timeout + Duration::from_secs(5),
                        );
                    }
                    *slot = None;
                }
                Ok(None) => {}
                Err(e) => {
                    failures.push((rank, format!("cannot be waited for: {e}")));
                    *slot = None;
                }
            }
        }
        if kill_at.is_some_and(|t| Instant::now() >= t) {
            for (local, slot) in children.iter_mut().enumerate() {
                if let Some(mut child) = slot.take() {
                    let _ = child.kill();
                    let _ = child.wait();
                    failures.push((
                        config.node_rank * n + local,
                        "killed by the launcher after another rank failed".into(),
                    ));
                }
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // Let the forwarding threads print the last lines.
    std::thread::sleep(Duration::from_millis(100));
    LaunchOutcome { failures }
}
