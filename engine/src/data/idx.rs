//! IDX files (the MNIST family's format, gzipped or not) to an image folder.
//!
//! `kiln data import fashion-mnist SRC DEST` writes `DEST/train/<class>/NNNNN.png` and
//! `DEST/val/<class>/NNNNN.png` from the four Fashion-MNIST files in `SRC`, with the ten class
//! names the dataset's authors gave.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use crate::error::EngineError;

/// Fashion-MNIST's class names, in label order.
pub const FASHION_MNIST_CLASSES: [&str; 10] = [
    "T-shirt_top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle_boot",
];

/// The contents of one IDX file: dimensions and the raw u8 values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Idx {
    /// Dimensions, outermost first (`[count, rows, cols]` for images, `[count]` for labels).
    pub dims: Vec<usize>,
    /// Row-major values.
    pub data: Vec<u8>,
}

/// The most values one IDX file may hold (Fashion-MNIST's largest holds 47 million): the
/// header's dimensions are checked against it before anything is allocated.
pub const MAX_IDX_VALUES: usize = 256 << 20;

/// Reads an IDX file of unsigned bytes, gunzipping it when its name ends in `.gz`.
pub fn read_idx(path: &Path) -> Result<Idx, EngineError> {
    let bad = |reason: String| EngineError::BadInput {
        what: path.display().to_string(),
        reason,
        expected: "an IDX file of unsigned bytes (magic 0x00 0x00 0x08 ndim)",
    };
    let file = File::open(path).map_err(|e| bad(e.to_string()))?;
    let mut reader: Box<dyn Read> = if path.extension().is_some_and(|e| e == "gz") {
        // Every member of the stream, as `gunzip` reads it, so trailing data is seen.
        Box::new(flate2::read::MultiGzDecoder::new(BufReader::new(file)))
    } else {
        Box::new(BufReader::new(file))
    };
    let mut head = Vec::with_capacity(4);
    (&mut reader)
        .take(4)
        .read_to_end(&mut head)
        .map_err(|e| bad(e.to_string()))?;
    if head.len() < 4 || head[..3] != [0, 0, 0x08] {
        return Err(bad(format!("header {head:02x?}")));
    }
    let ndim = head[3] as usize;
    let mut dims_bytes = Vec::with_capacity(4 * ndim);
    (&mut reader)
        .take(4 * ndim as u64)
        .read_to_end(&mut dims_bytes)
        .map_err(|e| bad(e.to_string()))?;
    if dims_bytes.len() < 4 * ndim {
        return Err(bad("truncated header".into()));
    }
    let dims: Vec<usize> = dims_bytes
        .chunks_exact(4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .collect();
    let count = dims
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .filter(|&n| n <= MAX_IDX_VALUES)
        .ok_or_else(|| {
            bad(format!(
                "dimensions {dims:?} make more than {MAX_IDX_VALUES} values"
            ))
        })?;
    // One byte past the declared values tells a file with trailing data from an exact one.
    let mut data = Vec::with_capacity((count + 1).min(1 << 20));
    reader
        .take(count as u64 + 1)
        .read_to_end(&mut data)
        .map_err(|e| bad(e.to_string()))?;
    if data.len() != count {
        let has = if data.len() > count {
            "more".to_string()
        } else {
            data.len().to_string()
        };
        return Err(bad(format!(
            "dimensions {dims:?} need {count} values, the file has {has}"
        )));
    }
    Ok(Idx { dims, data })
}

/// How many images of each class to write per split (`None`: all of them).
#[derive(Debug, Clone, Copy, Default)]
pub struct ImportLimit {
    /// Training images per class.
    pub train_per_class: Option<usize>,
    /// Validation images per class.
    pub val_per_class: Option<usize>,
}

/// Imports Fashion-MNIST from `src` (the four `*-ubyte[.gz]` files) into an image folder at
/// `dest` (new, or an empty directory) with `train/` and `val/` (the official test split).
/// The images are written into a staging directory beside `dest` that is renamed into place
/// at the end, so a bad file leaves nothing behind. Returns the images written per split.
pub fn import_fashion_mnist(
    src: &Path,
    dest: &Path,
    limit: ImportLimit,
) -> Result<(usize, usize), EngineError> {
    if dest.exists() {
        let empty = std::fs::read_dir(dest).is_ok_and(|mut d| d.next().is_none());
        if !empty {
            return Err(EngineError::BadInput {
                what: dest.display().to_string(),
                reason: "exists and is not an empty directory".into(),
                expected: "a new or empty directory to import into",
            });
        }
    }
    let name = dest
        .file_name()
        .map_or("import".into(), |n| n.to_string_lossy().into_owned());
    let staging = dest.with_file_name(format!(".{name}.importing-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    let written = write_splits(src, &staging, limit).and_then(|counts| {
        std::fs::rename(&staging, dest).map_err(|e| EngineError::io(dest, e))?;
        Ok(counts)
    });
    if written.is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    written
}

fn write_splits(
    src: &Path,
    dest: &Path,
    limit: ImportLimit,
) -> Result<(usize, usize), EngineError> {
    let find = |stem: &str| -> Result<PathBuf, EngineError> {
        [format!("{stem}.gz"), stem.to_string()]
            .into_iter()
            .map(|name| src.join(name))
            .find(|p| p.exists())
            .ok_or_else(|| EngineError::BadInput {
                what: src.join(stem).display().to_string(),
                reason: "not found".into(),
                expected: "Fashion-MNIST's IDX files (train-images-idx3-ubyte[.gz] and friends)",
            })
    };
    let train = write_split(
        &find("train-images-idx3-ubyte")?,
        &find("train-labels-idx1-ubyte")?,
        &dest.join("train"),
        limit.train_per_class,
    )?;
    let val = write_split(
        &find("t10k-images-idx3-ubyte")?,
        &find("t10k-labels-idx1-ubyte")?,
        &dest.join("val"),
        limit.val_per_class,
    )?;
    Ok((train, val))
}

fn write_split(
    images: &Path,
    labels: &Path,
    dest: &Path,
    per_class: Option<usize>,
) -> Result<usize, EngineError> {
    let images_idx = read_idx(images)?;
    let labels_idx = read_idx(labels)?;
    let [count, rows, cols] = images_idx.dims[..] else {
        return Err(EngineError::BadInput {
            what: images.display().to_string(),
            reason: format!("dimensions {:?}", images_idx.dims),
            expected: "[count, rows, cols]",
        });
    };
    if rows == 0 || cols == 0 {
        return Err(EngineError::BadInput {
            what: images.display().to_string(),
            reason: format!("dimensions {:?}", images_idx.dims),
            expected: "images of at least one row and one column",
        });
    }
    if labels_idx.dims != [count] {
        return Err(EngineError::BadInput {
            what: labels.display().to_string(),
            reason: format!("dimensions {:?}", labels_idx.dims),
            expected: "one label per image",
        });
    }
    for class in FASHION_MNIST_CLASSES {
        std::fs::create_dir_all(dest.join(class)).map_err(|e| EngineError::io(dest, e))?;
    }
    let mut written = [0usize; 10];
    for (i, &label) in labels_idx.data.iter().enumerate() {
        let class =
            FASHION_MNIST_CLASSES
                .get(label as usize)
                .ok_or_else(|| EngineError::BadInput {
                    what: labels.display().to_string(),
                    reason: format!("label {label} at index {i}"),
                    expected: "labels 0..9",
                })?;
        if per_class.is_some_and(|n| written[label as usize] >= n) {
            continue;
        }
        let pixels = images_idx.data[i * rows * cols..(i + 1) * rows * cols].to_vec();
        let image = image::GrayImage::from_raw(cols as u32, rows as u32, pixels)
            .expect("IDX slice has rows * cols bytes");
        let path = dest.join(class).join(format!("{i:05}.png"));
        image
            .save(&path)
            .map_err(|e| EngineError::io(&path, std::io::Error::other(e)))?;
        written[label as usize] += 1;
    }
    Ok(written.iter().sum())
}
