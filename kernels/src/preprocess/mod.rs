//! On-device preprocessing: a batch of u8 RGB images as decoded (NHWC) becomes the normalised
//! f32 NCHW batch on the device, with a per-sample crop offset and horizontal flip, so the loader
//! uploads a quarter of the bytes and the device does the arithmetic.
//!
//! [`preprocess`] routes by device: on cube devices the bytes travel packed four to a 32-bit
//! word and one cubecl kernel writes the batch ([`PreprocessBackend`], `cube.rs`); elsewhere
//! (flex) `reference.rs` does it with burn ops.

pub mod cube;
pub mod reference;

use burn::backend::{
    Backend, Dispatch, backend_extension,
    tensor::{FloatTensor, IntTensor},
};
#[cfg(feature = "fusion")]
use burn::tensor::{DType, Shape};
use burn::tensor::{Device, Int, Tensor, TensorData};
use burn_cubecl::CubeBackend;

use crate::is_cube_device;

/// A batch of decoded images of one size, before cropping, flipping and normalising.
#[derive(Debug, Clone, Copy)]
pub struct RawBatch<'a> {
    /// `[n, height, width, 3]` RGB bytes, row-major.
    pub pixels: &'a [u8],
    /// Image height.
    pub height: usize,
    /// Image width.
    pub width: usize,
    /// Per sample, the top-left corner `(y, x)` of the `size` x `size` crop.
    pub crops: &'a [(u32, u32)],
    /// Per sample, whether to flip horizontally (after cropping).
    pub flips: &'a [bool],
}

impl RawBatch<'_> {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.crops.len()
    }

    /// Whether the batch has no image.
    pub fn is_empty(&self) -> bool {
        self.crops.is_empty()
    }

    /// # Panics
    /// When the lengths disagree or a crop leaves the image.
    fn check(&self, size: usize) {
        let n = self.len();
        assert_eq!(self.flips.len(), n, "preprocess: one flip per crop");
        assert_eq!(
            self.pixels.len(),
            n * self.height * self.width * 3,
            "preprocess: pixels are not [n, height, width, 3]"
        );
        for (i, &(y, x)) in self.crops.iter().enumerate() {
            assert!(
                y as usize + size <= self.height && x as usize + size <= self.width,
                "preprocess: sample {i}: a {size}x{size} crop at ({y}, {x}) leaves the {}x{} image",
                self.height,
                self.width
            );
        }
    }
}

/// Backend operation behind [`preprocess`]; cube backends only.
#[backend_extension(Cube, Fusion: cfg(feature = "fusion"))]
pub trait PreprocessBackend: Backend {
    /// `[n, 3, size, size]` f32 from the bytes packed little-endian in 32-bit `words` and the
    /// per-sample `params` `[n * 3]` = (crop y, crop x, flip), normalised as
    /// `byte * scale[c] + shift[c]`.
    #[allow(clippy::too_many_arguments)]
    #[fusion(dtype = DType::F32, shape = Shape::new([*n, 3, *size, *size]))]
    fn preprocess(
        words: IntTensor<Self>,
        params: IntTensor<Self>,
        n: usize,
        height: usize,
        width: usize,
        size: usize,
        scale: [f32; 3],
        shift: [f32; 3],
    ) -> FloatTensor<Self>;
}

impl PreprocessBackend for CubeBackend {
    fn preprocess(
        words: IntTensor<Self>,
        params: IntTensor<Self>,
        n: usize,
        height: usize,
        width: usize,
        size: usize,
        scale: [f32; 3],
        shift: [f32; 3],
    ) -> FloatTensor<Self> {
        cube::preprocess(words, params, n, height, width, size, scale, shift)
    }
}

/// The normalised `[n, 3, size, size]` f32 batch of `raw` on `device` (torchvision's
/// `ToTensor` + `Normalize(mean, std)` after each sample's crop and flip). Autodiff devices get
/// a tensor without gradient tracking, like any loaded batch.
///
/// # Panics
/// When `raw`'s lengths disagree or a crop leaves its image.
pub fn preprocess(
    raw: &RawBatch<'_>,
    size: usize,
    mean: [f32; 3],
    std: [f32; 3],
    device: &Device,
) -> Tensor<4> {
    let device = device.clone().inner();
    if !is_cube_device(&device) {
        return reference::preprocess(raw, size, mean, std, &device);
    }
    raw.check(size);
    let n = raw.len();
    // Four bytes to a word, little-endian; the tail padded with zeros.
    let words: Vec<i32> = raw
        .pixels
        .chunks(4)
        .map(|c| {
            let mut b = [0u8; 4];
            b[..c.len()].copy_from_slice(c);
            i32::from_le_bytes(b)
        })
        .collect();
    let params: Vec<i32> = raw
        .crops
        .iter()
        .zip(raw.flips)
        .flat_map(|(&(y, x), &flip)| [y as i32, x as i32, flip as i32])
        .collect();
    let upload = |values: Vec<i32>| {
        let len = values.len();
        Tensor::<1, Int>::from_data(TensorData::new(values, [len]), &device).into_dispatch()
    };
    let scale = std.map(|s| 1.0 / (255.0 * s));
    let shift = [0, 1, 2].map(|c| -mean[c] / std[c]);
    let out = <Dispatch as PreprocessBackend>::preprocess(
        upload(words),
        upload(params),
        n,
        raw.height,
        raw.width,
        size,
        scale,
        shift,
    );
    Tensor::from_dispatch(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MEAN: [f32; 3] = [0.485, 0.456, 0.406];
    const STD: [f32; 3] = [0.229, 0.224, 0.225];

    /// `n` images of `h` x `w` with every byte value (0..=255) present.
    fn pixels(n: usize, h: usize, w: usize) -> Vec<u8> {
        (0..n * h * w * 3)
            .map(|i| ((i * 37 + i / 7) % 256) as u8)
            .collect()
    }

    /// Within 1e-5 of the reference (the kernel folds the constants into one multiply-add).
    fn close(got: Tensor<4>, want: Tensor<4>, what: &str) {
        assert_eq!(got.dims(), want.dims(), "{what}: shape");
        let got = got.into_data().try_to_vec::<f32>().unwrap();
        let want = want.into_data().try_to_vec::<f32>().unwrap();
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!((g - w).abs() <= 1e-5, "{what}: element {i}: {g} vs {w}");
        }
    }

    // Sizes: empty batch, one 1x1 image, odd sizes (not a multiple of a workgroup or of the
    // 4-byte word), and a large batch; crops at every corner, with and without flips.
    crate::test_device!(matches_the_reference, |device: Device| {
        for (n, h, w, size) in [
            (0usize, 4usize, 4usize, 2usize),
            (1, 1, 1, 1),
            (3, 7, 9, 5),
            (5, 33, 31, 29),
            (64, 40, 40, 32),
        ] {
            let px = pixels(n, h, w);
            let crops: Vec<(u32, u32)> = (0..n)
                .map(|i| match i % 4 {
                    0 => (0, 0),
                    1 => ((h - size) as u32, (w - size) as u32),
                    2 => (0, (w - size) as u32),
                    _ => (((h - size) / 2) as u32, 0),
                })
                .collect();
            let flips: Vec<bool> = (0..n).map(|i| i % 3 == 1).collect();
            let raw = RawBatch {
                pixels: &px,
                height: h,
                width: w,
                crops: &crops,
                flips: &flips,
            };
            let got = preprocess(&raw, size, MEAN, STD, &device);
            let want = reference::preprocess(&raw, size, MEAN, STD, &device);
            close(got, want, &format!("{n}x{h}x{w} -> {size}"));
        }
    });

    // Hand-checked: a 2x3 image, the 2x2 crop at (0, 1), flipped, mean 0 and std 1.
    crate::test_device!(crops_flips_and_normalises, |device: Device| {
        #[rustfmt::skip]
        let px = [
            0u8, 128, 255,   10, 20, 30,   40, 50, 60,
            1, 2, 3,         4, 5, 6,      7, 8, 9,
        ];
        let raw = RawBatch {
            pixels: &px,
            height: 2,
            width: 3,
            crops: &[(0, 1)],
            flips: &[true],
        };
        let got = preprocess(&raw, 2, [0.0; 3], [1.0; 3], &device)
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        // Crop columns 1..3, flipped: column 2 then column 1; channel-major.
        #[rustfmt::skip]
        let want = [
            40.0, 10.0, 7.0, 4.0,
            50.0, 20.0, 8.0, 5.0,
            60.0, 30.0, 9.0, 6.0,
        ];
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!((g - w / 255.0).abs() < 1e-6, "element {i}: {got:?}");
        }
    });

    crate::test_device!(autodiff_device_gives_a_plain_batch, |device: Device| {
        let px = pixels(2, 3, 3);
        let raw = RawBatch {
            pixels: &px,
            height: 3,
            width: 3,
            crops: &[(0, 0), (1, 1)],
            flips: &[false, true],
        };
        let got = preprocess(&raw, 2, MEAN, STD, &device.clone().autodiff());
        assert!(!got.is_autodiff());
        close(
            got,
            reference::preprocess(&raw, 2, MEAN, STD, &device),
            "autodiff",
        );
    });
}
