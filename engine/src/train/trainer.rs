//! The training loop: data, model, SGD, schedule, validation, early stopping, checkpoints,
//! metrics and the final model directory. A gradient hook runs between backward and the
//! optimizer step (the distributed layer averages gradients there).

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use burn::module::Module;
use burn::optim::GradientsParams;
use burn::tensor::{Device, Int, Tensor, TensorData};
use kiln_kernels::preprocess::{RawBatch, preprocess};
use kiln_models::torchvision::{self, LoadOptions};
use kiln_models::{Arch, Model};

use crate::data::transform::{IMAGENET_MEAN, IMAGENET_STD};
use crate::data::{Batch, ImageFolder, Loader, LoaderConfig, Sampler, check_same_classes};
use crate::dist::{GradientBuckets, Transport, Wire, replicas};
use crate::error::EngineError;
use crate::model_dir::{self, ModelInfo};
use crate::train::checkpoint::{self, EpochMetrics, TrainerState};
use crate::train::config::{Monitor, TrainConfig};
use crate::train::early_stopping::{EarlyStopping, Verdict};
use crate::train::loss::{cross_entropy, cross_entropy_sum};
use crate::train::metrics::{MetricsLog, correct_top_k};
use crate::train::progress::Progress;
use crate::train::replication;
use crate::train::schedule::LrSchedule;
use crate::train::sgd::{Sgd, SgdConfig};

/// Called with the model and its gradients after backward, before the optimizer step; may
/// change the gradients (average them across ranks, say).
pub trait GradientHook: Send {
    /// Transforms one step's gradients.
    fn on_gradients(
        &mut self,
        model: &Model,
        grads: GradientsParams,
    ) -> Result<GradientsParams, EngineError>;
}

/// Why training ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// Every planned epoch ran.
    Completed,
    /// The monitored metric did not improve for `patience` epochs.
    EarlyStopping,
}

/// The result of [`Trainer::fit`].
#[derive(Debug, Clone)]
pub struct TrainSummary {
    /// Every epoch's metrics.
    pub history: Vec<EpochMetrics>,
    /// Epoch (from 1) whose weights were kept.
    pub best_epoch: usize,
    /// Why it stopped.
    pub stop_reason: StopReason,
    /// The trained model directory.
    pub model_dir: PathBuf,
    /// Class names in label order.
    pub classes: Vec<String>,
    /// Images skipped because they did not decode (`skip_bad_images`).
    pub skipped_images: usize,
}

impl TrainSummary {
    /// The kept epoch's metrics.
    pub fn best(&self) -> &EpochMetrics {
        &self.history[self.best_epoch - 1]
    }
}

/// Trains one model as `TrainConfig` says.
///
/// ```no_run
/// use kiln_engine::train::{TrainConfig, Trainer};
/// # fn main() -> Result<(), kiln_engine::EngineError> {
/// let config = TrainConfig {
///     data: Some("data/fashion-mnist-mini".into()),
///     epochs: 2,
///     output_dir: std::env::temp_dir().join("kiln-doc/outputs"),
///     ..TrainConfig::default()
/// };
/// let summary = Trainer::new(config).fit()?;
/// println!("val acc {:.3}", summary.best().val_acc);
/// # Ok(()) }
/// ```
pub struct Trainer {
    config: TrainConfig,
    progress: Progress,
    hook: Option<Box<dyn GradientHook>>,
    dist: Option<Box<dyn Transport>>,
    rank: usize,
    world: usize,
    run_id: String,
}

/// burn's RNG may be process-global: model initialisation holds this so two trainers in one
/// process (tests) each get their seed's weights.
static INIT_LOCK: Mutex<()> = Mutex::new(());

/// The device named by `--device`.
pub fn device_by_name(name: &str) -> Result<Device, EngineError> {
    match name {
        "auto" | "cpu" | "flex" => Ok(Device::flex()),
        "wgpu" => Ok(Device::wgpu(Default::default())),
        #[cfg(feature = "cuda")]
        "cuda" => Ok(Device::cuda(0)),
        #[cfg(not(feature = "cuda"))]
        "cuda" => Err(EngineError::BadOption {
            option: "device",
            value: name.into(),
            expected: "cpu or wgpu: this build has no CUDA support (build with --features cuda)"
                .into(),
        }),
        other => Err(EngineError::BadOption {
            option: "device",
            value: other.into(),
            expected: "auto, cpu, wgpu or cuda".into(),
        }),
    }
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

impl Trainer {
    /// A single-process trainer reporting to stdout.
    pub fn new(config: TrainConfig) -> Self {
        Self {
            config,
            progress: Progress::stdout(""),
            hook: None,
            dist: None,
            rank: 0,
            world: 1,
            run_id: std::env::var("KILN_RUN_ID").unwrap_or_else(|_| "local".into()),
        }
    }

    /// Reports through `progress` instead.
    pub fn with_progress(mut self, progress: Progress) -> Self {
        self.progress = progress;
        self
    }

    /// Runs `hook` on every step's gradients.
    pub fn with_gradient_hook(mut self, hook: Box<dyn GradientHook>) -> Self {
        self.hook = Some(hook);
        self
    }

    /// Trains data-parallel over `transport`'s ranks: rank 0's initial state is broadcast,
    /// each rank reads its shard, gradients are averaged every step, metrics are summed over
    /// ranks (so early stopping decides the same everywhere) and only rank 0 writes files.
    pub fn with_distributed(mut self, transport: Box<dyn Transport>) -> Self {
        self.rank = transport.rank();
        self.world = transport.world_size();
        self.dist = Some(transport);
        self
    }

    /// This process is `rank` of `world`: it reads its shard, and only rank 0 writes files.
    pub fn with_rank(mut self, rank: usize, world: usize) -> Self {
        self.rank = rank;
        self.world = world.max(1);
        self
    }

    fn folders(&self) -> Result<(ImageFolder, ImageFolder), EngineError> {
        let c = &self.config;
        let (train, val) = match (&c.data, &c.train, &c.val) {
            (_, Some(t), Some(v)) => (t.clone(), v.clone()),
            (Some(d), None, None) => (d.join("train"), d.join("val")),
            (None, None, None) => {
                let bundled = bundled_dataset().ok_or_else(|| EngineError::BadOption {
                    option: "data",
                    value: "(none)".into(),
                    expected: "--data DIR or --train DIR --val DIR (the bundled \
                               data/fashion-mnist-mini was not found)"
                        .into(),
                })?;
                (bundled.join("train"), bundled.join("val"))
            }
            _ => {
                return Err(EngineError::BadOption {
                    option: "train/val",
                    value: "only one of them".into(),
                    expected: "both --train DIR and --val DIR, or --data DIR".into(),
                });
            }
        };
        let train = ImageFolder::scan(&train)?;
        let val = ImageFolder::scan(&val)?;
        check_same_classes(&train, &val)?;
        Ok((train, val))
    }

    fn build_model(
        &self,
        arch: Arch,
        classes: usize,
        device: &Device,
    ) -> Result<Model, EngineError> {
        let model = {
            let _guard = INIT_LOCK.lock().unwrap_or_else(|e| e.into_inner());
            device.seed(self.config.seed);
            arch.init(classes, device)
        };
        let model = match &self.config.pretrained {
            None => model,
            Some(path) => {
                let state = torchvision::read_state_dict(path)?;
                let options = LoadOptions {
                    allow_missing: false,
                    skip_classifier: true,
                };
                torchvision::load_state_dict(model, state, arch, path, options)?
            }
        };
        Ok(if self.config.freeze_backbone {
            model.freeze_backbone()
        } else {
            model
        })
    }

    /// Trains, validates every epoch, stops early or after `epochs`, restores the best
    /// epoch's weights and writes the model directory.
    pub fn fit(mut self) -> Result<TrainSummary, EngineError> {
        let result = self.run();
        if let Some(t) = self.dist.as_deref_mut() {
            match &result {
                Ok(_) => t.finish()?,
                // The other ranks stop with this rank's error instead of waiting for it.
                Err(e) => t.abort(&e.to_string()),
            }
        }
        result
    }

    /// One step's gradients after the collectives: averaged across ranks, then the hook.
    fn shared_gradients(
        &mut self,
        model: &Model,
        mut grads: GradientsParams,
        buckets: &GradientBuckets,
    ) -> Result<GradientsParams, EngineError> {
        if let Some(t) = self.dist.as_deref_mut() {
            grads = buckets.average(t, model, grads)?;
        }
        match &mut self.hook {
            Some(hook) => hook.on_gradients(model, grads),
            None => Ok(grads),
        }
    }

    fn run(&mut self) -> Result<TrainSummary, EngineError> {
        let c = self.config.clone();
        let arch: Arch = c.arch.parse()?;
        let (train_set, val_set) = self.folders()?;
        for warning in train_set.warnings.iter().chain(&val_set.warnings) {
            self.progress.warn(warning);
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
        if c.batch_size == 0 || c.epochs == 0 {
            return Err(EngineError::BadOption {
                option: "batch_size/epochs",
                value: format!("{}/{}", c.batch_size, c.epochs),
                expected: "at least 1".into(),
            });
        }
        let mut device = device_by_name(&c.device)?.autodiff();
        if c.memory_efficient && arch.is_densenet() {
            device = device.gradient_checkpointing();
        }
        let mut model = self.build_model(arch, classes.len(), &device)?;
        if let Model::DenseNet(net) = &mut model {
            net.memory_efficient = c.memory_efficient;
        }
        // rayon's pool size honours RAYON_NUM_THREADS, which the launcher divides among the
        // workers of a machine.
        let workers = c.workers.unwrap_or_else(rayon::current_num_threads);
        // On cube devices the loader hands over bytes and the device finishes the batch.
        let raw = kiln_kernels::is_cube_device(&device);
        let loader = |samples: &ImageFolder, augment| {
            Loader::new(
                samples.samples.clone(),
                LoaderConfig {
                    batch_size: c.batch_size,
                    image_size,
                    augment,
                    seed: c.seed,
                    workers,
                    prefetch: 2,
                    skip_bad_images: c.skip_bad_images,
                    mean: IMAGENET_MEAN,
                    std: IMAGENET_STD,
                    raw,
                },
            )
        };
        let train_loader = loader(&train_set, Some(c.augment))?;
        let val_loader = loader(&val_set, None)?;
        let train_sampler = Sampler {
            len: train_set.len(),
            world: self.world,
            rank: self.rank,
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
            c.lr * self.world as f64
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
        let head_ratio = c.head_lr.map_or(1.0, |h| h / c.lr);
        let mut sgd = Sgd::new(SgdConfig {
            momentum: c.momentum,
            dampening: c.dampening,
            weight_decay: c.weight_decay,
            nesterov: c.nesterov,
        });
        let outputs = c.output_dir.clone();
        let logs = std::env::var_os("KILN_LOGS")
            .map(PathBuf::from)
            .unwrap_or_else(|| sibling(&outputs, "logs"));
        let checkpoints = outputs.join("checkpoints");
        let mut state = TrainerState {
            epochs_done: 0,
            global_step: 0,
            early_stopping: EarlyStopping::new(c.monitor, c.patience, c.min_delta),
            history: Vec::new(),
            stopped_early: false,
        };
        // In a distributed run rank 0 alone reads the checkpoint and broadcasts it below.
        if let Some(resume) = c
            .resume
            .as_ref()
            .filter(|_| self.dist.is_none() || self.rank == 0)
        {
            let dir = checkpoint::latest(resume).ok_or_else(|| EngineError::BadOption {
                option: "resume",
                value: resume.display().to_string(),
                expected: "an output directory with checkpoints/epoch-N, or a checkpoint".into(),
            })?;
            let ckpt = checkpoint::load(&dir)?;
            model = torchvision::load_state_dict(
                model,
                ckpt.model,
                arch,
                &dir,
                LoadOptions::default(),
            )?;
            sgd.load_state(ckpt.optimizer, &device.clone().inner());
            state = ckpt.state;
            self.progress.info(&format!(
                "resuming from {} after epoch {}",
                dir.display(),
                state.epochs_done
            ));
        }
        let buckets = GradientBuckets {
            bucket_bytes: ((c.bucket_mb * (1 << 20) as f64) as usize).max(4),
            wire: if c.fp16_allreduce {
                Wire::F16
            } else {
                Wire::F32
            },
        };
        if let Some(t) = self.dist.as_deref_mut() {
            let plan = replication::Plan {
                train_len: train_set.len(),
                val_len: val_set.len(),
                classes: classes.len(),
                image_size: image_size as usize,
                steps_per_epoch,
            };
            let inner = device.clone().inner();
            (model, state) = replication::start_from_rank_0(
                t, model, arch, &mut sgd, state, &inner, &buckets, &plan,
            )?;
        }
        let mut metrics = if self.rank == 0 {
            Some(MetricsLog::open(
                &logs.join("metrics.jsonl"),
                &self.run_id,
                self.rank,
            )?)
        } else {
            None
        };
        self.progress.info(&format!(
            "training {arch} on {} images ({} classes), validating on {}, {image_size} px, \
             batch {}, {} steps/epoch",
            train_set.len(),
            classes.len(),
            val_set.len(),
            c.batch_size,
            steps_per_epoch
        ));
        let mut skipped = 0usize;
        while state.epochs_done < c.epochs && !state.stopped_early {
            let epoch = state.epochs_done;
            let started = Instant::now();
            model = model.set_training(true);
            self.progress
                .start_epoch(epoch + 1, c.epochs, steps_per_epoch);
            let (mut loss_sum, mut correct, mut seen) = (0.0f64, 0usize, 0usize);
            let mut lr = c.lr;
            let train_start = Instant::now();
            let batches = train_loader.batches(epoch, train_sampler.indices(epoch));
            for (step, batch) in batches.take(steps_per_epoch).enumerate() {
                let batch = batch?;
                skipped += batch.skipped.len();
                lr = schedule.lr(epoch, step);
                if batch.is_empty() {
                    // Every rank takes part in every step's collectives (the allreduce, a
                    // hook's): a batch whose images all failed to decode contributes zeros.
                    if self.dist.is_some() || self.hook.is_some() {
                        let grads =
                            self.shared_gradients(&model, GradientsParams::new(), &buckets)?;
                        model = sgd.step(model, grads, lr, lr * head_ratio);
                        state.global_step += 1;
                    }
                    continue;
                }
                let (x, y) = to_device(&batch, image_size, &device);
                let logits = model.forward(x);
                let loss = cross_entropy(logits.clone(), y);
                let loss_value: f32 = loss.clone().into_scalar();
                let grads = GradientsParams::from_grads(loss.backward(), &model);
                let grads = self.shared_gradients(&model, grads, &buckets)?;
                model = sgd.step(model, grads, lr, lr * head_ratio);
                let logits = logits.into_data().try_to_vec::<f32>().unwrap_or_default();
                correct += correct_top_k(&logits, &batch.labels, classes.len(), 1);
                loss_sum += loss_value as f64 * batch.len() as f64;
                seen += batch.len();
                state.global_step += 1;
                let rate = seen as f64 / train_start.elapsed().as_secs_f64();
                self.progress
                    .step(epoch + 1, c.epochs, loss_sum / seen as f64, rate);
            }
            let train_time = train_start.elapsed().as_secs_f64();
            if let Some(t) = self.dist.as_deref_mut() {
                let total = replicas::sum_across(t, &[loss_sum, correct as f64, seen as f64])?;
                (loss_sum, correct, seen) = (total[0], total[1] as usize, total[2] as usize);
            }
            let images_per_s = seen as f64 / train_time;
            let eval = model.valid();
            let (mut val_loss, mut val_correct, mut val_top5, mut val_seen) = (0.0, 0, 0, 0);
            for batch in val_loader.batches(0, val_sampler.indices(0)) {
                let batch = batch?;
                if batch.is_empty() {
                    continue;
                }
                let (x, _) = to_device(&batch, image_size, &device.clone().inner());
                let logits = eval
                    .forward(x)
                    .into_data()
                    .try_to_vec::<f32>()
                    .unwrap_or_default();
                val_loss += cross_entropy_sum(&logits, &batch.labels, classes.len());
                val_correct += correct_top_k(&logits, &batch.labels, classes.len(), 1);
                val_top5 += correct_top_k(&logits, &batch.labels, classes.len(), 5);
                val_seen += batch.len();
            }
            if let Some(t) = self.dist.as_deref_mut() {
                let sums = [
                    val_loss,
                    val_correct as f64,
                    val_top5 as f64,
                    val_seen as f64,
                ];
                let total = replicas::sum_across(t, &sums)?;
                val_loss = total[0];
                (val_correct, val_top5, val_seen) =
                    (total[1] as usize, total[2] as usize, total[3] as usize);
            }
            let n = val_seen.max(1) as f64;
            let m = EpochMetrics {
                epoch: epoch + 1,
                train_loss: loss_sum / seen.max(1) as f64,
                train_acc: correct as f64 / seen.max(1) as f64,
                val_loss: val_loss / n,
                val_acc: val_correct as f64 / n,
                val_top5: val_top5 as f64 / n,
                images_per_s,
                lr,
                epoch_time_s: started.elapsed().as_secs_f64(),
            };
            let monitored = match c.monitor {
                Monitor::ValLoss => m.val_loss,
                Monitor::ValAcc => m.val_acc,
            };
            let verdict = state.early_stopping.update(epoch, monitored);
            state.stopped_early = verdict == Verdict::Stop;
            state.epochs_done += 1;
            state.history.push(m.clone());
            self.progress.end_epoch(&format!(
                "epoch {}/{}: train loss {:.4} acc {:.3} | val loss {:.4} acc {:.3} top5 {:.3} | \
                 {:.0} img/s, lr {:.2e}, {:.1}s{}",
                m.epoch,
                c.epochs,
                m.train_loss,
                m.train_acc,
                m.val_loss,
                m.val_acc,
                m.val_top5,
                m.images_per_s,
                m.lr,
                m.epoch_time_s,
                if verdict == Verdict::Improved {
                    " *"
                } else {
                    ""
                }
            ));
            if let Some(log) = &mut metrics {
                log.log(
                    m.epoch,
                    state.global_step,
                    "train",
                    &[
                        ("loss", m.train_loss),
                        ("acc", m.train_acc),
                        ("images_per_s", m.images_per_s),
                        ("lr", m.lr),
                        ("epoch_time_s", m.epoch_time_s),
                    ],
                )?;
                log.log(
                    m.epoch,
                    state.global_step,
                    "val",
                    &[
                        ("loss", m.val_loss),
                        ("acc", m.val_acc),
                        ("top5", m.val_top5),
                    ],
                )?;
                checkpoint::save(&checkpoints, &model, &sgd.state(), &state)?;
            }
        }
        let best_epoch = state
            .early_stopping
            .best_epoch
            .map_or(state.epochs_done, |e| e + 1);
        if best_epoch != state.epochs_done && self.rank == 0 {
            let best = checkpoint::load(&checkpoint::epoch_dir(&checkpoints, best_epoch))?;
            model = torchvision::load_state_dict(
                model,
                best.model,
                arch,
                &checkpoints,
                LoadOptions::default(),
            )?;
        }
        let stop_reason = if state.stopped_early {
            StopReason::EarlyStopping
        } else {
            StopReason::Completed
        };
        let model_path = outputs.join("model");
        if self.rank == 0 {
            let info = ModelInfo {
                arch: arch.name().into(),
                classes: classes.clone(),
                image_size,
                mean: IMAGENET_MEAN,
                std: IMAGENET_STD,
            };
            model_dir::save(&model_path, &model.valid(), &info)?;
            crate::train::curves::draw(&outputs.join("curves.png"), &state.history)?;
        }
        let why = match stop_reason {
            StopReason::EarlyStopping => format!(
                "stopped early: {} did not improve by more than {} for {} epochs",
                match c.monitor {
                    Monitor::ValLoss => "val_loss",
                    Monitor::ValAcc => "val_acc",
                },
                c.min_delta,
                c.patience
            ),
            StopReason::Completed => format!("completed all {} epochs", c.epochs),
        };
        if skipped > 0 {
            self.progress
                .warn(&format!("skipped {skipped} image(s) that did not decode"));
        }
        let best = &state.history[best_epoch - 1];
        self.progress.info(&format!(
            "{why}; kept epoch {best_epoch} (val loss {:.4}, acc {:.3}); model written to {}",
            best.val_loss,
            best.val_acc,
            model_path.display()
        ));
        Ok(TrainSummary {
            history: state.history,
            best_epoch,
            stop_reason,
            model_dir: model_path,
            classes,
            skipped_images: skipped,
        })
    }
}

fn to_device(batch: &Batch, size: u32, device: &Device) -> (Tensor<4>, Tensor<1, Int>) {
    let n = batch.len();
    let s = size as usize;
    let x = if !batch.pixels.is_empty() {
        // A raw batch: flip, normalise and transpose on the device.
        let raw = RawBatch {
            pixels: &batch.pixels,
            height: s,
            width: s,
            crops: &vec![(0, 0); n],
            flips: &batch.flips,
        };
        preprocess(&raw, s, IMAGENET_MEAN, IMAGENET_STD, device)
    } else {
        Tensor::from_data(TensorData::new(batch.images.clone(), [n, 3, s, s]), device)
    };
    let y = Tensor::from_data(TensorData::new(batch.labels.clone(), [n]), device);
    (x, y)
}

/// `outputs` -> `logs` beside it (`./logs` when `outputs` has no parent).
fn sibling(outputs: &Path, name: &str) -> PathBuf {
    match outputs.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.join(name),
        _ => PathBuf::from(name),
    }
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
