//! Data-parallel training with Horovod's semantics: every rank starts from rank 0's weights,
//! momentum buffers and trainer state, refuses to start when the ranks would call different
//! collectives (another parameter layout, dataset size or step count), averages every step's
//! gradients in fused buckets, and adds the epoch's sums up across ranks.

use std::path::Path;

use burn::optim::GradientsParams;
use burn::tensor::Device;
use kiln_models::torchvision::{self, LoadOptions};
use kiln_models::{Arch, Model};

use crate::dist::{GradientBuckets, Transport, replicas};
use crate::error::EngineError;
use crate::train::checkpoint::TrainerState;
use crate::train::sgd::Sgd;
use crate::train::strategies::Strategy;

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

/// Many processes, one model: the ranks of `transport`.
pub struct DataParallel {
    transport: Box<dyn Transport>,
    buckets: GradientBuckets,
}

impl DataParallel {
    /// Trains over `transport`'s ranks, averaging gradients as `buckets` says.
    pub fn new(transport: Box<dyn Transport>, buckets: GradientBuckets) -> Self {
        Self { transport, buckets }
    }
}

impl Strategy for DataParallel {
    fn rank(&self) -> usize {
        self.transport.rank()
    }

    fn world_size(&self) -> usize {
        self.transport.world_size()
    }

    fn start(
        &mut self,
        model: Model,
        arch: Arch,
        sgd: &mut Sgd,
        state: TrainerState,
        device: &Device,
        plan: &Plan,
    ) -> Result<(Model, TrainerState), EngineError> {
        let t = self.transport.as_mut();
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
        replicas::check_same(
            t,
            "trainable parameter layout",
            &self.buckets.layout(&model),
        )?;
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

    fn gradients(
        &mut self,
        model: &Model,
        grads: GradientsParams,
    ) -> Result<GradientsParams, EngineError> {
        self.buckets.average(self.transport.as_mut(), model, grads)
    }

    fn steps_without_images(&self) -> bool {
        true
    }

    fn sum(&mut self, values: &[f64]) -> Result<Vec<f64>, EngineError> {
        replicas::sum_across(self.transport.as_mut(), values)
    }

    fn finish(&mut self, failure: Option<&EngineError>) -> Result<(), EngineError> {
        match failure {
            None => self.transport.finish(),
            Some(e) => {
                self.transport.abort(&e.to_string());
                Ok(())
            }
        }
    }
}
