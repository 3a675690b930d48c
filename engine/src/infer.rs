//! A loaded model that scores batches: `kiln predict` and `kiln serve` share it, so both turn
//! an image into the same input (the validation transform and normalisation recorded in
//! `kiln.json`) and the same logits.

use std::path::Path;

use burn::tensor::{Device, Tensor, TensorData};
use image::RgbImage;
use kiln_models::Model;

use crate::data::transform::{check_eval_size, eval_transform, normalize_into};
use crate::error::EngineError;
use crate::model_dir::{self, ModelInfo};

/// A model directory loaded onto a device, in eval mode.
pub struct Scorer {
    model: Model,
    info: ModelInfo,
    device: Device,
}

impl Scorer {
    /// Loads the model directory `dir` onto `device`.
    pub fn load(dir: &Path, device: &Device) -> Result<Self, EngineError> {
        let (model, info) = model_dir::load(dir, device)?;
        Ok(Self {
            model,
            info,
            device: device.clone(),
        })
    }

    /// The model's `kiln.json`.
    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// How many classes the model scores.
    pub fn classes(&self) -> usize {
        self.info.classes.len()
    }

    /// Floats in one input: 3 x image size x image size.
    pub fn input_len(&self) -> usize {
        input_len(&self.info)
    }

    /// Appends `image`'s model input (resized, cropped, normalised, CHW) to `out`; refuses an
    /// image so elongated that resizing it would take gigabytes.
    pub fn preprocess(&self, image: &RgbImage, out: &mut Vec<f32>) -> Result<(), String> {
        preprocess(&self.info, image, out)
    }

    /// The logits of `n` inputs laid end to end in `inputs` (NCHW, each `input_len()` floats
    /// of the model's image size), row-major `[n, classes]`.
    pub fn logits(&self, inputs: Vec<f32>, n: usize) -> Vec<f32> {
        let s = self.info.image_size as usize;
        assert_eq!(inputs.len(), n * 3 * s * s, "inputs hold {n} images");
        let x = Tensor::<4>::from_data(TensorData::new(inputs, [n, 3, s, s]), &self.device);
        self.model
            .forward(x)
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .expect("logits are f32")
    }
}

/// Floats in one input of the model `info` describes.
pub fn input_len(info: &ModelInfo) -> usize {
    3 * info.image_size as usize * info.image_size as usize
}

/// Appends `image`'s input for the model `info` describes to `out`, or says why it cannot.
pub fn preprocess(info: &ModelInfo, image: &RgbImage, out: &mut Vec<f32>) -> Result<(), String> {
    check_eval_size(image.width(), image.height(), info.image_size)?;
    normalize_into(
        &eval_transform(image, info.image_size),
        info.mean,
        info.std,
        out,
    );
    Ok(())
}

/// The softmax of one row of logits, computed in f64 so large logits do not overflow.
pub fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let exps: Vec<f64> = logits.iter().map(|&l| (l as f64 - max).exp()).collect();
    let sum: f64 = exps.iter().sum();
    exps.iter().map(|e| (e / sum) as f32).collect()
}

/// The indices of the `k` largest values, largest first; ties go to the lower index.
pub fn top_k(values: &[f32], k: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[b].total_cmp(&values[a]).then(a.cmp(&b)));
    order.truncate(k);
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_sums_to_one_and_survives_large_logits() {
        let p = softmax(&[1000.0, 1000.0, -1000.0]);
        assert!((p[0] - 0.5).abs() < 1e-6 && (p[1] - 0.5).abs() < 1e-6 && p[2] == 0.0);
        let p = softmax(&[0.1, 2.0, -0.3]);
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-6);
    }

    #[test]
    fn top_k_orders_by_value_then_index() {
        assert_eq!(top_k(&[0.1, 0.7, 0.1, 0.1], 3), vec![1, 0, 2]);
        assert_eq!(top_k(&[0.5], 5), vec![0]);
    }
}
