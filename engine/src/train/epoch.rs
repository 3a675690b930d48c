//! One epoch: the training steps (forward, loss, backward, the strategy's gradients, SGD) and
//! the validation pass, each returning this rank's sums; the strategy adds them up across
//! ranks.

use std::time::{Duration, Instant};

use burn::module::Module;
use burn::optim::GradientsParams;
use burn::tensor::{Device, Int, Tensor, TensorData};
use kiln_kernels::preprocess::{RawBatch, preprocess};
use kiln_models::Model;
use kiln_models::autocast::autocast;

use crate::data::Batch;
use crate::data::transform::{IMAGENET_MEAN, IMAGENET_STD};
use crate::error::EngineError;
use crate::train::checkpoint::TrainerState;
use crate::train::loss::{cross_entropy, cross_entropy_sum};
use crate::train::metrics::correct_top_k;
use crate::train::progress::Progress;
use crate::train::scaler;
use crate::train::setup::Setup;
use crate::train::strategies::Strategy;

/// One epoch of training on this rank.
pub(crate) struct TrainSums {
    /// Summed loss over the images seen.
    pub loss: f64,
    /// Images whose top-1 prediction was right.
    pub correct: usize,
    /// Images trained on.
    pub seen: usize,
    /// The learning rate of the last step.
    pub lr: f64,
    /// Images skipped because they did not decode.
    pub skipped: usize,
    /// Seconds the steps took.
    pub seconds: f64,
    /// This rank's batch loss every [`STEP_LOSS_EVERY`] global steps: `(step, loss)`.
    pub step_losses: Vec<(usize, f32)>,
    /// Reads from the device the steps made: one at the epoch's end, plus about one a second
    /// while a progress bar shows the loss (and one a step for f16's loss scale).
    pub host_reads: usize,
    /// f16 steps skipped because their gradients overflowed.
    pub overflow_steps: usize,
}

/// How often (in global steps) the training loss of one batch is kept for TensorBoard.
pub(crate) const STEP_LOSS_EVERY: usize = 10;

/// One validation pass on this rank.
pub(crate) struct ValSums {
    /// Summed loss.
    pub loss: f64,
    /// Top-1 hits.
    pub correct: usize,
    /// Top-5 hits.
    pub top5: usize,
    /// Images validated.
    pub seen: usize,
}

/// Trains `model` for epoch `epoch` (0-based): every step takes a batch, runs forward and
/// backward, hands the gradients to `strategy` and lets SGD step.
pub(crate) fn train_epoch(
    setup: &mut Setup,
    strategy: &mut dyn Strategy,
    mut model: Model,
    state: &mut TrainerState,
    progress: &mut Progress,
    epochs: usize,
) -> Result<(Model, TrainSums), EngineError> {
    let epoch = state.epochs_done;
    let mut sums = TrainSums {
        loss: 0.0,
        correct: 0,
        seen: 0,
        lr: setup.schedule.base,
        skipped: 0,
        seconds: 0.0,
        step_losses: Vec::new(),
        host_reads: 0,
        overflow_steps: 0,
    };
    let started = Instant::now();
    let mut kept = KeptOnDevice::default();
    let indices = setup.train.sampler.indices(epoch);
    let upload = Loaded::stage(setup.image_size, setup.device.clone());
    let batches = setup.train.loader.staged_batches(epoch, indices, upload);
    for (step, loaded) in batches.take(setup.steps_per_epoch).enumerate() {
        let Loaded { batch, on_device } = loaded?;
        sums.skipped += batch.skipped.len();
        let lr = setup.schedule.lr(epoch, step);
        sums.lr = lr;
        let head_lr = lr * setup.head_ratio;
        let Some(input) = on_device else {
            // Every rank takes part in every step's collectives: a batch whose images all
            // failed to decode contributes zeros.
            if strategy.steps_without_images() {
                let grads = strategy.gradients(&model, GradientsParams::new())?;
                model = setup.sgd.step(model, grads, lr, head_lr);
                state.global_step += 1;
            }
            continue;
        };
        let n = batch.len();
        let (trained, loss_and_hits) = train_step(
            setup,
            strategy,
            model,
            state,
            input,
            (lr, head_lr),
            &mut sums,
        )?;
        model = trained;
        sums.seen += n;
        state.global_step += 1;
        kept.push(loss_and_hits, n, state.global_step);
        if progress.shows_steps() && kept.last_read.elapsed() >= READ_EVERY {
            kept.read(&mut sums);
        }
        let rate = sums.seen as f64 / started.elapsed().as_secs_f64();
        progress.step(epoch + 1, epochs, kept.mean_loss(&sums), rate);
    }
    kept.read(&mut sums);
    sums.seconds = started.elapsed().as_secs_f64();
    Ok((model, sums))
}

/// One optimizer step on a batch with images: the forward under the run's autocast, the
/// loss, the backward (scaled in f16), the strategy's gradients and SGD (skipped when f16
/// gradients overflowed). Returns the model and the step's `[loss, top-1 hits]`, left on the
/// device: nothing here waits for it.
fn train_step(
    setup: &mut Setup,
    strategy: &mut dyn Strategy,
    mut model: Model,
    state: &mut TrainerState,
    (x, y): (Tensor<4>, Tensor<1, Int>),
    (lr, head_lr): (f64, f64),
    sums: &mut TrainSums,
) -> Result<(Model, Tensor<1>), EngineError> {
    let n = y.dims()[0];
    let logits = autocast(setup.precision.low(), || model.forward(x));
    let loss = cross_entropy(logits.clone(), y.clone());
    let hits = logits
        .detach()
        .argmax(1)
        .reshape([n])
        .equal(y)
        .int()
        .sum()
        .float();
    let loss_and_hits = Tensor::cat(vec![loss.clone().detach(), hits], 0);
    let grads = scaler::backward(&model, loss, state.loss_scaler.as_ref());
    let grads = strategy.gradients(&model, grads)?;
    // Unscaling reads whether the gradients overflowed.
    sums.host_reads += usize::from(state.loss_scaler.is_some());
    match scaler::for_sgd(&model, grads, state.loss_scaler.as_mut()) {
        Some(grads) => model = setup.sgd.step(model, grads, lr, head_lr),
        // An f16 overflow: no update this step, as GradScaler skips `optimizer.step()`.
        None => sums.overflow_steps += 1,
    }
    Ok((model, loss_and_hits))
}

/// How often a progress bar's loss is read from the device.
const READ_EVERY: Duration = Duration::from_secs(1);

/// The steps' losses and top-1 hits, kept on the device until [`KeptOnDevice::read`]: once an
/// epoch, and about once a second while a progress bar shows the loss.
struct KeptOnDevice {
    /// Each step not read yet: `[loss, hits]`, its images, its global step.
    steps: Vec<(Tensor<1>, usize, usize)>,
    /// Images whose loss has been read.
    images_read: usize,
    /// When the last read was.
    last_read: Instant,
}

impl Default for KeptOnDevice {
    fn default() -> Self {
        Self {
            steps: Vec::new(),
            images_read: 0,
            last_read: Instant::now(),
        }
    }
}

impl KeptOnDevice {
    fn push(&mut self, loss_and_hits: Tensor<1>, images: usize, global_step: usize) {
        self.steps.push((loss_and_hits, images, global_step));
    }

    /// Reads every kept step in one transfer and adds it to `sums`, in step order (the sums
    /// are the same as reading each step at once).
    fn read(&mut self, sums: &mut TrainSums) {
        self.last_read = Instant::now();
        if self.steps.is_empty() {
            return;
        }
        let (values, steps): (Vec<_>, Vec<_>) = self
            .steps
            .drain(..)
            .map(|(values, images, step)| (values, (images, step)))
            .unzip();
        let values = Tensor::cat(values, 0)
            .into_data()
            .try_to_vec::<f32>()
            .unwrap_or_default();
        sums.host_reads += 1;
        for (pair, (images, step)) in values.chunks_exact(2).zip(steps) {
            let (loss, hits) = (pair[0], pair[1]);
            sums.loss += loss as f64 * images as f64;
            sums.correct += hits as usize;
            self.images_read += images;
            if step.is_multiple_of(STEP_LOSS_EVERY) {
                sums.step_losses.push((step, loss));
            }
        }
    }

    /// The mean loss of the images read so far; none before the first read.
    fn mean_loss(&self, sums: &TrainSums) -> Option<f64> {
        (self.images_read > 0).then(|| sums.loss / self.images_read as f64)
    }
}

/// Scores this rank's share of the validation set with `model` in eval mode.
pub(crate) fn validate(setup: &Setup, model: &Model) -> Result<ValSums, EngineError> {
    let classes = setup.classes.len();
    let device = setup.device.clone().inner();
    let eval = model.valid();
    let mut sums = ValSums {
        loss: 0.0,
        correct: 0,
        top5: 0,
        seen: 0,
    };
    let indices = setup.val.sampler.indices(0);
    let upload = Loaded::stage(setup.image_size, device.clone());
    for loaded in setup.val.loader.staged_batches(0, indices, upload) {
        let Loaded { batch, on_device } = loaded?;
        let Some((x, _)) = on_device else {
            continue;
        };
        let logits = autocast(setup.precision.low(), || eval.forward(x))
            .into_data()
            .try_to_vec::<f32>()
            .unwrap_or_default();
        sums.loss += cross_entropy_sum(&logits, &batch.labels, classes);
        sums.correct += correct_top_k(&logits, &batch.labels, classes, 1);
        sums.top5 += correct_top_k(&logits, &batch.labels, classes, 5);
        sums.seen += batch.len();
    }
    Ok(sums)
}

/// A batch from the loader with, when it has images, the model's input and labels already on
/// the device: [`Loaded::stage`] runs on the loader's prefetch thread, so the upload of the
/// next batch overlaps the step in flight.
struct Loaded {
    /// The labels and skipped images (the pixels are dropped once uploaded).
    batch: Batch,
    /// The input `[n, 3, size, size]` and labels `[n]` on the device; `None` for a batch
    /// without images.
    on_device: Option<(Tensor<4>, Tensor<1, Int>)>,
}

impl Loaded {
    /// The loader stage that uploads each batch to `device`.
    fn stage(size: u32, device: Device) -> impl Fn(Batch) -> Loaded + Send + 'static {
        move |mut batch| {
            let on_device = (!batch.is_empty()).then(|| to_device(&mut batch, size, &device));
            batch.pixels = Vec::new();
            Loaded { batch, on_device }
        }
    }
}

/// A batch as the model's input and labels on `device` (its float images are moved out, not
/// copied); raw batches are flipped and normalised there.
fn to_device(batch: &mut Batch, size: u32, device: &Device) -> (Tensor<4>, Tensor<1, Int>) {
    let n = batch.len();
    let s = size as usize;
    let x = if !batch.pixels.is_empty() {
        let raw = RawBatch {
            pixels: &batch.pixels,
            height: s,
            width: s,
            crops: &vec![(0, 0); n],
            flips: &batch.flips,
        };
        preprocess(&raw, s, IMAGENET_MEAN, IMAGENET_STD, device)
    } else {
        Tensor::from_data(
            TensorData::new(std::mem::take(&mut batch.images), [n, 3, s, s]),
            device,
        )
    };
    let y = Tensor::from_data(TensorData::new(batch.labels.clone(), [n]), device);
    (x, y)
}
