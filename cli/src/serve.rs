//! `kiln serve MODEL`: a model directory or a registered model (`NAME[:VERSION]`) behind HTTP,
//! speaking the Open Inference Protocol (KServe v2) with dynamic batching and API keys.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::Args;
use kiln_engine::config::DeviceKind;
use kiln_engine::device::Backend;
use kiln_engine::train::threads::available_cores;
use kiln_runs as runs;
use kiln_serve::{BatchLimits, Keys, MAX_WORKERS, Notice, ServeOptions, ServedModel, auth};

/// Arguments of `kiln serve`.
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// A model directory (model.safetensors + kiln.json), or a registered model NAME[:VERSION].
    model: String,
    /// The address to listen on.
    #[arg(long, default_value = "127.0.0.1", value_parser = crate::ui::parse_host)]
    host: IpAddr,
    /// The port (0 picks a free one).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// The name clients address a model directory by (default: the directory's name).
    #[arg(long)]
    name: Option<String>,
    /// Where the model runs: auto, cpu, wgpu, cuda or vulkan (auto: CUDA, else a hardware GPU,
    /// else the CPU).
    #[arg(long, default_value = "auto")]
    device: DeviceKind,
    /// Most images in one forward pass (1 to 1024).
    #[arg(long, default_value_t = 32)]
    max_batch_size: usize,
    /// Longest a batch waits for more requests after its first, in milliseconds.
    #[arg(long, default_value_t = 5)]
    max_batch_delay_ms: u64,
    /// Model copies, each scoring batches on its own share of the cores (default: one per core
    /// this process may use on the CPU, at most 64; one on a GPU).
    #[arg(long)]
    workers: Option<usize>,
    /// The largest request body accepted, in MiB (1 to 1024); larger ones get 413.
    #[arg(long, default_value_t = 16)]
    max_body_mb: usize,
    /// Longest a request waits for the model, in milliseconds; longer ones get 503.
    #[arg(long, default_value_t = 30_000)]
    timeout_ms: u64,
    /// A file holding primary[,secondary] keys, re-read on SIGHUP (key rotation).
    #[arg(long, conflicts_with = "no_auth")]
    keys_file: Option<PathBuf>,
    /// Serve without keys (only on a loopback address).
    #[arg(long)]
    no_auth: bool,
}

/// Runs `kiln serve` until SIGTERM or Ctrl-C.
pub fn run(args: ServeArgs) -> Result<ExitCode> {
    if !(1..=1024).contains(&args.max_body_mb) {
        bail!(
            "--max-body-mb {} is out of range; expected 1 to 1024",
            args.max_body_mb
        );
    }
    if !(1..=600_000).contains(&args.timeout_ms) {
        bail!(
            "--timeout-ms {} is out of range; expected 1 to 600000",
            args.timeout_ms
        );
    }
    let model = resolve(&args.model, args.name.clone())?;
    let keys = if args.no_auth {
        None
    } else if let Some(file) = &args.keys_file {
        Some(Keys::read(file).map_err(anyhow::Error::msg)?)
    } else if let Some(text) = std::env::var(auth::KEYS_VAR).ok().filter(|t| !t.is_empty()) {
        Some(Keys::parse(&text, auth::KEYS_VAR).map_err(anyhow::Error::msg)?)
    } else {
        let keys = Keys::generate();
        println!(
            "kiln serve: key {} (generated for this run; clients send 'Authorization: Bearer \
             <key>'; set {}=primary[,secondary] or --keys-file to choose keys)",
            keys.primary,
            auth::KEYS_VAR
        );
        Some(keys)
    };
    let workers = match args.workers {
        Some(workers) => workers,
        None => default_workers(args.device)?,
    };
    let options = ServeOptions {
        host: args.host,
        port: args.port,
        device: args.device,
        limits: BatchLimits {
            max_batch_size: args.max_batch_size,
            max_batch_delay: Duration::from_millis(args.max_batch_delay_ms),
        },
        workers,
        max_body_bytes: args.max_body_mb << 20,
        timeout: Duration::from_millis(args.timeout_ms),
        keys,
        keys_file: args.keys_file,
    };
    let (name, version, dir) = (model.name.clone(), model.version.clone(), model.dir.clone());
    kiln_serve::run(model, options, move |notice| match notice {
        Notice::Listening(addr) => println!(
            "kiln serve: {name} version {version} from {} on http://{addr}/v2/models/{name} \
             (loading; SIGTERM or Ctrl-C stops it)",
            dir.display()
        ),
        Notice::Ready { took } => println!(
            "kiln serve: ready ({:.1} s to load and warm {workers} model cop{})",
            took.as_secs_f64(),
            if workers == 1 { "y" } else { "ies" }
        ),
        Notice::Keys(Ok(message)) => println!("kiln serve: {message}"),
        Notice::Keys(Err(message)) => eprintln!("warning: {message}"),
        Notice::Draining => println!("kiln serve: stopping; finishing the requests in flight"),
    })?;
    println!("kiln serve: stopped");
    Ok(ExitCode::SUCCESS)
}

/// Model copies when `--workers` is not given: one per core on the CPU, where a batch-1 forward
/// gains little from a second thread and a copy per core served 1.5x the images of one copy
/// with both cores at batch limit 1, and 1.2x at 8 (benches/README.md); one on a GPU.
fn default_workers(device: DeviceKind) -> Result<usize> {
    Ok(match kiln_engine::device::open(device)?.backend {
        Backend::Cpu => available_cores().min(MAX_WORKERS),
        Backend::Wgpu | Backend::Vulkan | Backend::Cuda => 1,
    })
}

/// `MODEL`: a model directory, else a registered `NAME[:VERSION]` served from the registry in
/// place (each file checked against its SHA-256 first).
fn resolve(model: &str, name: Option<String>) -> Result<ServedModel> {
    let path = PathBuf::from(model);
    if path.is_dir() {
        let name = match name {
            Some(name) => name,
            None => std::path::absolute(&path)?
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "model".into()),
        };
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            bail!(
                "model name '{name}' cannot be part of a URL path; give --name with letters, digits, '-', '_' or '.'"
            );
        }
        return Ok(ServedModel {
            dir: path,
            name,
            version: "1".into(),
        });
    }
    if path.exists() {
        bail!(
            "MODEL {model} is a file; expected a model directory (model.safetensors + kiln.json) or a registered NAME[:VERSION]"
        );
    }
    if model.contains(['/', '\\']) || model.starts_with('.') {
        bail!(
            "MODEL {model}: no such directory; expected a model directory or a registered NAME[:VERSION]"
        );
    }
    if name.is_some() {
        bail!("--name is for a model directory; a registered model is served under its own name");
    }
    let home = runs::kiln_home();
    let mut history = runs::RunHistory::open_to_read(&home)?;
    let (name, version, dir) = runs::ModelRegistry::new(&mut history)
        .locate(model)
        .map_err(|e| {
            anyhow::anyhow!("MODEL {model} is not a directory nor a registered model: {e}")
        })?;
    Ok(ServedModel {
        dir,
        name,
        version: version.to_string(),
    })
}
