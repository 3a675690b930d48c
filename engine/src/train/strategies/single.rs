//! Training in one process: nothing to share.

use burn::optim::GradientsParams;
use burn::tensor::Device;
use kiln_models::{Arch, Model};

use crate::error::EngineError;
use crate::train::checkpoint::TrainerState;
use crate::train::sgd::Sgd;
use crate::train::strategies::{Plan, Strategy};

/// One process, one device.
#[derive(Debug, Default, Clone, Copy)]
pub struct SingleDevice;

impl Strategy for SingleDevice {
    fn rank(&self) -> usize {
        0
    }

    fn world_size(&self) -> usize {
        1
    }

    fn start(
        &mut self,
        model: Model,
        _arch: Arch,
        _sgd: &mut Sgd,
        state: TrainerState,
        _device: &Device,
        _plan: &Plan,
    ) -> Result<(Model, TrainerState), EngineError> {
        Ok((model, state))
    }

    fn gradients(
        &mut self,
        _model: &Model,
        grads: GradientsParams,
    ) -> Result<GradientsParams, EngineError> {
        Ok(grads)
    }

    fn steps_without_images(&self) -> bool {
        false
    }

    fn sum(&mut self, values: &[f64]) -> Result<Vec<f64>, EngineError> {
        Ok(values.to_vec())
    }

    fn finish(&mut self, _failure: Option<&EngineError>) -> Result<(), EngineError> {
        Ok(())
    }
}
