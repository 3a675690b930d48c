//! Batch normalisation over `[N, C, H, W]` with PyTorch's `nn.BatchNorm2d` semantics.
//!
//! burn's `BatchNorm` folds the biased batch variance into its running estimate; PyTorch folds
//! the unbiased one (`n / (n - 1)`). Checkpoints trained on either side must mean the same
//! thing, so kiln keeps its own module, with torchvision's parameter names (`weight`, `bias`,
//! `running_mean`, `running_var`).

use burn::module::{Flag, Module, Param, RunningState};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor};
use kiln_kernels::batch_norm::batch_norm_train;

/// Eval mode uses the running statistics; train mode on an autodiff device normalises with the
/// batch statistics and updates the running ones (momentum 0.1, as PyTorch).
#[derive(Module, Debug)]
pub struct BatchNorm2d {
    /// Per-channel scale (`gamma`).
    pub weight: Param<Tensor<1>>,
    /// Per-channel shift (`beta`).
    pub bias: Param<Tensor<1>>,
    /// Running mean of the batch means.
    pub running_mean: RunningState<Tensor<1>>,
    /// Running mean of the unbiased batch variances.
    pub running_var: RunningState<Tensor<1>>,
    /// Train mode; `Module::valid` turns it off, as `model.eval()` does.
    pub training: Param<Flag>,
    /// Weight of the newest batch in the running statistics.
    pub momentum: f64,
    /// Added to the variance before the square root.
    pub eps: f64,
}

impl BatchNorm2d {
    /// A fresh layer as PyTorch initialises it: weight 1, bias 0, running mean 0, variance 1.
    pub fn new(channels: usize, device: &Device) -> Self {
        Self {
            weight: Param::from_tensor(Tensor::ones([channels], device)),
            bias: Param::from_tensor(Tensor::zeros([channels], device)),
            running_mean: RunningState::new(Tensor::zeros([channels], device)),
            running_var: RunningState::new(Tensor::ones([channels], device)),
            training: Param::from_bool(true),
            momentum: 0.1,
            eps: 1e-5,
        }
    }

    /// Number of channels normalised.
    pub fn channels(&self) -> usize {
        self.weight.shape().dims::<1>()[0]
    }

    /// Sets the scale to zero (torchvision's `zero_init_residual` for the last BN of a block).
    pub fn zero_weight(mut self) -> Self {
        let device = self.weight.device();
        self.weight = Param::from_tensor(Tensor::zeros([self.channels()], &device));
        self
    }

    /// Switches between train mode (batch statistics) and eval mode (running statistics),
    /// keeping the parameters on their device.
    pub fn set_training(mut self, training: bool) -> Self {
        self.training = Param::from_bool(training);
        self
    }

    /// Normalises `input` (`[N, C, H, W]`).
    pub fn forward(&self, input: Tensor<4>) -> Tensor<4> {
        if input.device().is_autodiff() && self.training.is_enabled() {
            self.forward_train(input, false)
        } else {
            self.forward_eval(input)
        }
    }

    /// `relu(self.forward(input))`, fused into the normalisation's passes in train mode on the
    /// CPU.
    pub fn forward_relu(&self, input: Tensor<4>) -> Tensor<4> {
        if input.device().is_autodiff() && self.training.is_enabled() {
            self.forward_train(input, true)
        } else {
            relu(self.forward_eval(input))
        }
    }

    fn forward_eval(&self, input: Tensor<4>) -> Tensor<4> {
        let device = input.device();
        burn::tensor::module::batch_norm(
            input,
            self.weight.val(),
            self.bias.val(),
            self.running_mean.value().to_device(&device),
            self.running_var.value().to_device(&device),
            self.eps,
        )
    }

    fn forward_train(&self, input: Tensor<4>, relu: bool) -> Tensor<4> {
        let [n, _, h, w] = input.dims();
        let device = input.device();
        let result = batch_norm_train(input, self.weight.val(), self.bias.val(), self.eps, relu);
        let count = (n * h * w) as f64;
        let unbiased = if count > 1.0 {
            count / (count - 1.0)
        } else {
            1.0
        };
        let m = self.momentum;
        let mean = self.running_mean.value_sync().to_device(&device);
        let var = self.running_var.value_sync().to_device(&device);
        self.running_mean.update(
            mean.mul_scalar(1.0 - m)
                .add(result.mean.detach().mul_scalar(m))
                .detach(),
        );
        self.running_var.update(
            var.mul_scalar(1.0 - m)
                .add(result.variance.detach().mul_scalar(m * unbiased))
                .detach(),
        );
        result.output
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;

    // Channel 0 holds 1, 2, 3, 4 (mean 2.5, unbiased variance 5/3), channel 1 holds 0, 0, 2,
    // 2 (mean 1, unbiased variance 4/3); three train-mode steps move the running statistics
    // as PyTorch's do: `r = 0.9^3 r0 + (1 - 0.9^3) s`.
    kiln_kernels::test_device!(running_statistics_follow_pytorch, |device: Device| {
        let device = device.autodiff();
        let bn = BatchNorm2d::new(2, &device);
        let x = TensorData::new(
            vec![1.0f32, 2.0, 0.0, 0.0, 3.0, 4.0, 2.0, 2.0],
            [2, 2, 2, 1],
        );
        let x = Tensor::<4>::from_data(x, &device);
        for _ in 0..3 {
            let _ = bn.forward(x.clone());
        }
        let kept = 1.0 - 0.9f32.powi(3);
        let read = |t: Tensor<1>| t.into_data().try_to_vec::<f32>().unwrap();
        let mean = read(bn.running_mean.value_sync());
        let var = read(bn.running_var.value_sync());
        let want_mean = [2.5 * kept, kept];
        let want_var = [1.0 - kept + kept * 5.0 / 3.0, 1.0 - kept + kept * 4.0 / 3.0];
        for c in 0..2 {
            assert!((mean[c] - want_mean[c]).abs() < 1e-5, "mean {mean:?}");
            assert!((var[c] - want_var[c]).abs() < 1e-5, "var {var:?}");
        }
    });
}
