//! Decoding an image file to 8-bit RGB: png, jpeg, bmp, gif and webp; grayscale and alpha
//! become RGB. Files over the dimension limit are refused before their pixels are decoded, so
//! a decompression bomb costs nothing.

use std::io::{BufRead, Cursor, Seek};
use std::path::Path;

use image::{ImageReader, Limits, RgbImage};

use crate::error::EngineError;

/// Widest or tallest image kiln decodes.
pub const MAX_SIDE: u32 = 16_384;
/// Most bytes one decode may allocate.
pub const MAX_ALLOC: u64 = 1 << 30;

/// Decodes `path` to RGB; the error names the file and why.
pub fn decode_rgb(path: &Path) -> Result<RgbImage, EngineError> {
    let name = path.display().to_string();
    let reader = ImageReader::open(path).map_err(|e| bad(&name, e.to_string()))?;
    decode(reader, &name, MAX_ALLOC)
}

/// Decodes an encoded image held in memory (a request body), allocating at most `max_alloc`
/// bytes; `name` names it in errors.
pub fn decode_rgb_bytes(bytes: &[u8], name: &str, max_alloc: u64) -> Result<RgbImage, EngineError> {
    decode(ImageReader::new(Cursor::new(bytes)), name, max_alloc)
}

fn bad(name: &str, reason: String) -> EngineError {
    EngineError::BadImage {
        path: name.to_string(),
        reason,
    }
}

fn decode<R: BufRead + Seek>(
    reader: ImageReader<R>,
    name: &str,
    max_alloc: u64,
) -> Result<RgbImage, EngineError> {
    let mut reader = reader
        .with_guessed_format()
        .map_err(|e| bad(name, e.to_string()))?;
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(max_alloc);
    reader.limits(limits);
    let image = reader.decode().map_err(|e| match e {
        image::ImageError::Limits(l) => bad(
            name,
            format!(
                "{l}: over the limit of {MAX_SIDE}x{MAX_SIDE} pixels and {max_alloc} bytes \
                 decoded (a decompression bomb?)"
            ),
        ),
        other => bad(name, other.to_string()),
    })?;
    Ok(image.to_rgb8())
}
