//! `kiln train`: flags over a job file's `[train]` table (or the defaults) make a `TrainConfig`,
//! checked by its one `validate()`; then the launcher, or one worker of the engine's trainer.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use kiln_engine::config::{DeviceKind, Monitor, Precision, Schedule, parse_choice};
use kiln_engine::data::Augment;
use kiln_engine::dist::launcher::{self, LaunchConfig};
use kiln_engine::dist::rendezvous::Warn;
use kiln_engine::dist::{RingAllReduce, WorldInfo};
use kiln_engine::models::Arch;
use kiln_engine::train::progress::Progress;
use kiln_engine::train::threads::shared_threads;
use kiln_engine::train::{TrainConfig, Trainer};
use kiln_runs::JobSpec;
use serde::Serialize;

/// Arguments of `kiln train`; every one given overrides the job file's value. They carry no
/// defaults of their own: those are `TrainConfig::default()`'s, shown by [`with_defaults`].
/// Each is named as the `TrainConfig` field it sets (the launcher's are skipped).
#[derive(Args, Debug, Default, Serialize)]
pub struct TrainArgs {
    /// A job file whose `[train]` table gives defaults for these flags.
    #[arg(long)]
    #[serde(skip)]
    job: Option<PathBuf>,
    /// A directory with train/ and val/ image folders (default: the bundled Fashion-MNIST subset).
    #[arg(long)]
    data: Option<PathBuf>,
    /// The training image folder (with --val).
    #[arg(long)]
    train: Option<PathBuf>,
    /// The validation image folder (with --train).
    #[arg(long)]
    val: Option<PathBuf>,
    /// torchvision architecture name.
    #[arg(long, value_parser = parse_choice::<Arch>)]
    arch: Option<Arch>,
    /// torchvision weights (.pth or .safetensors) to start from; the head is replaced.
    #[arg(long)]
    pretrained: Option<PathBuf>,
    /// Train only the classifier head.
    #[arg(long)]
    freeze_backbone: bool,
    /// Maximum epochs.
    #[arg(long, allow_negative_numbers = true)]
    epochs: Option<usize>,
    /// Images per step (per worker).
    #[arg(long, allow_negative_numbers = true)]
    batch_size: Option<usize>,
    /// Learning rate.
    #[arg(long, allow_negative_numbers = true)]
    lr: Option<f64>,
    /// Learning rate of the classifier head (default: --lr).
    #[arg(long, allow_negative_numbers = true)]
    head_lr: Option<f64>,
    /// SGD momentum.
    #[arg(long, allow_negative_numbers = true)]
    momentum: Option<f64>,
    /// SGD dampening.
    #[arg(long, allow_negative_numbers = true)]
    dampening: Option<f64>,
    /// L2 weight decay.
    #[arg(long, allow_negative_numbers = true)]
    weight_decay: Option<f64>,
    /// Nesterov momentum.
    #[arg(long)]
    nesterov: bool,
    /// Epochs of linear learning-rate warm-up.
    #[arg(long, allow_negative_numbers = true)]
    warmup_epochs: Option<usize>,
    /// constant, step, cosine or poly.
    #[arg(long, value_parser = parse_choice::<Schedule>)]
    schedule: Option<Schedule>,
    /// Epochs between decays of the step schedule.
    #[arg(long, allow_negative_numbers = true)]
    step_size: Option<usize>,
    /// Decay factor of the step schedule.
    #[arg(long, allow_negative_numbers = true)]
    gamma: Option<f64>,
    /// Seed of initialisation, shuffling and augmentation.
    #[arg(long, allow_negative_numbers = true)]
    seed: Option<u64>,
    /// Epochs without improvement before stopping early.
    #[arg(long, allow_negative_numbers = true)]
    patience: Option<usize>,
    /// Smallest improvement that counts.
    #[arg(long, allow_negative_numbers = true)]
    min_delta: Option<f64>,
    /// val_loss or val_acc.
    #[arg(long, value_parser = parse_choice::<Monitor>)]
    monitor: Option<Monitor>,
    /// Square image side (default: from the data, 32 to 224).
    #[arg(long, allow_negative_numbers = true)]
    image_size: Option<u32>,
    /// standard, flip or none.
    #[arg(long, value_parser = parse_choice::<Augment>)]
    augment: Option<Augment>,
    /// auto, cpu, wgpu, cuda or vulkan (auto: CUDA, else a hardware GPU, else the CPU; vulkan:
    /// SPIR-V, in a `--features vulkan` build).
    #[arg(long, value_parser = parse_choice::<DeviceKind>)]
    device: Option<DeviceKind>,
    /// auto, f32, tf32, bf16 or f16: the convolutions' and classifier's arithmetic, as
    /// torch.autocast (auto: bf16 on CUDA, f16 on wgpu, f32 on the CPU).
    #[arg(long, value_parser = parse_choice::<Precision>)]
    precision: Option<Precision>,
    /// Decode threads (default: the compute threads).
    #[arg(long, allow_negative_numbers = true)]
    workers: Option<usize>,
    /// Compute threads, one pool for the GEMMs and every other op (default: the cores this
    /// process may use, shared among the workers on this machine).
    #[arg(long, allow_negative_numbers = true)]
    threads: Option<usize>,
    /// Skip images that do not decode, and count them.
    #[arg(long)]
    skip_bad_images: bool,
    /// Where model/, checkpoints/ and curves.png go (logs/ beside it).
    #[arg(long)]
    output_dir: Option<PathBuf>,
    /// Continue the run in this output directory (or this checkpoint).
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Stop each epoch after this many steps.
    #[arg(long, allow_negative_numbers = true)]
    max_steps_per_epoch: Option<usize>,
    /// DenseNet: recompute concatenations and BN in backward to save memory.
    #[arg(long)]
    memory_efficient: bool,
    /// Start N workers on this node (like torchrun) and forward their output.
    #[arg(long, allow_negative_numbers = true)]
    #[serde(skip)]
    nproc_per_node: Option<usize>,
    /// Nodes in a multi-node job (with --nproc-per-node).
    #[arg(long, default_value_t = 1)]
    #[serde(skip)]
    nnodes: usize,
    /// This node's index, from 0 (with --nproc-per-node).
    #[arg(long, default_value_t = 0)]
    #[serde(skip)]
    node_rank: usize,
    /// Rank 0's host (with --nproc-per-node; default 127.0.0.1).
    #[arg(long)]
    #[serde(skip)]
    master_addr: Option<String>,
    /// Rank 0's port (with --nproc-per-node; default a free port on one node, 29500 on several).
    #[arg(long, allow_negative_numbers = true)]
    #[serde(skip)]
    master_port: Option<u16>,
    /// Seconds a dead or silent worker is waited for before the job stops (default 30).
    #[arg(long, allow_negative_numbers = true)]
    #[serde(skip)]
    dist_timeout: Option<f64>,
    /// Multiply the learning rate by the number of workers (Horovod's recommendation).
    #[arg(long)]
    scale_lr: bool,
    /// Gradient fusion bucket in MiB.
    #[arg(long, allow_negative_numbers = true)]
    bucket_mb: Option<f64>,
    /// Send gradients as f16 between workers.
    #[arg(long)]
    fp16_allreduce: bool,
}

/// `kiln train`'s help with each option's default appended, read from `TrainConfig::default()`.
pub fn with_defaults(train: clap::Command) -> clap::Command {
    let Ok(toml::Value::Table(defaults)) = toml::Value::try_from(TrainConfig::default()) else {
        return train;
    };
    let mut train = train;
    for (key, value) in &defaults {
        let shown = match value {
            toml::Value::Boolean(false) => continue,
            toml::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        if train.get_arguments().any(|a| a.get_id() == key.as_str()) {
            train = train.mut_arg(key, |arg| {
                let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
                arg.help(format!("{help} [default: {shown}]"))
            });
        }
    }
    train
}

/// The flags given, over the job file's `[train]` table (validated, paths relative to the job
/// file) or the defaults, then checked: a bad value is refused naming its flag.
pub fn config(args: &TrainArgs) -> Result<TrainConfig> {
    let base = match &args.job {
        Some(job) => JobSpec::load(job)?.train,
        None => TrainConfig::default(),
    };
    // A TOML value tree, not JSON: it keeps NaN and infinities (which JSON turns into null),
    // so `--lr NaN` reaches `validate` instead of vanishing.
    let mut merged = toml::Value::try_from(&base).context("the training options")?;
    let given = toml::Value::try_from(args).context("a path given on the command line")?;
    if let (Some(merged), Some(given)) = (merged.as_table_mut(), given.as_table()) {
        for (key, value) in given {
            // Switches not given are false; options not given are absent.
            if value.as_bool() != Some(false) {
                merged.insert(key.clone(), value.clone());
            }
        }
    }
    let config: TrainConfig = merged.try_into().context("the training options")?;
    if let Err(e) = config.validate() {
        bail!("{}: {}", e.flag(), e.message);
    }
    Ok(config)
}

/// Flags that belong to the launcher and are not passed on to its workers.
const LAUNCHER_FLAGS: [&str; 5] = [
    "--nproc-per-node",
    "--nnodes",
    "--node-rank",
    "--master-addr",
    "--master-port",
];

/// This process's arguments without the launcher's flags (and their values).
fn worker_args() -> Vec<OsString> {
    let mut out = Vec::new();
    let mut args = std::env::args_os().skip(1);
    while let Some(arg) = args.next() {
        let text = arg.to_string_lossy();
        if let Some(flag) = LAUNCHER_FLAGS.iter().find(|f| text.starts_with(**f)) {
            if text.len() == flag.len() {
                args.next();
                continue;
            }
            if text[flag.len()..].starts_with('=') {
                continue;
            }
        }
        out.push(arg);
    }
    out
}

/// Runs `kiln train`: a launcher with `--nproc-per-node`, else one worker, distributed when
/// the environment says so (kiln's launcher, torchrun-style variables, mpirun, srun).
pub fn run(args: TrainArgs) -> Result<ExitCode> {
    let timeout = match args.dist_timeout {
        Some(t) if t > 0.0 && t <= 86_400.0 => Some(Duration::from_secs_f64(t)),
        Some(t) => bail!("--dist-timeout {t}: expected seconds, more than 0 and at most a day"),
        None => None,
    };
    // Checked once here, before any worker starts.
    let mut config = config(&args)?;
    if let Some(nproc) = args
        .nproc_per_node
        .filter(|_| std::env::var_os("RANK").is_none())
    {
        crate::check::count("--nproc-per-node", nproc, 1, launcher::MAX_WORKERS_PER_NODE)?;
        let program = std::env::current_exe().context("cannot find the kiln executable")?;
        let mut launch = LaunchConfig::local(program, worker_args(), nproc);
        launch.nnodes = args.nnodes.max(1);
        launch.node_rank = args.node_rank;
        launch.master_addr = args.master_addr.clone();
        launch.master_port = args.master_port;
        if let Some(t) = timeout {
            launch.timeout = t;
        }
        let outcome = launcher::launch(&launch)?;
        if outcome.success() {
            return Ok(ExitCode::SUCCESS);
        }
        for (rank, what) in &outcome.failures {
            eprintln!("error: worker rank {rank} {what}");
        }
        return Ok(ExitCode::FAILURE);
    }
    let mut world = WorldInfo::from_env()?;
    if let Some(t) = timeout {
        world.timeout = t;
    }
    let rank = world.rank;
    // Workers that mpirun or srun started share the machine's cores as the launcher's do.
    if config.threads.is_none() {
        config.threads = shared_threads(world.local_world_size);
    }
    let progress = if rank == 0 {
        Progress::stdout("")
    } else {
        Progress::warnings_only()
    };
    let mut trainer = Trainer::new(config).with_progress(progress);
    if world.world_size > 1 {
        let warn: Warn = Arc::new(move |m: &str| eprintln!("warning: rank {rank}: {m}"));
        let ring = RingAllReduce::join(&world, warn)?;
        trainer = trainer.with_distributed(Box::new(ring));
    }
    trainer.fit()?;
    Ok(ExitCode::SUCCESS)
}
