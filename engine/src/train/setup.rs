//! Everything a run needs before its first step: the data (the folders the config names, or
//! the bundled Fashion-MNIST subset) and its image size, the device, the model (seeded,
//! pretrained, frozen), the loaders with this rank's samplers, the learning-rate schedule and
//! the optimizer.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use burn::tensor::Device;
use kiln_models::torchvision::{self, LoadOptions};
use kiln_models::{Arch, Model};

use crate::config::{Precision, TrainConfig};
use crate::data::transform::{IMAGENET_MEAN, IMAGENET_STD};
use crate::data::{ImageFolder, Loader, LoaderConfig, Sampler, check_same_classes};
use crate::error::EngineError;
use crate::train::progress::Progress;
use crate::train::schedule::LrSchedule;
use crate::train::sgd::{Sgd, SgdConfig};

/// burn's RNG may be process-global: model initialisation holds this so two trainers in one
/// process (tests) each get their seed's weights.
static INIT_LOCK: Mutex<()> = Mutex::new(());

/// One split's images, loader and this rank's sampler.
pub(crate) struct Split {
    /// The image folder.
    pub folder: ImageFolder,
    /// Decodes and batches it.
    pub loader: Loader,
    /// Which of its images this rank reads.
    pub sampler: Sampler,
}

/// A run ready to train.
pub(crate) struct Setup {
    /// The architecture.
    pub arch: Arch,
    /// Class names in label order.
    pub classes: Vec<String>,
    /// Side of the square images.
    pub image_size: u32,
    /// The training device, with autodiff.
    pub device: Device,
    /// Which device it is, for the start line (`auto: cpu (...)`, `cuda:0 (...)`).
    pub device_name: String,
    /// The precision of the convolutions and the classifier there (`auto` resolved).
    pub precision: Precision,
    /// The optimizer, without state.
    pub sgd: Sgd,
    /// The learning rate at each step.
    pub schedule: LrSchedule,
    /// The classifier head's learning rate over the backbone's.
    pub head_ratio: f64,
    /// Training images.
    pub train: Split,
    /// Validation images.
    pub val: Split,
    /// Optimizer steps an epoch on this rank.
    pub steps_per_epoch: usize,
}

impl Setup {
    /// Reads the data and readies everything around the model for rank `rank` of `world`;
    /// returns it with the model, initialised (or pretrained) and not yet replicated.
    pub fn new(
        c: &TrainConfig,
        rank: usize,
        world: usize,
        progress: &Progress,
    ) -> Result<(Self, Model), EngineError> {
        let (train_set, val_set) = folders(c)?;
        for warning in train_set.warnings.iter().chain(&val_set.warnings) {
            progress.warn(warning);
        }
        if train_set.is_empty() || val_set.is_empty() {
            return Err(EngineError::NotLabeledDataset(format!(
                "{} has {} and {} has {} images; both need some",
                train_set.root.display(),
                train_set.len(),
                val_set.root.display(),
                val_set.len()
            )));
        }
        let classes = train_set.classes.clone();
        let image_size = c.image_size.unwrap_or_else(|| auto_image_size(&train_set));
        let opened = crate::device::open(c.device)?;
        let precision = c.precision.on(opened.backend)?;
        let mut device = opened.device.autodiff();
        if kiln_kernels::is_flex_device(&device) {
            check_step_memory(c.arch, c.batch_size, image_size)?;
        }
        if c.memory_efficient && c.arch.is_densenet() {
            device = device.gradient_checkpointing();
        }
        let mut model = build_model(c, classes.len(), &device)?;
        if let Model::DenseNet(net) = &mut model {
            net.memory_efficient = c.memory_efficient;
        }
        // On cube devices the loader hands over bytes and the device finishes the batch.
        let raw = kiln_kernels::is_cube_device(&device);
        let train_sampler = Sampler {
            len: train_set.len(),
            world,
            rank,
            shuffle: true,
            seed: c.seed,
        };
        let val_sampler = Sampler {
            shuffle: false,
            len: val_set.len(),
            ..train_sampler
        };
        let steps_per_epoch = {
            let per_rank = train_sampler.indices(0).len().div_ceil(c.batch_size);
            c.max_steps_per_epoch.map_or(per_rank, |m| per_rank.min(m))
        };
        let base_lr = if c.scale_lr {
            c.lr * world as f64
        } else {
            c.lr
        };
        let schedule = LrSchedule {
            base: base_lr,
            warmup_epochs: c.warmup_epochs,
            schedule: c.schedule,
            step_size: c.step_size,
            gamma: c.gamma,
            epochs: c.epochs,
            steps_per_epoch,
        };
        let sgd = Sgd::new(SgdConfig {
            momentum: c.momentum,
            dampening: c.dampening,
            weight_decay: c.weight_decay,
            nesterov: c.nesterov,
        });
        let setup = Self {
            arch: c.arch,
            classes,
            image_size,
            device,
            device_name: opened.name,
            precision,
            sgd,
            schedule,
            head_ratio: c.head_lr.map_or(1.0, |h| h / c.lr),
            train: Split {
                loader: loader(c, &train_set, image_size, Some(c.augment), raw)?,
                folder: train_set,
                sampler: train_sampler,
            },
            val: Split {
                loader: loader(c, &val_set, image_size, None, raw)?,
                folder: val_set,
                sampler: val_sampler,
            },
            steps_per_epoch,
        };
        Ok((setup, model))
    }
}

/// Refuses a step that cannot fit in this machine's free memory, before it is tried (an
/// allocation that fails aborts the process). The estimate is activations and their gradients
/// per image pixel, measured on kiln's CPU kernels at 64 and 224 px (benches/README.md), plus
/// weights, gradients and momentum: coarse, so only steps well over the memory are refused.
fn check_step_memory(arch: Arch, batch: usize, image_size: u32) -> Result<(), EngineError> {
    let bytes_per_pixel = match arch {
        Arch::Resnet18 => 620.0,
        Arch::Resnet34 => 900.0,
        Arch::Resnet50 => 2100.0,
        Arch::Resnet101 => 3000.0,
        Arch::Resnet152 => 4200.0,
        Arch::Resnext50_32x4d => 2700.0,
        Arch::Resnext101_32x8d => 6000.0,
        Arch::WideResnet50_2 => 3200.0,
        Arch::WideResnet101_2 => 4800.0,
        Arch::Densenet121 => 2600.0,
        Arch::Densenet161 => 4500.0,
        Arch::Densenet169 => 3100.0,
        Arch::Densenet201 => 4000.0,
    };
    let pixels = batch as f64 * (image_size as f64).powi(2);
    let need = pixels * bytes_per_pixel;
    let Some(available) = available_memory() else {
        return Ok(());
    };
    if need > 1.5 * available {
        let gib = |b: f64| b / (1u64 << 30) as f64;
        return Err(EngineError::BadOption {
            option: "image_size",
            value: format!("{image_size} at batch size {batch}"),
            expected: format!(
                "a step that fits in memory: a {arch} step at this size needs about {:.0} GiB, \
                 and {:.1} GiB are available; lower --image-size or --batch-size",
                gib(need),
                gib(available)
            ),
        });
    }
    Ok(())
}

/// `MemAvailable` from `/proc/meminfo`, in bytes (Linux).
fn available_memory() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024.0)
}

/// The training and validation folders the config names (`data`, or `train` and `val`), or
/// the bundled dataset, scanned and checked to have the same classes.
fn folders(c: &TrainConfig) -> Result<(ImageFolder, ImageFolder), EngineError> {
    let (train, val) = match (&c.data, &c.train, &c.val) {
        (_, Some(t), Some(v)) => (t.clone(), v.clone()),
        (Some(d), _, _) => (d.join("train"), d.join("val")),
        _ => {
            let bundled = bundled_dataset().ok_or_else(|| EngineError::BadOption {
                option: "data",
                value: "(none)".into(),
                expected: "--data DIR or --train DIR --val DIR (the bundled \
                           data/fashion-mnist-mini was not found)"
                    .into(),
            })?;
            (bundled.join("train"), bundled.join("val"))
        }
    };
    let train = ImageFolder::scan(&train)?;
    if let [only] = train.classes.as_slice() {
        // One class learns nothing: every image is it, at loss 0.
        return Err(EngineError::NotLabeledDataset(format!(
            "{} has one class folder ('{only}'); a classifier needs at least 2, as \
             {}/<class>/<image>",
            train.root.display(),
            train.root.display()
        )));
    }
    let val = ImageFolder::scan(&val)?;
    check_same_classes(&train, &val)?;
    Ok((train, val))
}

/// The model: seeded initialisation, then the pretrained weights (classifier left fresh),
/// then the backbone frozen if asked.
fn build_model(c: &TrainConfig, classes: usize, device: &Device) -> Result<Model, EngineError> {
    let model = {
        let _guard = INIT_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        device.seed(c.seed);
        c.arch.init(classes, device)
    };
    let model = match &c.pretrained {
        None => model,
        Some(path) => {
            let state = torchvision::read_state_dict(path)?;
            let options = LoadOptions {
                allow_missing: false,
                skip_classifier: true,
            };
            torchvision::load_state_dict(model, state, c.arch, path, options)?
        }
    };
    Ok(if c.freeze_backbone {
        model.freeze_backbone()
    } else {
        model
    })
}

/// A loader of `folder` with the training augmentation, or the validation transform when
/// `augment` is `None`.
fn loader(
    c: &TrainConfig,
    folder: &ImageFolder,
    image_size: u32,
    augment: Option<crate::data::Augment>,
    raw: bool,
) -> Result<Loader, EngineError> {
    Loader::new(
        folder.samples.clone(),
        LoaderConfig {
            batch_size: c.batch_size,
            image_size,
            augment,
            seed: c.seed,
            // rayon's pool size honours RAYON_NUM_THREADS, which the launcher divides among
            // the workers of a machine.
            workers: c.workers.unwrap_or_else(rayon::current_num_threads),
            prefetch: 2,
            skip_bad_images: c.skip_bad_images,
            mean: IMAGENET_MEAN,
            std: IMAGENET_STD,
            raw,
        },
    )
}

/// The training image side when none is given: the median shorter side of up to 64 training
/// images, rounded up to a multiple of 32, between 32 and 224 (torchvision's 224 for photos,
/// 32 for Fashion-MNIST's 28-pixel images).
pub fn auto_image_size(folder: &ImageFolder) -> u32 {
    let step = (folder.len() / 64).max(1);
    let mut sides: Vec<u32> = folder
        .samples
        .iter()
        .step_by(step)
        .take(64)
        .filter_map(|(p, _)| image::image_dimensions(p).ok())
        .map(|(w, h)| w.min(h))
        .collect();
    sides.sort_unstable();
    let median = sides.get(sides.len() / 2).copied().unwrap_or(224);
    median.div_ceil(32).saturating_mul(32).clamp(32, 224)
}

/// The bundled Fashion-MNIST subset, looked for under the working directory and beside the
/// crate's source.
pub fn bundled_dataset() -> Option<PathBuf> {
    let rel = Path::new("data/fashion-mnist-mini");
    [
        PathBuf::from(rel),
        Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel),
    ]
    .into_iter()
    .find(|p| p.join("train").is_dir())
}
