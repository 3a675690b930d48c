//! What differs between training in one process and data-parallel over many, behind one seam
//! (burn-train's strategies): the epoch loop asks its [`Strategy`] for the step's gradients and
//! the epoch's sums, and never asks whether it is distributed.
//!
//! - [`SingleDevice`]: one process; every collective is the identity.
//! - [`DataParallel`]: Horovod's semantics over a [`crate::dist::Transport`]: rank 0's start
//!   broadcast, gradients averaged in buckets, sums added across ranks.

mod data_parallel;
mod single;

pub use data_parallel::{DataParallel, Plan};
pub use single::SingleDevice;

use burn::optim::GradientsParams;
use burn::tensor::Device;
use kiln_models::{Arch, Model};

use crate::error::EngineError;
use crate::train::checkpoint::TrainerState;
use crate::train::sgd::Sgd;

/// How a trainer's ranks work together.
pub trait Strategy: Send {
    /// This process's rank, from 0; rank 0 reads checkpoints and writes every file.
    fn rank(&self) -> usize;

    /// Number of ranks.
    fn world_size(&self) -> usize;

    /// Makes every rank start from rank 0's model, optimizer state and trainer state, and
    /// checks that the ranks agree on `plan`; returns this rank's model and state.
    fn start(
        &mut self,
        model: Model,
        arch: Arch,
        sgd: &mut Sgd,
        state: TrainerState,
        device: &Device,
        plan: &Plan,
    ) -> Result<(Model, TrainerState), EngineError>;

    /// One step's gradients as the optimizer is to see them.
    fn gradients(
        &mut self,
        model: &Model,
        grads: GradientsParams,
    ) -> Result<GradientsParams, EngineError>;

    /// Whether a step whose images all failed to decode still runs (with zero gradients),
    /// because every rank must take part in every step's collectives.
    fn steps_without_images(&self) -> bool;

    /// Element-wise sums of `values` over the ranks, bitwise the same on every rank.
    fn sum(&mut self, values: &[f64]) -> Result<Vec<f64>, EngineError>;

    /// The run ended: `None` when it succeeded, else its error (the other ranks stop with it
    /// instead of waiting for this one).
    fn finish(&mut self, failure: Option<&EngineError>) -> Result<(), EngineError>;
}
