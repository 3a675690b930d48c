//! A trained model directory: `model.safetensors` under torchvision's names and `kiln.json`
//! with the architecture, the class names in label order, and the preprocessing.

use std::path::Path;

use burn::tensor::Device;
use kiln_models::{Arch, Model, torchvision};
use serde::{Deserialize, Serialize};

use crate::error::EngineError;

/// The weights file in a model directory.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// The description file in a model directory.
pub const INFO_FILE: &str = "kiln.json";

/// `kiln.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    /// torchvision architecture name.
    pub arch: String,
    /// Class names, in label order.
    pub classes: Vec<String>,
    /// Side of the square input the model was trained on.
    pub image_size: u32,
    /// Normalisation mean per channel.
    pub mean: [f32; 3],
    /// Normalisation std per channel.
    pub std: [f32; 3],
}

/// Writes `model` and `info` into `dir` (created), each file whole or not at all.
pub fn save(dir: &Path, model: &Model, info: &ModelInfo) -> Result<(), EngineError> {
    std::fs::create_dir_all(dir).map_err(|e| EngineError::io(dir, e))?;
    let metadata = [
        ("arch".to_string(), info.arch.clone()),
        ("format".to_string(), "pt".to_string()),
    ]
    .into_iter()
    .collect();
    torchvision::save_safetensors(model, &dir.join(WEIGHTS_FILE), Some(metadata))?;
    let json = serde_json::to_string_pretty(info).expect("ModelInfo serialises");
    torchvision::write_atomically(&dir.join(INFO_FILE), |tmp| {
        std::fs::write(tmp, json.as_bytes()).map_err(|e| e.to_string())
    })?;
    Ok(())
}

/// Reads `dir/kiln.json`; `InvalidModelDirectoryError` names what is wrong.
pub fn read_info(dir: &Path) -> Result<(ModelInfo, Arch), EngineError> {
    let invalid = |what: String| EngineError::InvalidModelDirectory(what);
    let path = dir.join(INFO_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| {
        invalid(format!(
            "{} has no readable {INFO_FILE} ({e}); a model directory holds {WEIGHTS_FILE} and {INFO_FILE}",
            dir.display()
        ))
    })?;
    // The path to the bad field (`mean`, `classes[3]`) names what is wrong, not only where.
    let info: ModelInfo = serde_path_to_error::deserialize(
        &mut serde_json::Deserializer::from_str(&text),
    )
    .map_err(|e| {
        let field = e.path().to_string();
        let at = if field == "." {
            String::new()
        } else {
            format!(" {field}:")
        };
        invalid(format!(
            "{} is not valid:{at} {}",
            path.display(),
            e.inner()
        ))
    })?;
    let arch: Arch = info
        .arch
        .parse()
        .map_err(|e| invalid(format!("{}: {e}", path.display())))?;
    info.check()
        .map_err(|why| invalid(format!("{}: {why}", path.display())))?;
    Ok((info, arch))
}

impl ModelInfo {
    /// What a model directory's description must hold for predictions to mean anything: 1 to
    /// [`torchvision::MAX_CLASSES`] classes, an image size kiln trains at, and a mean and std
    /// that keep normalised pixels finite.
    pub fn check(&self) -> Result<(), String> {
        if self.classes.is_empty() {
            return Err(
                "classes: lists no classes; expected the class names in label order".into(),
            );
        }
        let max = torchvision::MAX_CLASSES;
        if self.classes.len() > max {
            return Err(format!(
                "classes: lists {} classes; expected at most {max}",
                self.classes.len()
            ));
        }
        if !crate::config::IMAGE_SIZES.contains(&self.image_size) {
            return Err(format!(
                "image_size: {} is out of range; expected {} to {}",
                self.image_size,
                crate::config::IMAGE_SIZES.start(),
                crate::config::IMAGE_SIZES.end()
            ));
        }
        if let Some(m) = self.mean.iter().find(|m| !m.is_finite()) {
            return Err(format!("mean: {m} is not a finite number"));
        }
        if let Some(s) = self.std.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
            return Err(format!(
                "std: {s} is out of range; expected a positive number"
            ));
        }
        // Pixels from 0 to 1 must stay finite once normalised: a std of 1e-40 or a mean of
        // 1e38 passes the checks above but turns every input into infinities.
        for (c, (m, s)) in self.mean.iter().zip(&self.std).enumerate() {
            if ![0.0f32, 1.0].iter().all(|x| ((x - m) / s).is_finite()) {
                return Err(format!(
                    "mean[{c}] {m} and std[{c}] {s} turn pixel values 0 to 1 into \
                     infinities; expected a mean and std of the scale of the pixels (e.g. \
                     ImageNet's 0.485 and 0.229)"
                ));
            }
        }
        Ok(())
    }
}

/// Loads a model directory onto `device`, in eval mode.
pub fn load(dir: &Path, device: &Device) -> Result<(Model, ModelInfo), EngineError> {
    let (info, arch) = read_info(dir)?;
    let weights = dir.join(WEIGHTS_FILE);
    if !weights.is_file() {
        return Err(EngineError::InvalidModelDirectory(format!(
            "{} has no {WEIGHTS_FILE}",
            dir.display()
        )));
    }
    let model = torchvision::load(arch, &weights, Some(info.classes.len()), device)
        .map_err(|e| EngineError::InvalidModelDirectory(e.to_string()))?;
    Ok((model.set_training(false), info))
}

/// Writes the model directory `dir` as ONNX to `out` (through a temporary file, so a failed
/// export leaves nothing behind). The metadata carries the arch, the class names (a JSON list,
/// in label order) and the preprocessing: image size, mean and std. `batch` `None` makes the
/// batch dimension dynamic. Returns the file's size in bytes.
pub fn export_onnx(
    dir: &Path,
    out: &Path,
    opset: u32,
    batch: Option<usize>,
) -> Result<usize, EngineError> {
    let (model, info) = load(dir, &Device::flex())?;
    let arch: Arch = info.arch.parse()?;
    let options = kiln_models::onnx::OnnxOptions {
        opset,
        batch,
        image_size: info.image_size as usize,
        metadata: vec![
            ("arch".into(), info.arch.clone()),
            ("classes".into(), json(&info.classes)),
            ("image_size".into(), info.image_size.to_string()),
            ("mean".into(), json(&info.mean)),
            ("std".into(), json(&info.std)),
            (
                "input_layout".into(),
                "NCHW RGB, scaled to [0, 1], then (x - mean) / std".into(),
            ),
        ],
    };
    let bytes = kiln_models::onnx::export(&model, arch, &options)?;
    torchvision::write_atomically(out, |tmp| {
        std::fs::write(tmp, &bytes).map_err(|e| e.to_string())
    })?;
    Ok(bytes.len())
}

fn json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_default()
}
