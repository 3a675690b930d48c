//! What a run writes, on rank 0 only: each epoch's metrics and checkpoint, and at the end the
//! best epoch's weights as the model directory and the curves. Where: `output_dir` (or the
//! submitted run's `outputs/`) and `logs/` beside it (or the run's `logs/`).

use std::path::{Path, PathBuf};

use burn::module::Module;
use kiln_models::torchvision::{self, LoadOptions};
use kiln_models::{Arch, Model};

use crate::config::{DEFAULT_OUTPUT_DIR, TrainConfig};
use crate::data::transform::{IMAGENET_MEAN, IMAGENET_STD};
use crate::env::RunContext;
use crate::error::EngineError;
use crate::model_dir::{self, ModelInfo};
use crate::train::checkpoint::{self, EpochMetrics, TrainerState};
use crate::train::metrics::{MetricsLog, Start};
use crate::train::sgd::Sgd;
use crate::train::tensorboard::EventWriter;

/// Where a run's files go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunFolders {
    /// `model/`, `checkpoints/` and `curves.png`.
    pub outputs: PathBuf,
    /// `metrics.jsonl`.
    pub logs: PathBuf,
}

impl RunFolders {
    /// The config's output directory, unless a submitted run names its own and the config
    /// kept the default; the run's logs directory, else `logs/` beside the outputs.
    pub fn new(config: &TrainConfig, run: &RunContext) -> Self {
        let outputs = match &run.outputs {
            Some(outputs) if config.output_dir == Path::new(DEFAULT_OUTPUT_DIR) => outputs.clone(),
            _ => config.output_dir.clone(),
        };
        let logs = run
            .logs
            .clone()
            .unwrap_or_else(|| sibling(&outputs, "logs"));
        Self { outputs, logs }
    }

    /// Checks, before the first step, that the outputs and logs can be directories: neither
    /// they nor a folder above them is a file. Nothing is created here.
    pub fn check(&self) -> Result<(), EngineError> {
        for (what, dir) in [
            ("output directory", &self.outputs),
            ("logs directory", &self.logs),
        ] {
            let mut at: Option<&Path> = Some(dir);
            while let Some(p) = at {
                if p.exists() {
                    if !p.is_dir() {
                        return Err(EngineError::BadOption {
                            option: "output_dir",
                            value: dir.display().to_string(),
                            expected: format!(
                                "a directory for the {what}, but {} is a file",
                                p.display()
                            ),
                        });
                    }
                    break;
                }
                at = p.parent().filter(|p| !p.as_os_str().is_empty());
            }
        }
        Ok(())
    }

    /// `outputs/checkpoints`.
    pub fn checkpoints(&self) -> PathBuf {
        self.outputs.join("checkpoints")
    }

    /// `outputs/model`.
    pub fn model(&self) -> PathBuf {
        self.outputs.join("model")
    }
}

/// `outputs` -> `logs` beside it (`./logs` when `outputs` has no parent).
fn sibling(outputs: &Path, name: &str) -> PathBuf {
    match outputs.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.join(name),
        _ => PathBuf::from(name),
    }
}

/// Rank 0's writer of a run's files; other ranks hold none.
pub(crate) struct RunWriter {
    folders: RunFolders,
    metrics: MetricsLog,
    /// The TensorBoard event file, opened at the first epoch's end.
    events: Option<EventWriter>,
    /// The run's options, written as TensorBoard text when the event file opens.
    hparams: String,
    /// The global step a resumed run takes up from.
    resumed_at: Option<usize>,
}

impl RunWriter {
    /// The writer of run `run_id`'s files; `metrics.jsonl` starts as `start` says; a run
    /// resumed at global step `resumed_at` says so in its event file.
    pub fn open(
        folders: RunFolders,
        run_id: &str,
        start: Start,
        config: &TrainConfig,
        resumed_at: Option<usize>,
    ) -> Self {
        let metrics = MetricsLog::open(&folders.logs.join("metrics.jsonl"), run_id, 0, start);
        Self {
            folders,
            metrics,
            events: None,
            hparams: hparams_markdown(config),
            resumed_at,
        }
    }

    /// Records a finished epoch: its metrics (`metrics.jsonl` and TensorBoard, with the sampled
    /// step losses), then its checkpoint.
    pub fn epoch(
        &mut self,
        m: &EpochMetrics,
        step_losses: &[(usize, f32)],
        state: &TrainerState,
        model: &Model,
        sgd: &Sgd,
    ) -> Result<(), EngineError> {
        let train = [
            ("loss", m.train_loss),
            ("acc", m.train_acc),
            ("images_per_s", m.images_per_s),
            ("lr", m.lr),
            ("epoch_time_s", m.epoch_time_s),
        ];
        self.metrics
            .log(m.epoch, state.global_step, "train", &train)?;
        let val = [
            ("loss", m.val_loss),
            ("acc", m.val_acc),
            ("top5", m.val_top5),
        ];
        self.metrics.log(m.epoch, state.global_step, "val", &val)?;
        self.tensorboard(&train, &val, step_losses, state.global_step)?;
        checkpoint::save(&self.folders.checkpoints(), model, &sgd.state(), state)?;
        Ok(())
    }

    /// The epoch's scalars as TensorBoard events, the same tags and steps as `metrics.jsonl`
    /// (`train/loss` at the epoch's last step), and `train/step_loss` every few steps.
    fn tensorboard(
        &mut self,
        train: &[(&str, f64)],
        val: &[(&str, f64)],
        step_losses: &[(usize, f32)],
        step: usize,
    ) -> Result<(), EngineError> {
        let events = match &mut self.events {
            Some(events) => events,
            None => {
                let mut events = EventWriter::create(&self.folders.logs)?;
                if let Some(at) = self.resumed_at {
                    // TensorBoard drops what an earlier session logged at this step and after:
                    // the checkpoint's own step stays, the steps written after it go.
                    events.session_start(at as i64 + 1)?;
                }
                events.text(
                    self.resumed_at.unwrap_or(0) as i64,
                    "hparams",
                    &self.hparams,
                )?;
                self.events.insert(events)
            }
        };
        for &(s, loss) in step_losses {
            events.scalars(s as i64, &[("train/step_loss".into(), f64::from(loss))])?;
        }
        let tagged = |split: &str, values: &[(&str, f64)]| -> Vec<(String, f64)> {
            values
                .iter()
                .map(|(name, v)| (format!("{split}/{name}"), *v))
                .collect()
        };
        let mut scalars = tagged("train", train);
        scalars.extend(tagged("val", val));
        events.scalars(step as i64, &scalars)?;
        events.flush()
    }

    /// The run is over: the kept epoch's weights (`best_epoch`, from 1) become the model
    /// directory, and the curves are drawn.
    pub fn finish(
        &self,
        mut model: Model,
        arch: Arch,
        best_epoch: usize,
        state: &TrainerState,
        info: &ModelInfo,
    ) -> Result<(), EngineError> {
        let checkpoints = self.folders.checkpoints();
        if best_epoch != state.epochs_done {
            let best = checkpoint::load(&checkpoint::epoch_dir(&checkpoints, best_epoch))?;
            model = torchvision::load_state_dict(
                model,
                best.model,
                arch,
                &checkpoints,
                LoadOptions::default(),
            )?;
        }
        model_dir::save(&self.folders.model(), &model.valid(), info)?;
        crate::train::curves::draw(
            &self.folders.outputs.join("curves.png"),
            &state.history,
            Some(best_epoch),
        )
    }
}

/// The run's options as a markdown table (TensorBoard's text tab renders it).
fn hparams_markdown(config: &TrainConfig) -> String {
    let mut text = String::from("| option | value |\n|---|---|\n");
    if let Ok(serde_json::Value::Object(options)) = serde_json::to_value(config) {
        for (key, value) in options {
            let value = match value {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            };
            text.push_str(&format!("| {key} | {value} |\n"));
        }
    }
    text
}

/// `kiln.json` of a model trained on `classes` at `image_size`.
pub(crate) fn model_info(arch: Arch, classes: &[String], image_size: u32) -> ModelInfo {
    ModelInfo {
        arch: arch.name().into(),
        classes: classes.to_vec(),
        image_size,
        mean: IMAGENET_MEAN,
        std: IMAGENET_STD,
    }
}
