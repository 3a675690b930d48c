//! Checkpoints `outputs/checkpoints/epoch-N/`: the model (torchvision names), the optimizer's
//! momentum buffers and the trainer's state. Each is written into a temporary directory that
//! is renamed into place, so a crash never leaves a torn checkpoint; the last two and the best
//! are kept.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::tensor::TensorData;
use kiln_models::{Model, torchvision};
use serde::{Deserialize, Serialize};

use crate::error::EngineError;
use crate::train::early_stopping::EarlyStopping;

/// f64 in the trainer state as text that reads back bit for bit. serde_json's default float
/// parsing is best effort and now and then one ULP off (1.8523502506102374 came back as
/// ...376), and a resumed run must restore its history and early-stopping state exactly.
pub(crate) mod exact_f64 {
    use serde::{Deserialize, Deserializer, Serializer};

    /// What a checkpoint holds: text, or a plain number from checkpoints written before.
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Stored {
        Text(String),
        Number(f64),
    }

    impl Stored {
        fn value<E: serde::de::Error>(self) -> Result<f64, E> {
            match self {
                Self::Text(text) => text.parse().map_err(E::custom),
                Self::Number(v) => Ok(v),
            }
        }
    }

    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        // `{:?}` is the shortest text that parses back to the same f64 (and writes inf, NaN).
        s.serialize_str(&format!("{v:?}"))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        Stored::deserialize(d)?.value()
    }

    /// The same for an optional f64.
    pub mod option {
        use serde::{Deserialize, Deserializer, Serializer};

        pub fn serialize<S: Serializer>(v: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
            match v {
                Some(v) => super::serialize(v, s),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
            Option::<super::Stored>::deserialize(d)?
                .map(super::Stored::value)
                .transpose()
        }
    }
}

/// One epoch's results.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    /// Epoch, from 1.
    pub epoch: usize,
    /// Mean training loss.
    #[serde(with = "exact_f64")]
    pub train_loss: f64,
    /// Training top-1 accuracy.
    #[serde(with = "exact_f64")]
    pub train_acc: f64,
    /// Mean validation loss.
    #[serde(with = "exact_f64")]
    pub val_loss: f64,
    /// Validation top-1 accuracy.
    #[serde(with = "exact_f64")]
    pub val_acc: f64,
    /// Validation top-5 accuracy.
    #[serde(with = "exact_f64")]
    pub val_top5: f64,
    /// Training images per second.
    #[serde(with = "exact_f64")]
    pub images_per_s: f64,
    /// Learning rate at the epoch's last step.
    #[serde(with = "exact_f64")]
    pub lr: f64,
    /// Wall time of the epoch, training and validation.
    #[serde(with = "exact_f64")]
    pub epoch_time_s: f64,
}

/// What the trainer needs besides the weights to go on exactly where it stopped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Epochs completed.
    pub epochs_done: usize,
    /// Optimizer steps taken.
    pub global_step: usize,
    /// Early-stopping state.
    pub early_stopping: EarlyStopping,
    /// Every completed epoch's metrics.
    pub history: Vec<EpochMetrics>,
    /// Set when early stopping ended the run.
    pub stopped_early: bool,
    /// The classes trained on, in label order (empty in checkpoints written before kiln kept
    /// them): a resumed run must see the same ones.
    #[serde(default)]
    pub classes: Vec<String>,
    /// f16 training's loss scale (absent in other precisions and older checkpoints).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_scaler: Option<crate::train::scaler::LossScaler>,
}

const MODEL: &str = "model.safetensors";
const OPTIMIZER: &str = "optimizer.safetensors";
const TRAINER: &str = "trainer.json";

/// Directory of epoch `epoch`'s checkpoint under `root`.
pub fn epoch_dir(root: &Path, epoch: usize) -> PathBuf {
    root.join(format!("epoch-{epoch}"))
}

/// Writes a checkpoint for `state.epochs_done` under `root`, then removes all but the last two
/// and the best.
pub fn save(
    root: &Path,
    model: &Model,
    optimizer: &BTreeMap<String, TensorData>,
    state: &TrainerState,
) -> Result<PathBuf, EngineError> {
    let dir = epoch_dir(root, state.epochs_done);
    let tmp = root.join(format!(
        ".epoch-{}.tmp{}",
        state.epochs_done,
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| EngineError::io(&tmp, e))?;
    torchvision::save_safetensors(model, &tmp.join(MODEL), None)?;
    torchvision::write_safetensors(&tmp.join(OPTIMIZER), optimizer, None)?;
    let json = serde_json::to_string_pretty(state).expect("TrainerState serialises");
    std::fs::write(tmp.join(TRAINER), json).map_err(|e| EngineError::io(&tmp, e))?;
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&tmp, &dir).map_err(|e| EngineError::io(&dir, e))?;
    prune(root, state)?;
    Ok(dir)
}

fn epochs_in(root: &Path) -> Vec<usize> {
    let mut epochs: Vec<usize> = std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_prefix("epoch-"))
                .and_then(|n| n.parse().ok())
        })
        .collect();
    epochs.sort_unstable();
    epochs
}

fn prune(root: &Path, state: &TrainerState) -> Result<(), EngineError> {
    let epochs = epochs_in(root);
    let best = state.early_stopping.best_epoch.map(|e| e + 1);
    let keep_from = epochs.len().saturating_sub(2);
    for (i, epoch) in epochs.iter().enumerate() {
        if i < keep_from && Some(*epoch) != best {
            let dir = epoch_dir(root, *epoch);
            std::fs::remove_dir_all(&dir).map_err(|e| EngineError::io(&dir, e))?;
        }
    }
    Ok(())
}

/// The newest checkpoint under `path`: `path` itself if it is one, else the highest
/// `epoch-N` in `path` or in `path/checkpoints`.
pub fn latest(path: &Path) -> Option<PathBuf> {
    if path.join(TRAINER).is_file() {
        return Some(path.to_path_buf());
    }
    [path.to_path_buf(), path.join("checkpoints")]
        .into_iter()
        .find_map(|root| epochs_in(&root).last().map(|&e| epoch_dir(&root, e)))
}

/// A checkpoint read back.
pub struct Checkpoint {
    /// Model weights under torchvision's names.
    pub model: torchvision::StateDict,
    /// Momentum buffers by module path.
    pub optimizer: BTreeMap<String, TensorData>,
    /// Trainer state.
    pub state: TrainerState,
}

/// Reads the checkpoint in `dir`.
pub fn load(dir: &Path) -> Result<Checkpoint, EngineError> {
    let text = std::fs::read_to_string(dir.join(TRAINER))
        .map_err(|e| EngineError::io(&dir.join(TRAINER), e))?;
    let state: TrainerState = serde_json::from_str(&text).map_err(|e| EngineError::BadInput {
        what: dir.join(TRAINER).display().to_string(),
        reason: e.to_string(),
        expected: "a trainer state written by kiln",
    })?;
    Ok(Checkpoint {
        model: torchvision::read_state_dict(&dir.join(MODEL))?,
        optimizer: torchvision::read_safetensors(&dir.join(OPTIMIZER))?,
        state,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Monitor;
    use crate::train::scaler::LossScaler;
    use kiln_models::Arch;

    #[test]
    fn the_loss_scale_is_saved_and_restored_and_older_checkpoints_have_none() {
        let root = kiln_kernels::testing::temp_dir("ckpt-scaler");
        let model = Arch::Resnet18.init(2, &burn::tensor::Device::flex());
        let state = TrainerState {
            epochs_done: 1,
            global_step: 7,
            early_stopping: EarlyStopping::new(Monitor::ValLoss, 3, 0.0),
            history: Vec::new(),
            stopped_early: false,
            classes: vec!["a".into(), "b".into()],
            loss_scaler: Some(LossScaler {
                scale: 2048.0,
                growth_tracker: 5,
            }),
        };
        let dir = save(&root, &model, &BTreeMap::new(), &state).unwrap();
        assert_eq!(load(&dir).unwrap().state, state);
        // A trainer.json from before f16 training (or of an f32 run) has no scale.
        let text = std::fs::read_to_string(dir.join(TRAINER)).unwrap();
        let mut json: serde_json::Value = serde_json::from_str(&text).unwrap();
        json.as_object_mut().unwrap().remove("loss_scaler");
        std::fs::write(dir.join(TRAINER), json.to_string()).unwrap();
        assert_eq!(load(&dir).unwrap().state.loss_scaler, None);
        let _ = std::fs::remove_dir_all(&root);
    }
}
