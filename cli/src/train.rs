//! `kiln train`: flags (or a job file's `[train]` table) to a `TrainConfig`, then the engine's
//! trainer.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;
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
}

/// The job file's `[train]` table, read with the same names as the flags (snake_case).
fn job_train_table(path: &PathBuf) -> Result<TrainConfig> {
    #[derive(serde::Deserialize)]
    struct Job {
        #[serde(default)]
        train: Option<toml::Value>,
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let job: Job =
        toml::from_str(&text).with_context(|| format!("{} is not valid TOML", path.display()))?;
    let table = job.train.unwrap_or(toml::Value::Table(Default::default()));
    let config: TrainConfig = table
        .try_into()
        .with_context(|| format!("{}: bad [train] table", path.display()))?;
    let base = path.parent().map(PathBuf::from).unwrap_or_default();
    let rel = |p: Option<PathBuf>| p.map(|p| if p.is_relative() { base.join(p) } else { p });
    Ok(TrainConfig {
        data: rel(config.data.clone()),
        train: rel(config.train.clone()),
        val: rel(config.val.clone()),
        pretrained: rel(config.pretrained.clone()),
        ..config
    })
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
    if let Some(outputs) =
        std::env::var_os("KILN_OUTPUTS").filter(|_| c.output_dir == std::path::Path::new("outputs"))
    {
        c.output_dir = PathBuf::from(outputs);
    }
    Ok(c)
}

/// Runs `kiln train`.
pub fn run(args: TrainArgs) -> Result<ExitCode> {
    let config = config(args)?;
    Trainer::new(config).fit()?;
    Ok(ExitCode::SUCCESS)
}
