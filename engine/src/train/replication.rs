//! What a distributed trainer does so that every rank trains the same model: start from rank
//! 0's weights, momentum buffers and trainer state, and refuse to start when the ranks would
//! call different collectives (another parameter layout, dataset size or step count).

use std::path::Path;

use burn::tensor::Device;
use kiln_models::torchvision::{self, LoadOptions};
use kiln_models::{Arch, Model};

use crate::dist::{GradientBuckets, Transport, replicas};
use crate::error::EngineError;
use crate::train::checkpoint::TrainerState;
use crate::train::sgd::Sgd;

/// The numbers every rank must agree on before the first step.
pub struct Plan {
    /// Training images.
    pub train_len: usize,
    /// Validation images.
    pub val_len: usize,
    /// Classes.
    pub classes: usize,
    /// Image side.
    pub image_size: usize,
    /// Steps per epoch.
    pub steps_per_epoch: usize,
}

/// Replaces this rank's model, optimizer and trainer state by rank 0's, then checks that
/// all ranks share the gradient layout and `plan`.
#[allow(clippy::too_many_arguments)]
pub fn start_from_rank_0(
    t: &mut dyn Transport,
    model: Model,
    arch: Arch,
    sgd: &mut Sgd,
    state: TrainerState,
    device: &Device,
    buckets: &GradientBuckets,
    plan: &Plan,
) -> Result<(Model, TrainerState), EngineError> {
    let root = t.rank() == 0;
    let weights = replicas::broadcast_tensors(t, torchvision::state_dict(&model))?;
    let model = if root {
        model
    } else {
        let from = Path::new("rank 0's broadcast");
        torchvision::load_state_dict(model, weights, arch, from, LoadOptions::default())?
    };
    let momentum = replicas::broadcast_tensors(t, sgd.state())?;
    if !root {
        sgd.load_state(momentum, device);
    }
    let state = replicas::broadcast_value(t, state)?;
    replicas::check_same(t, "trainable parameter layout", &buckets.layout(&model))?;
    // Ranks that disagree on these would call different numbers of collectives.
    let numbers = [
        plan.train_len,
        plan.val_len,
        plan.classes,
        plan.image_size,
        plan.steps_per_epoch,
    ];
    let numbers: Vec<u8> = numbers
        .iter()
        .flat_map(|v| (*v as u64).to_le_bytes())
        .collect();
    replicas::check_same(
        t,
        "dataset sizes, classes, image size or steps per epoch",
        &numbers,
    )?;
    Ok((model, state))
}
