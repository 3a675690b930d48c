//! `kiln train`: flags (or a job file's `[train]` table) to a `TrainConfig`, then the engine's
//! trainer.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use kiln_engine::dist::launcher::{self, LaunchConfig};
use kiln_engine::dist::rendezvous::Warn;
use kiln_engine::dist::{RingAllReduce, WorldInfo};
use kiln_engine::train::progress::Progress;
use kiln_engine::train::{TrainConfig, Trainer};

/// Arguments of `kiln train`; every one overrides the job file's value.
#[derive(Args, Debug, Default)]
pub struct TrainArgs {
    /// A job file whose `[train]` table gives defaults for these flags.
    #[arg(long)]
    job: Option<PathBuf>,
    /// A directory with train/ and val/ image folders (default: the bundled Fashion-MNIST subset).
    #[arg(long)]
    data: Option<PathBuf>,
    /// The training image folder.
    #[arg(long)]
    train: Option<PathBuf>,
    /// The validation image folder.
    #[arg(long)]
    val: Option<PathBuf>,
    /// torchvision architecture name (default resnet18).
    #[arg(long)]
    arch: Option<String>,
    /// torchvision weights (.pth or .safetensors) to start from; the head is replaced.
    #[arg(long)]
    pretrained: Option<PathBuf>,
    /// Train only the classifier head.
    #[arg(long)]
    freeze_backbone: bool,
    /// Maximum epochs (default 5).
    #[arg(long)]
    epochs: Option<usize>,
    /// Images per step (default 16).
    #[arg(long)]
    batch_size: Option<usize>,
    /// Learning rate (default 0.001).
    #[arg(long)]
    lr: Option<f64>,
    /// Learning rate of the classifier head (default: --lr).
    #[arg(long)]
    head_lr: Option<f64>,
    /// SGD momentum (default 0.9).
    #[arg(long)]
    momentum: Option<f64>,
    /// SGD dampening (default 0).
    #[arg(long)]
    dampening: Option<f64>,
    /// L2 weight decay (default 0).
    #[arg(long)]
    weight_decay: Option<f64>,
    /// Nesterov momentum.
    #[arg(long)]
    nesterov: bool,
    /// Epochs of linear learning-rate warm-up (default 0).
    #[arg(long)]
    warmup_epochs: Option<usize>,
    /// constant, step, cosine or poly (default constant).
    #[arg(long)]
    schedule: Option<String>,
    /// Seed (default 1).
    #[arg(long)]
    seed: Option<u64>,
    /// Epochs without improvement before stopping early (default 3).
    #[arg(long)]
    patience: Option<usize>,
    /// Smallest improvement that counts (default 0).
    #[arg(long)]
    min_delta: Option<f64>,
    /// val_loss or val_acc (default val_loss).
    #[arg(long)]
    monitor: Option<String>,
    /// Square image side (default: from the data, 32 to 224).
    #[arg(long)]
    image_size: Option<u32>,
    /// standard, flip or none (default standard).
    #[arg(long)]
    augment: Option<String>,
    /// auto, cpu, wgpu or cuda (default auto: the CPU).
    #[arg(long)]
    device: Option<String>,
    /// Decode threads (default: the cores available).
    #[arg(long)]
    workers: Option<usize>,
    /// Skip images that do not decode, and count them.
    #[arg(long)]
    skip_bad_images: bool,
    /// Where model/, checkpoints/ and curves.png go (default ./outputs; logs/ beside it).
    #[arg(long)]
    output_dir: Option<PathBuf>,
    /// Continue the run in this output directory (or this checkpoint).
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Stop each epoch after this many steps.
    #[arg(long)]
    max_steps_per_epoch: Option<usize>,
    /// DenseNet: recompute concatenations and BN in backward to save memory.
    #[arg(long)]
    memory_efficient: bool,
    /// Start N workers on this node (like torchrun) and forward their output.
    #[arg(long)]
    nproc_per_node: Option<usize>,
    /// Nodes in a multi-node job (with --nproc-per-node).
    #[arg(long, default_value_t = 1)]
    nnodes: usize,
    /// This node's index, from 0 (with --nproc-per-node).
    #[arg(long, default_value_t = 0)]
    node_rank: usize,
    /// Rank 0's host (with --nproc-per-node; default 127.0.0.1).
    #[arg(long)]
    master_addr: Option<String>,
    /// Rank 0's port (with --nproc-per-node; default a free port on one node, 29500 on several).
    #[arg(long)]
    master_port: Option<u16>,
    /// Seconds a dead or silent worker is waited for before the job stops (default 30).
    #[arg(long)]
    dist_timeout: Option<f64>,
    /// Multiply the learning rate by the number of workers (Horovod's recommendation).
    #[arg(long)]
    scale_lr: bool,
    /// Gradient fusion bucket in MiB (default 64).
    #[arg(long)]
    bucket_mb: Option<f64>,
    /// Send gradients as f16 between workers.
    #[arg(long)]
    fp16_allreduce: bool,
}

/// The job file's `[train]` table, validated as `kiln submit` validates it, paths made
/// relative to the job file.
fn job_train_table(path: &std::path::Path) -> Result<TrainConfig> {
    Ok(kiln_engine::job::JobSpec::load(path)?.train)
}

/// Merges flags over the job file (or the defaults).
pub fn config(args: TrainArgs) -> Result<TrainConfig> {
    let mut c = match &args.job {
        Some(job) => job_train_table(job)?,
        None => TrainConfig::default(),
    };
    macro_rules! set {
        ($($field:ident),*) => {$(if let Some(v) = args.$field { c.$field = v.into(); })*};
    }
    set!(
        arch,
        epochs,
        batch_size,
        lr,
        momentum,
        dampening,
        weight_decay,
        warmup_epochs,
        seed,
        patience,
        min_delta,
        output_dir
    );
    macro_rules! set_opt {
        ($($field:ident),*) => {$(if args.$field.is_some() { c.$field = args.$field; })*};
    }
    set_opt!(
        data,
        train,
        val,
        pretrained,
        head_lr,
        image_size,
        workers,
        resume,
        max_steps_per_epoch
    );
    if let Some(mb) = args.bucket_mb {
        c.bucket_mb = mb;
    }
    if let Some(device) = args.device {
        c.device = device;
    }
    if let Some(s) = args.schedule {
        c.schedule = s.parse().map_err(|e| anyhow::anyhow!("--schedule {e}"))?;
    }
    if let Some(m) = args.monitor {
        c.monitor = m.parse().map_err(|e| anyhow::anyhow!("--monitor {e}"))?;
    }
    if let Some(a) = args.augment {
        c.augment = a.parse().map_err(|e| anyhow::anyhow!("--augment {e}"))?;
    }
    c.freeze_backbone |= args.freeze_backbone;
    c.nesterov |= args.nesterov;
    c.skip_bad_images |= args.skip_bad_images;
    c.memory_efficient |= args.memory_efficient;
    c.scale_lr |= args.scale_lr;
    c.fp16_allreduce |= args.fp16_allreduce;
    if let Some(outputs) =
        std::env::var_os("KILN_OUTPUTS").filter(|_| c.output_dir == std::path::Path::new("outputs"))
    {
        c.output_dir = PathBuf::from(outputs);
    }
    Ok(c)
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
    if let Some(nproc) = args
        .nproc_per_node
        .filter(|_| std::env::var_os("RANK").is_none())
    {
        if nproc == 0 {
            bail!("--nproc-per-node 0: expected at least 1");
        }
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
    let config = config(args)?;
    let rank = world.rank;
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
