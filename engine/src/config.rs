//! `TrainConfig`: every option of `kiln train` (and of a job file's `[train]` table, in
//! snake_case), typed, with its default, and one [`TrainConfig::validate`] that the command line,
//! job files and embedding programs all go through.
//!
//! The defaults are the designer module's (epochs 5, batch size 16, learning rate 0.001, seed 1,
//! patience 3); `Default` is `kiln train` with no arguments, and `kiln train --help` shows them
//! from here.

use std::path::PathBuf;

use burn::tensor::Device;
use kiln_models::Arch;
use serde::{Deserialize, Serialize};

use crate::data::Augment;
use crate::error::EngineError;

mod choice;

pub use choice::{Choice, did_you_mean, parse_choice, unknown_value};

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

impl Choice for Schedule {
    const ALL: &'static [Self] = &[
        Schedule::Constant,
        Schedule::Step,
        Schedule::Cosine,
        Schedule::Poly,
    ];

    fn name(self) -> &'static str {
        match self {
            Schedule::Constant => "constant",
            Schedule::Step => "step",
            Schedule::Cosine => "cosine",
            Schedule::Poly => "poly",
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

impl Choice for Monitor {
    const ALL: &'static [Self] = &[Monitor::ValLoss, Monitor::ValAcc];

    fn name(self) -> &'static str {
        match self {
            Monitor::ValLoss => "val_loss",
            Monitor::ValAcc => "val_acc",
        }
    }
}

impl Choice for Augment {
    const ALL: &'static [Self] = &[Augment::Standard, Augment::Flip, Augment::None];

    fn name(self) -> &'static str {
        match self {
            Augment::Standard => "standard",
            Augment::Flip => "flip",
            Augment::None => "none",
        }
    }
}

/// Where training runs (`--device`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    /// The best device this build and machine have: CUDA, else a hardware GPU through wgpu,
    /// else the CPU (never a software adapter); see [`crate::device`].
    Auto,
    /// The CPU, through burn's `flex` backend.
    #[serde(alias = "flex")]
    Cpu,
    /// A GPU through wgpu (Vulkan, Metal, DX12; a software Vulkan driver counts).
    Wgpu,
    /// An NVIDIA GPU through CUDA (builds with `--features cuda`).
    Cuda,
    /// A GPU through wgpu pinned to Vulkan, kernels compiled to SPIR-V (cooperative-matrix
    /// tensor cores in f16); builds with `--features vulkan`, which also turns `wgpu` devices
    /// on Vulkan to SPIR-V.
    Vulkan,
}

impl Choice for DeviceKind {
    const ALL: &'static [Self] = &[
        DeviceKind::Auto,
        DeviceKind::Cpu,
        DeviceKind::Wgpu,
        DeviceKind::Cuda,
        DeviceKind::Vulkan,
    ];

    fn name(self) -> &'static str {
        match self {
            DeviceKind::Auto => "auto",
            DeviceKind::Cpu => "cpu",
            DeviceKind::Wgpu => "wgpu",
            DeviceKind::Cuda => "cuda",
            DeviceKind::Vulkan => "vulkan",
        }
    }

    fn aliases() -> &'static [(&'static str, Self)] {
        &[("flex", DeviceKind::Cpu)]
    }
}

impl DeviceKind {
    /// The burn device (without autodiff); [`crate::device::open`] also says which.
    pub fn open(self) -> Result<Device, EngineError> {
        crate::device::open(self).map(|o| o.device)
    }
}

/// The arithmetic of the convolutions and the classifier (`--precision`), as `torch.autocast`
/// sets it: batch-norm statistics, the loss and the optimizer stay in f32, on f32 master
/// weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// bf16 on CUDA, f16 on wgpu, f32 on the CPU.
    Auto,
    /// f32 throughout (on CUDA burn's f32 matmuls still use TF32 tensor cores: burn 0.22 has
    /// no switch for them).
    F32,
    /// f32 tensors, TF32 matmuls: CUDA only.
    Tf32,
    /// bf16 convolutions and classifier: CUDA only (WGSL has no bf16).
    Bf16,
    /// f16 convolutions and classifier with dynamic loss scaling (GPU devices).
    F16,
}

impl Choice for Precision {
    const ALL: &'static [Self] = &[
        Precision::Auto,
        Precision::F32,
        Precision::Tf32,
        Precision::Bf16,
        Precision::F16,
    ];

    fn name(self) -> &'static str {
        match self {
            Precision::Auto => "auto",
            Precision::F32 => "f32",
            Precision::Tf32 => "tf32",
            Precision::Bf16 => "bf16",
            Precision::F16 => "f16",
        }
    }
}

impl Precision {
    /// The precision this one means on `backend` (`auto` resolved), or why `backend` cannot
    /// compute in it.
    pub fn on(self, backend: crate::device::Backend) -> Result<Precision, EngineError> {
        use crate::device::Backend;
        let refuse = |values: &str, why: &str| {
            Err(EngineError::BadOption {
                option: "precision",
                value: self.name().into(),
                expected: format!("{values} on --device {} ({why})", backend.name()),
            })
        };
        match (backend, self) {
            (_, Precision::F32) => Ok(Precision::F32),
            (Backend::Cpu, Precision::Auto) => Ok(Precision::F32),
            (Backend::Cpu, _) => refuse("auto or f32", "kiln's CPU kernels compute in f32"),
            (Backend::Cuda, Precision::Auto) => Ok(Precision::Bf16),
            (Backend::Cuda, p) => Ok(p),
            (Backend::Wgpu | Backend::Vulkan, Precision::Auto | Precision::F16) => {
                Ok(Precision::F16)
            }
            (Backend::Wgpu, _) => refuse("auto, f32 or f16", "WGSL has neither TF32 nor bf16"),
            (Backend::Vulkan, _) => refuse(
                "auto, f32 or f16",
                "kiln's SPIR-V path is tested in f32 and f16 only",
            ),
        }
    }

    /// The low precision of the convolutions and the classifier, if any.
    pub fn low(self) -> Option<burn::tensor::DType> {
        match self {
            Precision::Bf16 => Some(burn::tensor::DType::BF16),
            Precision::F16 => Some(burn::tensor::DType::F16),
            _ => None,
        }
    }
}

macro_rules! from_str_by_choice {
    ($($t:ty),*) => {$(
        impl std::str::FromStr for $t {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                parse_choice(s)
            }
        }
    )*};
}
from_str_by_choice!(Schedule, Monitor, Augment, DeviceKind, Precision);

/// Everything a training run needs to know. `Default` is `kiln train` with no arguments; each
/// field's documentation gives its default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// A directory with `train/` and `val/` image folders (default: the bundled
    /// Fashion-MNIST subset, `data/fashion-mnist-mini`).
    pub data: Option<PathBuf>,
    /// The training image folder (instead of `data`; needs `val`).
    pub train: Option<PathBuf>,
    /// The validation image folder (instead of `data`; needs `train`).
    pub val: Option<PathBuf>,
    /// torchvision architecture (default `resnet18`).
    pub arch: Arch,
    /// torchvision weights to start from; the classifier is replaced for the new classes.
    pub pretrained: Option<PathBuf>,
    /// Train only the classifier (default off).
    pub freeze_backbone: bool,
    /// Epochs at most (default 5).
    pub epochs: usize,
    /// Images per step, per process in distributed runs (default 16).
    pub batch_size: usize,
    /// Base learning rate (default 0.001).
    pub lr: f64,
    /// Learning rate of the classifier head (default: `lr`).
    pub head_lr: Option<f64>,
    /// SGD momentum (default 0.9).
    pub momentum: f64,
    /// SGD dampening (default 0).
    pub dampening: f64,
    /// L2 weight decay (default 0).
    pub weight_decay: f64,
    /// Nesterov momentum (default off).
    pub nesterov: bool,
    /// Epochs of linear warm-up from near zero to `lr` (default 0).
    pub warmup_epochs: usize,
    /// Schedule after warm-up (default `constant`).
    pub schedule: Schedule,
    /// Epochs between decays of the step schedule (default 30).
    pub step_size: usize,
    /// Decay factor of the step schedule (default 0.1).
    pub gamma: f64,
    /// Seed of initialisation, shuffling and augmentation (default 1).
    pub seed: u64,
    /// Epochs without improvement before stopping (default 3).
    pub patience: usize,
    /// Smallest change that counts as an improvement (default 0).
    pub min_delta: f64,
    /// Metric early stopping watches (default `val_loss`).
    pub monitor: Monitor,
    /// Side of the square training images (default: the data's median shorter side rounded up
    /// to a multiple of 32, between 32 and 224).
    pub image_size: Option<u32>,
    /// Training augmentation (default `standard`).
    pub augment: Augment,
    /// Where training runs (default `auto`).
    pub device: DeviceKind,
    /// Precision of the convolutions and the classifier (default `auto`: bf16 on CUDA, f16 on
    /// wgpu, f32 on the CPU).
    pub precision: Precision,
    /// Decode threads (default: the compute threads).
    pub workers: Option<usize>,
    /// Compute threads: one rayon pool that the convolutions' GEMMs and every other CPU op
    /// share (default: `RAYON_NUM_THREADS`, else the cores this process may use, read from
    /// its CPU affinity mask and cgroup quota, divided among the training processes on this
    /// machine).
    pub threads: Option<usize>,
    /// Skip undecodable images instead of failing (default off).
    pub skip_bad_images: bool,
    /// Where `model/`, `checkpoints/` and `curves.png` go; `logs/` goes beside it (default
    /// `outputs`, or `$KILN_OUTPUTS` in a run started by `kiln submit`).
    pub output_dir: PathBuf,
    /// Continue the run whose output directory (or checkpoint) this is.
    pub resume: Option<PathBuf>,
    /// Stop each epoch after this many steps (for quick runs and benchmarks).
    pub max_steps_per_epoch: Option<usize>,
    /// DenseNet only: recompute concatenations, BN and ReLU in backward instead of storing
    /// them (torchvision's `memory_efficient`), through gradient checkpointing (default off).
    pub memory_efficient: bool,
    /// Distributed runs: multiply `lr` (and `head_lr`) by the number of ranks, as Horovod
    /// recommends for a global batch that grows with them (default off).
    pub scale_lr: bool,
    /// Distributed runs: gradient fusion bucket size in MiB, Horovod's fusion threshold
    /// (default 64).
    pub bucket_mb: f64,
    /// Distributed runs: send gradients as f16, Horovod's fp16 compression (default off).
    pub fp16_allreduce: bool,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            data: None,
            train: None,
            val: None,
            arch: Arch::Resnet18,
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
            device: DeviceKind::Auto,
            precision: Precision::Auto,
            workers: None,
            threads: None,
            skip_bad_images: false,
            output_dir: PathBuf::from(DEFAULT_OUTPUT_DIR),
            resume: None,
            max_steps_per_epoch: None,
            memory_efficient: false,
            scale_lr: false,
            bucket_mb: 64.0,
            fp16_allreduce: false,
        }
    }
}

/// The default `output_dir`.
pub const DEFAULT_OUTPUT_DIR: &str = "outputs";

/// Most compute threads `threads` accepts.
pub const MAX_THREADS: usize = 1024;

/// Image sides kiln trains on.
pub const IMAGE_SIZES: std::ops::RangeInclusive<u32> = 8..=4096;

/// An option with a value it cannot take: `momentum: 1.5 is out of range; expected 0 <=
/// momentum < 1`. The command line names it `--momentum`, a job file by its line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{option}: {message}")]
pub struct ConfigError {
    /// The option, as a job file names it (`batch_size`).
    pub option: &'static str,
    /// What is wrong with its value and what was expected.
    pub message: String,
}

impl ConfigError {
    /// A value outside what the option takes.
    pub fn out_of_range(
        option: &'static str,
        value: impl std::fmt::Display,
        expected: &str,
    ) -> Self {
        Self {
            option,
            message: format!("{value} is out of range; expected {expected}"),
        }
    }

    /// The option as a command-line flag (`--batch-size`).
    pub fn flag(&self) -> String {
        format!("--{}", self.option.replace('_', "-"))
    }
}

impl TrainConfig {
    /// Checks every value against what it may be, naming the first option at fault. The
    /// trainer calls it before anything else, whatever built the config.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let at_least_one = [
            ("epochs", Some(self.epochs)),
            ("batch_size", Some(self.batch_size)),
            ("step_size", Some(self.step_size)),
            ("max_steps_per_epoch", self.max_steps_per_epoch),
        ];
        for (option, value) in at_least_one {
            if value == Some(0) {
                return Err(ConfigError::out_of_range(option, 0, "at least 1"));
            }
        }
        let positive = [
            ("lr", Some(self.lr)),
            ("head_lr", self.head_lr),
            ("gamma", Some(self.gamma)),
        ];
        for (option, value) in positive {
            if let Some(v) = value
                && !(v.is_finite() && v > 0.0)
            {
                return Err(ConfigError::out_of_range(option, v, "a positive number"));
            }
        }
        let non_negative = [
            ("weight_decay", self.weight_decay),
            ("min_delta", self.min_delta),
        ];
        for (option, v) in non_negative {
            if !(v.is_finite() && v >= 0.0) {
                return Err(ConfigError::out_of_range(option, v, "0 or more"));
            }
        }
        if !(0.0..1.0).contains(&self.momentum) {
            return Err(ConfigError::out_of_range(
                "momentum",
                self.momentum,
                "0 <= momentum < 1",
            ));
        }
        if !(0.0..=1.0).contains(&self.dampening) {
            return Err(ConfigError::out_of_range(
                "dampening",
                self.dampening,
                "0 to 1",
            ));
        }
        if let Some(s) = self.image_size
            && !IMAGE_SIZES.contains(&s)
        {
            let expected = format!("{} to {}", IMAGE_SIZES.start(), IMAGE_SIZES.end());
            return Err(ConfigError::out_of_range("image_size", s, &expected));
        }
        if let Some(w) = self.workers
            && !(1..=1024).contains(&w)
        {
            return Err(ConfigError::out_of_range(
                "workers",
                w,
                "1 to 1024 decode threads",
            ));
        }
        if let Some(t) = self.threads
            && !(1..=MAX_THREADS).contains(&t)
        {
            let expected = format!("1 to {MAX_THREADS} compute threads");
            return Err(ConfigError::out_of_range("threads", t, &expected));
        }
        if !(self.bucket_mb.is_finite() && self.bucket_mb > 0.0 && self.bucket_mb <= 65536.0) {
            return Err(ConfigError::out_of_range(
                "bucket_mb",
                self.bucket_mb,
                "more than 0 and at most 65536 MiB",
            ));
        }
        match (&self.train, &self.val) {
            (Some(_), None) => Err(ConfigError {
                option: "val",
                message: "missing; --train DIR needs --val DIR (or give --data DIR)".into(),
            }),
            (None, Some(_)) => Err(ConfigError {
                option: "train",
                message: "missing; --val DIR needs --train DIR (or give --data DIR)".into(),
            }),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_valid() {
        TrainConfig::default().validate().unwrap();
    }

    #[test]
    fn bad_values_name_the_option_and_what_it_takes() {
        let bad = |c: TrainConfig| c.validate().unwrap_err().to_string();
        let d = TrainConfig::default;
        assert_eq!(
            bad(TrainConfig {
                lr: f64::NAN,
                ..d()
            }),
            "lr: NaN is out of range; expected a positive number"
        );
        assert_eq!(
            bad(TrainConfig {
                momentum: 1.5,
                ..d()
            }),
            "momentum: 1.5 is out of range; expected 0 <= momentum < 1"
        );
        assert_eq!(
            bad(TrainConfig {
                image_size: Some(0),
                ..d()
            }),
            "image_size: 0 is out of range; expected 8 to 4096"
        );
        let e = TrainConfig {
            batch_size: 0,
            ..d()
        }
        .validate()
        .unwrap_err();
        assert_eq!(e.flag(), "--batch-size");
        assert!(
            bad(TrainConfig {
                train: Some("t".into()),
                ..d()
            })
            .starts_with("val: missing")
        );
    }
}
