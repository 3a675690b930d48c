//! [`Trainer`]: a run from its config to its model directory. [`Setup`] readies the data, model
//! and optimizer; a checkpoint is resumed; the [`Strategy`] makes every rank start alike; then
//! each epoch trains ([`epoch::train_epoch`]), validates, is judged by early stopping and is
//! written by rank 0 ([`RunWriter`]); the kept epoch's weights become the model directory.

use std::time::Instant;

use kiln_models::Model;
use kiln_models::torchvision::{self, LoadOptions};

use crate::config::{Choice, Precision, TrainConfig};
use crate::dist::{GradientBuckets, Transport, Wire};
use crate::env::RunContext;
use crate::error::EngineError;
use crate::train::checkpoint::{self, EpochMetrics, TrainerState};
use crate::train::early_stopping::{EarlyStopping, Verdict};
use crate::train::epoch::{self, TrainSums, ValSums};
use crate::train::metrics::Start;
use crate::train::outputs::{RunFolders, RunWriter, model_info};
use crate::train::progress::Progress;
use crate::train::setup::Setup;
use crate::train::strategies::{DataParallel, Plan, SingleDevice, Strategy};
use crate::train::threads;

/// Refuses to resume on data whose classes differ from the checkpoint's: the weights' outputs
/// would no longer mean the labels `kiln.json` gives them.
fn check_same_classes(
    dir: &std::path::Path,
    saved: &[String],
    now: &[String],
) -> Result<(), EngineError> {
    if saved.is_empty() || saved == now {
        return Ok(());
    }
    let only = |a: &[String], b: &[String]| {
        a.iter()
            .filter(|c| !b.contains(c))
            .cloned()
            .collect::<Vec<_>>()
            .join(", ")
    };
    Err(EngineError::InvalidDataset(format!(
        "the checkpoint {} was trained on other classes: only in the checkpoint: [{}]; only in \
         the data now: [{}]{}",
        dir.display(),
        only(saved, now),
        only(now, saved),
        if only(saved, now).is_empty() && only(now, saved).is_empty() {
            " (the same names in another order)"
        } else {
            ""
        }
    )))
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
    pub model_dir: std::path::PathBuf,
    /// Class names in label order.
    pub classes: Vec<String>,
    /// Images skipped because they did not decode (`skip_bad_images`).
    pub skipped_images: usize,
    /// How often the training steps (all epochs, this rank) waited for the device to read
    /// their loss and hits: once an epoch, plus about once a second while a progress bar shows
    /// the loss. Validation and distributed gradient exchange are not counted.
    pub step_host_reads: usize,
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
    strategy: Box<dyn Strategy>,
    run: RunContext,
}

impl Trainer {
    /// A single-process trainer reporting to stdout, in the run `kiln submit` started it in
    /// (its id and folders, from the environment) if any.
    pub fn new(config: TrainConfig) -> Self {
        Self {
            config,
            progress: Progress::stdout(""),
            strategy: Box::new(SingleDevice),
            run: RunContext::from_env(),
        }
    }

    /// Reports through `progress` instead.
    pub fn with_progress(mut self, progress: Progress) -> Self {
        self.progress = progress;
        self
    }

    /// Writes into `run`'s folders under its id instead of the environment's.
    pub fn with_run(mut self, run: RunContext) -> Self {
        self.run = run;
        self
    }

    /// Trains data-parallel over `transport`'s ranks: rank 0's initial state is broadcast,
    /// each rank reads its shard, gradients are averaged every step (in buckets of
    /// `bucket_mb`, f16 on the wire with `fp16_allreduce`), metrics are summed over ranks (so
    /// early stopping decides the same everywhere) and only rank 0 writes files.
    pub fn with_distributed(mut self, transport: Box<dyn Transport>) -> Self {
        let buckets = GradientBuckets {
            bucket_bytes: ((self.config.bucket_mb * (1 << 20) as f64) as usize).max(4),
            wire: if self.config.fp16_allreduce {
                Wire::F16
            } else {
                Wire::F32
            },
        };
        self.strategy = Box::new(DataParallel::new(transport, buckets));
        self
    }

    /// Trains, validates every epoch, stops early or after `epochs`, restores the best
    /// epoch's weights and writes the model directory.
    /// Runs inside a pool of `threads` compute threads (see [`threads`] for why inside).
    pub fn fit(mut self) -> Result<TrainSummary, EngineError> {
        let result = match self.config.validate() {
            Ok(()) => {
                let n = self.config.threads.unwrap_or_else(threads::default_threads);
                threads::compute_pool(n).and_then(|pool| pool.install(|| self.run()))
            }
            Err(e) => Err(e.into()),
        };
        self.strategy.finish(result.as_ref().err())?;
        result
    }

    /// Runs the loop; `fit` has validated the configuration.
    fn run(&mut self) -> Result<TrainSummary, EngineError> {
        let c = self.config.clone();
        let (rank, world) = (self.strategy.rank(), self.strategy.world_size());
        let folders = RunFolders::new(&c, &self.run);
        if rank == 0 {
            folders.check()?;
        }
        let (mut setup, mut model) = Setup::new(&c, rank, world, &self.progress)?;
        let mut state = TrainerState {
            epochs_done: 0,
            global_step: 0,
            early_stopping: EarlyStopping::new(c.monitor, c.patience, c.min_delta),
            history: Vec::new(),
            stopped_early: false,
            classes: setup.classes.clone(),
            loss_scaler: None,
        };
        // In a distributed run rank 0 alone reads the checkpoint and broadcasts it below.
        if let Some(resume) = c.resume.as_ref().filter(|_| rank == 0) {
            (model, state) = self.resume(&mut setup, model, resume)?;
        }
        let plan = Plan {
            train_len: setup.train.folder.len(),
            val_len: setup.val.folder.len(),
            classes: setup.classes.len(),
            image_size: setup.image_size as usize,
            steps_per_epoch: setup.steps_per_epoch,
        };
        let inner = setup.device.clone().inner();
        (model, state) =
            self.strategy
                .start(model, setup.arch, &mut setup.sgd, state, &inner, &plan)?;
        // f16 steps scale the loss; a resumed run carries its checkpoint's scale on.
        state.loss_scaler = match setup.precision {
            Precision::F16 => Some(state.loss_scaler.unwrap_or_default()),
            _ => None,
        };
        // A submitted run's logs belong to the run (its script may log too); a local run
        // starts its own metrics, or keeps those up to the checkpoint it resumes.
        let start = match (&self.run.logs, &c.resume) {
            (Some(_), _) => Start::Append,
            (None, Some(_)) => Start::KeepUntil(state.epochs_done),
            (None, None) => Start::Fresh,
        };
        let resumed_at = c.resume.as_ref().map(|_| state.global_step);
        let mut writer = (rank == 0)
            .then(|| RunWriter::open(folders.clone(), &self.run.run_id, start, &c, resumed_at));
        let threads = threads::compute_threads();
        self.progress.info(&format!(
            "training {} on {} images ({} classes), validating on {}, {} px, batch {}, {} \
             steps/epoch, {threads} compute thread{}, device {}, precision {}",
            setup.arch,
            setup.train.folder.len(),
            setup.classes.len(),
            setup.val.folder.len(),
            setup.image_size,
            c.batch_size,
            setup.steps_per_epoch,
            if threads == 1 { "" } else { "s" },
            setup.device_name,
            setup.precision.name(),
        ));
        let mut skipped = 0usize;
        let mut host_reads = 0usize;
        while state.epochs_done < c.epochs && !state.stopped_early {
            let started = Instant::now();
            model = model.set_training(true);
            self.progress
                .start_epoch(state.epochs_done + 1, c.epochs, setup.steps_per_epoch);
            let (trained, train) = epoch::train_epoch(
                &mut setup,
                self.strategy.as_mut(),
                model,
                &mut state,
                &mut self.progress,
                c.epochs,
            )?;
            model = trained;
            skipped += train.skipped;
            host_reads += train.host_reads;
            if let (Some(scaler), 1..) = (&state.loss_scaler, train.overflow_steps) {
                self.progress.info(&format!(
                    "epoch {}: {} f16 step(s) overflowed and were skipped; loss scale now {}",
                    state.epochs_done + 1,
                    train.overflow_steps,
                    scaler.scale
                ));
            }
            let val = epoch::validate(&setup, &model)?;
            let m = self.epoch_metrics(&state, &train, &val, started)?;
            self.judge(&mut state, &m);
            if let Some(writer) = &mut writer {
                writer.epoch(&m, &train.step_losses, &state, &model, &setup.sgd)?;
            }
        }
        let mut summary = self.finish(setup, model, state, writer.as_ref(), &folders, skipped)?;
        summary.step_host_reads = host_reads;
        Ok(summary)
    }

    /// Reads the newest checkpoint under `resume` into `model`, the optimizer and the
    /// trainer state.
    fn resume(
        &self,
        setup: &mut Setup,
        model: Model,
        resume: &std::path::Path,
    ) -> Result<(Model, TrainerState), EngineError> {
        let dir = checkpoint::latest(resume).ok_or_else(|| EngineError::BadOption {
            option: "resume",
            value: resume.display().to_string(),
            expected: "an output directory with checkpoints/epoch-N, or a checkpoint".into(),
        })?;
        let mut ckpt = checkpoint::load(&dir)?;
        check_same_classes(&dir, &ckpt.state.classes, &setup.classes)?;
        ckpt.state.classes = setup.classes.clone();
        self.apply_early_stopping_options(&mut ckpt.state);
        let model = torchvision::load_state_dict(
            model,
            ckpt.model,
            setup.arch,
            &dir,
            LoadOptions::default(),
        )?;
        setup
            .sgd
            .load_state(ckpt.optimizer, &setup.device.clone().inner());
        self.progress.info(&format!(
            "resuming from {} after epoch {}",
            dir.display(),
            ckpt.state.epochs_done
        ));
        Ok((model, ckpt.state))
    }

    /// Early stopping's options as given now, over the checkpoint's: patience and min_delta are
    /// applied, the monitored metric is kept (its best value was judged by it); each change is
    /// said in one line, never silently dropped.
    fn apply_early_stopping_options(&self, state: &mut TrainerState) {
        let c = &self.config;
        let es = &mut state.early_stopping;
        if es.patience != c.patience {
            self.progress.info(&format!(
                "resume: patience {} applied (the checkpoint had {})",
                c.patience, es.patience
            ));
            es.patience = c.patience;
        }
        if es.min_delta != c.min_delta {
            self.progress.info(&format!(
                "resume: min_delta {} applied (the checkpoint had {})",
                c.min_delta, es.min_delta
            ));
            es.min_delta = c.min_delta;
        }
        if es.monitor != c.monitor {
            self.progress.info(&format!(
                "resume: monitor {} given, the checkpoint's {} is kept (its best epoch was \
                 judged by it)",
                c.monitor.name(),
                es.monitor.name()
            ));
        }
    }

    /// The epoch's metrics from every rank's sums.
    fn epoch_metrics(
        &mut self,
        state: &TrainerState,
        train: &TrainSums,
        val: &ValSums,
        started: Instant,
    ) -> Result<EpochMetrics, EngineError> {
        let t = self
            .strategy
            .sum(&[train.loss, train.correct as f64, train.seen as f64])?;
        let (loss, correct, seen) = (t[0], t[1] as usize, t[2] as usize);
        let images_per_s = seen as f64 / train.seconds;
        let v = self.strategy.sum(&[
            val.loss,
            val.correct as f64,
            val.top5 as f64,
            val.seen as f64,
        ])?;
        let n = (v[3] as usize).max(1) as f64;
        Ok(EpochMetrics {
            epoch: state.epochs_done + 1,
            train_loss: loss / seen.max(1) as f64,
            train_acc: correct as f64 / seen.max(1) as f64,
            val_loss: v[0] / n,
            val_acc: (v[1] as usize) as f64 / n,
            val_top5: (v[2] as usize) as f64 / n,
            images_per_s,
            lr: train.lr,
            epoch_time_s: started.elapsed().as_secs_f64(),
        })
    }

    /// Early stopping's verdict on the epoch, recorded in `state` and reported.
    fn judge(&mut self, state: &mut TrainerState, m: &EpochMetrics) {
        let monitored = match self.config.monitor {
            crate::config::Monitor::ValLoss => m.val_loss,
            crate::config::Monitor::ValAcc => m.val_acc,
        };
        let verdict = state.early_stopping.update(state.epochs_done, monitored);
        state.stopped_early = verdict == Verdict::Stop;
        state.epochs_done += 1;
        state.history.push(m.clone());
        self.progress.end_epoch(&format!(
            "epoch {}/{}: train loss {:.4} acc {:.3} | val loss {:.4} acc {:.3} top5 {:.3} | \
             {:.0} img/s, lr {:.2e}, {:.1}s{}",
            m.epoch,
            self.config.epochs,
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
    }

    /// Writes the kept epoch's model (rank 0), reports why training ended, and sums it up.
    fn finish(
        &self,
        setup: Setup,
        model: Model,
        state: TrainerState,
        writer: Option<&RunWriter>,
        folders: &RunFolders,
        skipped: usize,
    ) -> Result<TrainSummary, EngineError> {
        let c = &self.config;
        let best_epoch = state
            .early_stopping
            .best_epoch
            .map_or(state.epochs_done, |e| e + 1);
        if let Some(writer) = writer {
            let info = model_info(setup.arch, &setup.classes, setup.image_size);
            writer.finish(model, setup.arch, best_epoch, &state, &info)?;
        }
        let stop_reason = if state.stopped_early {
            StopReason::EarlyStopping
        } else {
            StopReason::Completed
        };
        let why = match stop_reason {
            StopReason::EarlyStopping => format!(
                "stopped early: {} did not improve by more than {} for {} epochs",
                c.monitor.name(),
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
        let model_path = folders.model();
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
            classes: setup.classes,
            skipped_images: skipped,
            step_host_reads: 0,
        })
    }
}
