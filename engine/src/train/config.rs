//! `TrainConfig`: every option of `kiln train` (and of a job file's `[train]` table, in
//! snake_case), with the designer module's defaults.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::data::Augment;

/// Learning-rate schedule after warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    /// The base rate throughout.
    Constant,
    /// Multiply by `gamma` every `step_size` epochs.
    Step,
    /// Cosine from the base rate to zero over the remaining epochs.
    Cosine,
    /// `(1 - t)^power` from the base rate to zero, `power` 0.9.
    Poly,
}

impl std::str::FromStr for Schedule {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "constant" => Ok(Schedule::Constant),
            "step" => Ok(Schedule::Step),
            "cosine" => Ok(Schedule::Cosine),
            "poly" => Ok(Schedule::Poly),
            other => Err(format!(
                "'{other}' (expected constant, step, cosine or poly)"
            )),
        }
    }
}

/// What early stopping watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Monitor {
    /// Validation loss, lower is better.
    ValLoss,
    /// Validation top-1 accuracy, higher is better.
    ValAcc,
}

impl std::str::FromStr for Monitor {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "val_loss" => Ok(Monitor::ValLoss),
            "val_acc" => Ok(Monitor::ValAcc),
            other => Err(format!("'{other}' (expected val_loss or val_acc)")),
        }
    }
}

/// Everything a training run needs to know. `Default` is `kiln train` with no arguments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// A directory with `train/` and `val/` image folders.
    pub data: Option<PathBuf>,
    /// The training image folder (instead of `data`).
    pub train: Option<PathBuf>,
    /// The validation image folder (instead of `data`).
    pub val: Option<PathBuf>,
    /// torchvision architecture name.
    pub arch: String,
    /// torchvision weights to start from (the classifier is replaced for the new classes).
    pub pretrained: Option<PathBuf>,
    /// Train only the classifier.
    pub freeze_backbone: bool,
    /// Epochs at most.
    pub epochs: usize,
    /// Images per step (per process in distributed runs).
    pub batch_size: usize,
    /// Base learning rate.
    pub lr: f64,
    /// Learning rate of the classifier head (default: `lr`).
    pub head_lr: Option<f64>,
    /// SGD momentum.
    pub momentum: f64,
    /// SGD dampening.
    pub dampening: f64,
    /// L2 weight decay.
    pub weight_decay: f64,
    /// Nesterov momentum.
    pub nesterov: bool,
    /// Epochs of linear warm-up from near zero to `lr`.
    pub warmup_epochs: usize,
    /// Schedule after warm-up.
    pub schedule: Schedule,
    /// Epochs between decays of the step schedule.
    pub step_size: usize,
    /// Decay factor of the step schedule.
    pub gamma: f64,
    /// Seed of initialisation, shuffling and augmentation.
    pub seed: u64,
    /// Epochs without improvement before stopping.
    pub patience: usize,
    /// Smallest change that counts as an improvement.
    pub min_delta: f64,
    /// Metric early stopping watches.
    pub monitor: Monitor,
    /// Side of the square training images (default: chosen from the data, see
    /// `Trainer::image_size`).
    pub image_size: Option<u32>,
    /// Training augmentation.
    pub augment: Augment,
    /// `auto`, `cpu`, `wgpu` or `cuda`.
    pub device: String,
    /// Decode threads (default: the cores available).
    pub workers: Option<usize>,
    /// Skip undecodable images instead of failing.
    pub skip_bad_images: bool,
    /// Where `model/`, `checkpoints/` and `curves.png` go; `logs/` goes beside it.
    pub output_dir: PathBuf,
    /// Continue the run whose output directory (or checkpoint) this is.
    pub resume: Option<PathBuf>,
    /// Stop each epoch after this many steps (for quick runs and benchmarks).
    pub max_steps_per_epoch: Option<usize>,
    /// DenseNet only: recompute concatenations, BN and ReLU in backward instead of storing
    /// them (torchvision's `memory_efficient`), through gradient checkpointing.
    pub memory_efficient: bool,
    /// Distributed runs: multiply `lr` (and `head_lr`) by the number of ranks, as Horovod
    /// recommends for a global batch that grows with them.
    pub scale_lr: bool,
    /// Distributed runs: gradient fusion bucket size in MiB (Horovod's fusion threshold).
    pub bucket_mb: f64,
    /// Distributed runs: send gradients as f16 (half the bytes, Horovod's fp16 compression).
    pub fp16_allreduce: bool,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            data: None,
            train: None,
            val: None,
            arch: "resnet18".into(),
            pretrained: None,
            freeze_backbone: false,
            epochs: 5,
            batch_size: 16,
            lr: 0.001,
            head_lr: None,
            momentum: 0.9,
            dampening: 0.0,
            weight_decay: 0.0,
            nesterov: false,
            warmup_epochs: 0,
            schedule: Schedule::Constant,
            step_size: 30,
            gamma: 0.1,
            seed: 1,
            patience: 3,
            min_delta: 0.0,
            monitor: Monitor::ValLoss,
            image_size: None,
            augment: Augment::Standard,
            device: "auto".into(),
            workers: None,
            skip_bad_images: false,
            output_dir: PathBuf::from("outputs"),
            resume: None,
            max_steps_per_epoch: None,
            memory_efficient: false,
            scale_lr: false,
            bucket_mb: 64.0,
            fp16_allreduce: false,
        }
    }
}
