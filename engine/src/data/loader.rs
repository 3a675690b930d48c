//! The parallel loader: images decoded and transformed on a rayon pool, batches assembled on a
//! prefetch thread a bounded number ahead of training (and, with [`Loader::staged_batches`],
//! uploaded to the device there, so the copy overlaps the step in flight), the same batches for
//! the same seed however many threads run. [`Sampler`] gives each rank its shard with PyTorch's
//! `DistributedSampler` semantics.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, sync_channel};

use image::RgbImage;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::data::decode::decode_rgb;
use crate::data::transform::{
    Augment, eval_transform, normalize_into, train_crop, train_transform,
};
use crate::error::EngineError;

/// Which indices one rank reads in one epoch, as `torch.utils.data.DistributedSampler`:
/// shuffled by `seed + epoch` when `shuffle`, padded by wrapping around so every rank gets
/// `ceil(len / world)` indices, rank `r` taking positions `r, r + world, ...`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sampler {
    /// Dataset size.
    pub len: usize,
    /// Number of ranks.
    pub world: usize,
    /// This rank.
    pub rank: usize,
    /// Shuffle each epoch.
    pub shuffle: bool,
    /// Base seed.
    pub seed: u64,
}

impl Sampler {
    /// This rank's indices for `epoch`.
    pub fn indices(&self, epoch: usize) -> Vec<usize> {
        let mut all: Vec<usize> = (0..self.len).collect();
        if self.shuffle {
            all.shuffle(&mut ChaCha8Rng::seed_from_u64(
                self.seed.wrapping_add(epoch as u64),
            ));
        }
        if self.len == 0 {
            return all;
        }
        let per_rank = self.len.div_ceil(self.world);
        let total = per_rank * self.world;
        let padded: Vec<usize> = all.iter().cycle().take(total).copied().collect();
        padded
            .into_iter()
            .skip(self.rank)
            .step_by(self.world)
            .collect()
    }
}

/// How a [`Loader`] makes batches.
#[derive(Debug, Clone)]
pub struct LoaderConfig {
    /// Images per batch (the last batch may be smaller).
    pub batch_size: usize,
    /// Side of the square images produced.
    pub image_size: u32,
    /// Training augmentation, or `None` for the validation transform.
    pub augment: Option<Augment>,
    /// Seed of shuffling and augmentation.
    pub seed: u64,
    /// Decode threads.
    pub workers: usize,
    /// Batches prepared ahead of the one being trained on.
    pub prefetch: usize,
    /// Skip (and count) images that fail to decode instead of failing.
    pub skip_bad_images: bool,
    /// Normalisation mean per channel.
    pub mean: [f32; 3],
    /// Normalisation std per channel.
    pub std: [f32; 3],
    /// Leave the flip and the normalisation to the device: batches carry the cropped images'
    /// bytes and flips (`pixels`, `flips`) instead of `images`, a quarter of the bytes to
    /// upload (the trainer sets this on cube devices, where `kernels::preprocess` finishes
    /// the batch).
    pub raw: bool,
}

/// One batch, ready for the device.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// `[n, 3, size, size]` normalised floats, row-major (empty for a raw batch).
    pub images: Vec<f32>,
    /// Raw batches: `[n, size, size, 3]` RGB bytes, cropped and resized but not flipped.
    pub pixels: Vec<u8>,
    /// Raw batches: per image, whether it is to be flipped horizontally.
    pub flips: Vec<bool>,
    /// `n` labels.
    pub labels: Vec<i64>,
    /// Images skipped because they failed to decode, with the reason.
    pub skipped: Vec<String>,
}

impl Batch {
    /// Images in the batch.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether the batch holds no image.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

/// Makes batches from labeled image paths.
pub struct Loader {
    samples: Arc<Vec<(PathBuf, usize)>>,
    config: LoaderConfig,
    pool: Arc<rayon::ThreadPool>,
}

impl Loader {
    /// A loader over `samples` (path, label).
    pub fn new(samples: Vec<(PathBuf, usize)>, config: LoaderConfig) -> Result<Self, EngineError> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(config.workers.max(1))
            .thread_name(|i| format!("kiln-loader-{i}"))
            .build()
            .map_err(|e| EngineError::BadOption {
                option: "workers",
                value: config.workers.to_string(),
                expected: format!("a thread count the system allows ({e})"),
            })?;
        Ok(Self {
            samples: Arc::new(samples),
            config,
            pool: Arc::new(pool),
        })
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// Whether there are no samples.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// The batches of one epoch over `indices` (see [`Sampler`]), made on a background thread
    /// at most `prefetch` ahead. Dropping the iterator stops the thread.
    pub fn batches(&self, epoch: usize, indices: Vec<usize>) -> BatchIter {
        self.staged_batches(epoch, indices, |batch| batch)
    }

    /// As [`Loader::batches`], each batch passed through `stage` on the background thread
    /// before it is handed over: the trainer uploads it to the device there, so the copy (and,
    /// on cube devices, the preprocess kernel, on that thread's own stream) runs while the
    /// training thread's step is still in flight, as PyTorch's `pin_memory` +
    /// `non_blocking=True` copies do.
    pub fn staged_batches<T: Send + 'static>(
        &self,
        epoch: usize,
        indices: Vec<usize>,
        stage: impl Fn(Batch) -> T + Send + 'static,
    ) -> BatchIter<T> {
        let (tx, rx) = sync_channel(self.config.prefetch.max(1));
        let samples = Arc::clone(&self.samples);
        let config = self.config.clone();
        let pool = Arc::clone(&self.pool);
        std::thread::Builder::new()
            .name("kiln-prefetch".into())
            .spawn(move || {
                for chunk in indices.chunks(config.batch_size.max(1)) {
                    let batch = pool
                        .install(|| make_batch(&samples, chunk, epoch, &config))
                        .map(&stage);
                    let failed = batch.is_err();
                    if tx.send(batch).is_err() || failed {
                        return;
                    }
                }
            })
            .expect("spawning the prefetch thread");
        BatchIter { rx }
    }
}

/// Batches of one epoch (or what a stage made of them); see [`Loader::batches`].
pub struct BatchIter<T = Batch> {
    rx: Receiver<Result<T, EngineError>>,
}

impl<T> Iterator for BatchIter<T> {
    type Item = Result<T, EngineError>;
    fn next(&mut self) -> Option<Self::Item> {
        self.rx.recv().ok()
    }
}

/// A per-sample seed: the same image gets the same augmentation whatever thread decodes it.
fn sample_seed(seed: u64, epoch: usize, index: usize) -> u64 {
    let mut x = seed
        ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ (index as u64).wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    x ^= x >> 31;
    x.wrapping_mul(0x94D0_49BB_1331_11EB)
}

fn make_batch(
    samples: &[(PathBuf, usize)],
    indices: &[usize],
    epoch: usize,
    config: &LoaderConfig,
) -> Result<Batch, EngineError> {
    let size = config.image_size;
    let per_image = (size * size) as usize * 3;
    // Per image: the finished floats, or the bytes and the flip for the device to finish.
    enum Item {
        Floats(Vec<f32>),
        Raw(RgbImage, bool),
    }
    let items: Vec<Result<(Item, i64), EngineError>> = indices
        .par_iter()
        .map(|&i| {
            let (path, label) = &samples[i];
            let image = decode_rgb(path)?;
            let (image, flip) = match config.augment {
                Some(augment) => {
                    let mut rng = ChaCha8Rng::seed_from_u64(sample_seed(config.seed, epoch, i));
                    if config.raw {
                        train_crop(&image, size, augment, &mut rng)
                    } else {
                        (train_transform(&image, size, augment, &mut rng), false)
                    }
                }
                None => (eval_transform(&image, size), false),
            };
            if config.raw {
                return Ok((Item::Raw(image, flip), *label as i64));
            }
            let mut floats = Vec::with_capacity(per_image);
            normalize_into(&image, config.mean, config.std, &mut floats);
            Ok((Item::Floats(floats), *label as i64))
        })
        .collect();
    let mut batch = Batch {
        images: Vec::with_capacity(if config.raw {
            0
        } else {
            indices.len() * per_image
        }),
        pixels: Vec::with_capacity(if config.raw {
            indices.len() * per_image
        } else {
            0
        }),
        flips: Vec::new(),
        labels: Vec::with_capacity(indices.len()),
        skipped: Vec::new(),
    };
    for item in items {
        match item {
            Ok((Item::Floats(floats), label)) => {
                batch.images.extend(floats);
                batch.labels.push(label);
            }
            Ok((Item::Raw(image, flip), label)) => {
                batch.pixels.extend_from_slice(image.as_raw());
                batch.flips.push(flip);
                batch.labels.push(label);
            }
            Err(e) if config.skip_bad_images => batch.skipped.push(e.to_string()),
            Err(e) => return Err(e),
        }
    }
    Ok(batch)
}
