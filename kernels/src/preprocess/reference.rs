//! On-device preprocessing from plain burn ops: what flex runs, and what the cube kernel must
//! equal. Per sample: crop `size` x `size` at its offset, flip horizontally if asked, then
//! torchvision's `ToTensor` + `Normalize` (`(p / 255 - mean) / std`) into NCHW.

use burn::tensor::{Device, Tensor, TensorData};

use super::RawBatch;

/// The normalised `[n, 3, size, size]` batch of `raw`.
pub fn preprocess(
    raw: &RawBatch<'_>,
    size: usize,
    mean: [f32; 3],
    std: [f32; 3],
    device: &Device,
) -> Tensor<4> {
    raw.check(size);
    let n = raw.len();
    if n == 0 || size == 0 {
        return Tensor::empty([n, 3, size, size], device);
    }
    let (h, w) = (raw.height, raw.width);
    let pixels = Tensor::<4>::from_data(TensorData::new(raw.pixels.to_vec(), [n, h, w, 3]), device);
    let samples: Vec<Tensor<4>> = (0..n)
        .map(|i| {
            let (y, x) = raw.crops[i];
            let (y, x) = (y as usize, x as usize);
            let crop = pixels
                .clone()
                .slice([i..i + 1, y..y + size, x..x + size, 0..3]);
            let crop = if raw.flips[i] { crop.flip([2]) } else { crop };
            crop.permute([0, 3, 1, 2])
        })
        .collect();
    let batch = Tensor::cat(samples, 0);
    let mean = Tensor::<1>::from_floats(mean, device).reshape([1, 3, 1, 1]);
    let std = Tensor::<1>::from_floats(std, device).reshape([1, 3, 1, 1]);
    (batch.div_scalar(255.0) - mean) / std
}
