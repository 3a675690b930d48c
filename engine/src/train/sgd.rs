//! SGD with momentum, dampening, Nesterov and weight decay, exactly as `torch.optim.SGD`
//! steps, with a separate learning rate for the classifier head.
//!
//! The momentum buffers are keyed by module path (`layer1.0.conv1.weight`), not by parameter
//! id, so a checkpoint written by one process resumes in another.

use std::collections::BTreeMap;

use burn::module::{Module, ModuleMapper, Param};
use burn::optim::GradientsParams;
use burn::tensor::{Tensor, TensorData};
use kiln_kernels::sgd_update::{SgdParams, sgd_update};
use kiln_models::Model;

/// SGD hyper-parameters (PyTorch's names and meaning).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SgdConfig {
    /// Momentum factor.
    pub momentum: f64,
    /// Dampening of the momentum's gradient term.
    pub dampening: f64,
    /// L2 penalty added to the gradient.
    pub weight_decay: f64,
    /// Nesterov momentum.
    pub nesterov: bool,
}

/// The optimizer: hyper-parameters and one momentum buffer per trained parameter.
#[derive(Debug, Clone)]
pub struct Sgd {
    /// Hyper-parameters.
    pub config: SgdConfig,
    buffers: BTreeMap<String, Tensor<1>>,
}

impl Sgd {
    /// A fresh optimizer.
    pub fn new(config: SgdConfig) -> Self {
        Self {
            config,
            buffers: BTreeMap::new(),
        }
    }

    /// One step: every parameter with a gradient in `grads` moves by the learning rate of its
    /// group (`head_lr` for the classifier, `lr` elsewhere).
    pub fn step(&mut self, model: Model, grads: GradientsParams, lr: f64, head_lr: f64) -> Model {
        let mut step = Step {
            sgd: self,
            grads,
            lr,
            head_lr,
            path: Vec::new(),
        };
        model.map(&mut step)
    }

    /// The momentum buffers, by module path, for a checkpoint.
    pub fn state(&self) -> BTreeMap<String, TensorData> {
        self.buffers
            .iter()
            .map(|(k, v)| (k.clone(), v.to_data()))
            .collect()
    }

    /// Restores buffers written by [`Sgd::state`] onto `device`.
    pub fn load_state(
        &mut self,
        state: BTreeMap<String, TensorData>,
        device: &burn::tensor::Device,
    ) {
        self.buffers = state
            .into_iter()
            .map(|(k, v)| (k, Tensor::from_data(v, device)))
            .collect();
    }

    /// One step of one parameter: kiln's fused kernel on cube devices, the same arithmetic in
    /// plain burn ops on flex (see `kiln_kernels::sgd_update`).
    fn update(&mut self, path: &str, param: Tensor<1>, grad: Tensor<1>, lr: f64) -> Tensor<1> {
        let c = self.config;
        let params = SgdParams {
            lr,
            momentum: c.momentum,
            dampening: c.dampening,
            weight_decay: c.weight_decay,
            nesterov: c.nesterov,
        };
        let buf = self.buffers.remove(path);
        let (param, buf) = sgd_update(param, grad, buf, &params);
        if let Some(buf) = buf {
            self.buffers.insert(path.to_string(), buf);
        }
        param
    }
}

struct Step<'a> {
    sgd: &'a mut Sgd,
    grads: GradientsParams,
    lr: f64,
    head_lr: f64,
    path: Vec<String>,
}

impl ModuleMapper for Step<'_> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let (id, tensor, mapper) = param.consume();
        let Some(grad) = self.grads.remove::<D>(id) else {
            return Param::from_mapped_value(id, tensor, mapper);
        };
        let path = self.path.join(".");
        let head = path.starts_with("fc.") || path.starts_with("classifier.");
        let lr = if head { self.head_lr } else { self.lr };
        let require_grad = tensor.is_require_grad();
        let checkpointing = tensor.gradient_checkpointing_strategy();
        let shape = tensor.shape();
        let n = shape.num_elements();
        let flat = tensor.inner().reshape([n]);
        let updated = self
            .sgd
            .update(&path, flat, grad.reshape([n]), lr)
            .reshape(shape);
        let mut updated = Tensor::from_inner(updated);
        // Keep the parameter's autodiff context (a memory-efficient DenseNet checkpoints).
        if let Some(strategy) = checkpointing {
            updated = updated.with_gradient_checkpointing_strategy(strategy);
        }
        if require_grad {
            updated = updated.require_grad();
        }
        Param::from_mapped_value(id, updated, mapper)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Device;

    /// Two steps on one scalar, against `torch.optim.SGD`'s update rule worked by hand.
    fn two_steps(config: SgdConfig) -> f32 {
        let device = Device::flex();
        let mut sgd = Sgd::new(config);
        let mut p = Tensor::<1>::from_floats([1.0], &device);
        for _ in 0..2 {
            let g = Tensor::<1>::from_floats([0.5], &device);
            p = sgd.update("w", p, g, 0.1);
        }
        p.into_scalar()
    }

    #[test]
    fn matches_torch_sgd_with_dampening_and_weight_decay() {
        let p = two_steps(SgdConfig {
            momentum: 0.9,
            dampening: 0.1,
            weight_decay: 0.01,
            nesterov: false,
        });
        // g1 = 0.51, buf = 0.51, p1 = 0.949; g2 = 0.50949, buf = 0.9*0.51 + 0.9*g2, p2 = p1 - 0.1*buf.
        assert!((p - 0.857_245_9).abs() < 1e-6, "{p}");
    }

    #[test]
    fn matches_torch_sgd_with_nesterov() {
        let p = two_steps(SgdConfig {
            momentum: 0.9,
            dampening: 0.0,
            weight_decay: 0.0,
            nesterov: true,
        });
        // buf1 = 0.5, p1 = 1 - 0.1*(0.5 + 0.45) = 0.905; buf2 = 0.95, p2 = p1 - 0.1*(0.5 + 0.855).
        assert!((p - 0.7695).abs() < 1e-6, "{p}");
    }

    #[test]
    fn state_round_trips() {
        let device = Device::flex();
        let mut sgd = Sgd::new(SgdConfig {
            momentum: 0.9,
            dampening: 0.0,
            weight_decay: 0.0,
            nesterov: false,
        });
        let _ = sgd.update(
            "w",
            Tensor::from_floats([1.0], &device),
            Tensor::from_floats([2.0], &device),
            0.1,
        );
        let mut restored = Sgd::new(sgd.config);
        restored.load_state(sgd.state(), &device);
        assert_eq!(restored.state(), sgd.state());
    }
}
