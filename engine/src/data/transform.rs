//! Image transforms as torchvision's reference classification recipe: training takes
//! `RandomResizedCrop(size)` and a horizontal flip, validation `Resize(size * 256 / 224)` and
//! `CenterCrop(size)`; both end in `ToTensor` and `Normalize` with ImageNet's mean and std.

use image::RgbImage;
use image::imageops::{self, FilterType};
use rand::Rng;

/// ImageNet channel means, as torchvision normalises.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet channel standard deviations.
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// Training augmentation (`--augment`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Augment {
    /// `RandomResizedCrop` + horizontal flip (torchvision's recipe).
    Standard,
    /// The validation resize and crop, + horizontal flip.
    Flip,
    /// The validation transform.
    None,
}

/// `RandomResizedCrop(size, scale=(0.08, 1), ratio=(3/4, 4/3))`, torchvision's algorithm.
pub fn random_resized_crop(image: &RgbImage, size: u32, rng: &mut impl Rng) -> RgbImage {
    let (w, h) = image.dimensions();
    let area = (w * h) as f64;
    let (log_lo, log_hi) = ((3.0f64 / 4.0).ln(), (4.0f64 / 3.0).ln());
    for _ in 0..10 {
        let target = area * rng.random_range(0.08..=1.0);
        let aspect = rng.random_range(log_lo..=log_hi).exp();
        let cw = (target * aspect).sqrt().round() as u32;
        let ch = (target / aspect).sqrt().round() as u32;
        if cw > 0 && ch > 0 && cw <= w && ch <= h {
            let x = rng.random_range(0..=w - cw);
            let y = rng.random_range(0..=h - ch);
            return resize_exact(&imageops::crop_imm(image, x, y, cw, ch).to_image(), size);
        }
    }
    // Fallback: the whole image, clamped to the ratio range, centred.
    let ratio = w as f64 / h as f64;
    let (cw, ch) = if ratio < 0.75 {
        (w, (w as f64 / 0.75).round() as u32)
    } else if ratio > 4.0 / 3.0 {
        ((h as f64 * 4.0 / 3.0).round() as u32, h)
    } else {
        (w, h)
    };
    let (cw, ch) = (cw.min(w).max(1), ch.min(h).max(1));
    let crop = imageops::crop_imm(image, (w - cw) / 2, (h - ch) / 2, cw, ch).to_image();
    resize_exact(&crop, size)
}

/// `Resize(side)`: the shorter side becomes `side`, keeping the aspect ratio.
pub fn resize_shorter(image: &RgbImage, side: u32) -> RgbImage {
    let (w, h) = image.dimensions();
    let (nw, nh) = if w <= h {
        (side, ((h as u64 * side as u64) / w as u64).max(1) as u32)
    } else {
        (((w as u64 * side as u64) / h as u64).max(1) as u32, side)
    };
    if (nw, nh) == (w, h) {
        return image.clone();
    }
    imageops::resize(image, nw, nh, FilterType::Triangle)
}

/// `CenterCrop(size)`; pads with black where the image is smaller, as torchvision does.
pub fn center_crop(image: &RgbImage, size: u32) -> RgbImage {
    let (w, h) = image.dimensions();
    if w >= size && h >= size {
        return imageops::crop_imm(image, (w - size) / 2, (h - size) / 2, size, size).to_image();
    }
    let mut out = RgbImage::new(size, size);
    let (x, y) = ((size.saturating_sub(w)) / 2, (size.saturating_sub(h)) / 2);
    imageops::overlay(&mut out, image, x as i64, y as i64);
    out
}

/// Most pixels the validation transform's resize may produce: an image far longer than wide
/// would otherwise be resized to gigabytes before its centre is cropped.
pub const MAX_RESIZED_PIXELS: u64 = 1 << 24;

/// Whether [`eval_transform`] of a `w` x `h` image at `size` stays within
/// [`MAX_RESIZED_PIXELS`]; the error says what it would take.
pub fn check_eval_size(w: u32, h: u32, size: u32) -> Result<(), String> {
    let side = (size * 256 / 224) as u64;
    let (short, long) = (w.min(h).max(1) as u64, w.max(h) as u64);
    let resized = side * (long * side / short).max(1);
    if resized > MAX_RESIZED_PIXELS {
        return Err(format!(
            "a {w}x{h} image is too elongated: with its shorter side resized to {side} it \
             would hold {resized} pixels, over the limit of {MAX_RESIZED_PIXELS}"
        ));
    }
    Ok(())
}

/// Validation transform: `Resize(size * 256 / 224)` then `CenterCrop(size)`.
pub fn eval_transform(image: &RgbImage, size: u32) -> RgbImage {
    center_crop(&resize_shorter(image, size * 256 / 224), size)
}

/// Training transform for `augment`.
pub fn train_transform(
    image: &RgbImage,
    size: u32,
    augment: Augment,
    rng: &mut impl Rng,
) -> RgbImage {
    let (mut out, flip) = train_crop(image, size, augment, rng);
    if flip {
        imageops::flip_horizontal_in_place(&mut out);
    }
    out
}

/// [`train_transform`] without the flip, and whether to flip: the same random draws, for a
/// loader that leaves the flip to the device.
pub fn train_crop(
    image: &RgbImage,
    size: u32,
    augment: Augment,
    rng: &mut impl Rng,
) -> (RgbImage, bool) {
    let out = match augment {
        Augment::Standard => random_resized_crop(image, size, rng),
        Augment::Flip | Augment::None => eval_transform(image, size),
    };
    let flip = augment != Augment::None && rng.random_bool(0.5);
    (out, flip)
}

fn resize_exact(image: &RgbImage, size: u32) -> RgbImage {
    if image.dimensions() == (size, size) {
        return image.clone();
    }
    imageops::resize(image, size, size, FilterType::Triangle)
}

/// `ToTensor` + `Normalize(mean, std)`: appends the CHW floats of `image` to `out`.
pub fn normalize_into(image: &RgbImage, mean: [f32; 3], std: [f32; 3], out: &mut Vec<f32>) {
    let pixels = image.as_raw();
    for c in 0..3 {
        let (m, s) = (mean[c], std[c]);
        out.extend(
            pixels
                .chunks_exact(3)
                .map(|p| (p[c] as f32 / 255.0 - m) / s),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elongated_images_are_refused_before_their_resize() {
        assert!(check_eval_size(640, 480, 224).is_ok());
        assert!(check_eval_size(28, 28, 64).is_ok());
        // 1 x 16384 at 224 would be resized to 256 x 4,194,304.
        let e = check_eval_size(1, 16_384, 224).unwrap_err();
        assert!(e.contains("1x16384") && e.contains("too elongated"), "{e}");
        assert!(check_eval_size(16_384, 1, 64).is_err());
        assert!(check_eval_size(16_384, 1, 8).is_ok());
    }
}
