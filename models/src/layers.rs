//! The small building blocks both families share: convolutions without bias, initialised as
//! torchvision initialises them, and the classifier head; convolutions and the classifier in
//! the [`autocast`](crate::autocast) precision.

use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::MaxPool2d;
use burn::nn::{Initializer, Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::{Device, Tensor};
use kiln_kernels::conv2d::{Conv2dOptions, conv2d};
use kiln_kernels::max_pool::{MaxPool2dOptions, max_pool2d};

use crate::autocast::{in_low_precision, low_precision};

/// How a convolution's weights start: torchvision's ResNet uses
/// `kaiming_normal_(mode="fan_out", nonlinearity="relu")`, DenseNet the default `fan_in` mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConvInit {
    /// `std = sqrt(2 / (out_channels * k * k))`.
    KaimingFanOut,
    /// `std = sqrt(2 / (in_channels / groups * k * k))`.
    KaimingFanIn,
}

/// Options of one bias-free `nn.Conv2d`.
#[derive(Debug, Clone, Copy)]
pub struct ConvSpec {
    /// Input channels.
    pub in_channels: usize,
    /// Output channels.
    pub out_channels: usize,
    /// Square kernel side.
    pub kernel: usize,
    /// Stride in both directions.
    pub stride: usize,
    /// Zero padding on every side.
    pub padding: usize,
    /// Channel groups (ResNeXt).
    pub groups: usize,
    /// Weight initialisation.
    pub init: ConvInit,
}

impl ConvSpec {
    /// A `kernel x kernel` convolution with stride 1, padding `kernel / 2`, one group.
    pub fn new(in_channels: usize, out_channels: usize, kernel: usize, init: ConvInit) -> Self {
        Self {
            in_channels,
            out_channels,
            kernel,
            stride: 1,
            padding: kernel / 2,
            groups: 1,
            init,
        }
    }

    /// The same with another stride.
    pub fn stride(self, stride: usize) -> Self {
        Self { stride, ..self }
    }

    /// The same with another padding.
    pub fn padding(self, padding: usize) -> Self {
        Self { padding, ..self }
    }

    /// The same with channel groups.
    pub fn groups(self, groups: usize) -> Self {
        Self { groups, ..self }
    }

    /// Builds the layer on `device`.
    pub fn init(self, device: &Device) -> Conv2d {
        let k2 = (self.kernel * self.kernel) as f64;
        // PyTorch's fan_out does not divide by groups, burn's does: compute it here.
        let fan = match self.init {
            ConvInit::KaimingFanOut => self.out_channels as f64 * k2,
            ConvInit::KaimingFanIn => (self.in_channels / self.groups) as f64 * k2,
        };
        let p = self.padding;
        Conv2dConfig::new(
            [self.in_channels, self.out_channels],
            [self.kernel, self.kernel],
        )
        .with_stride([self.stride, self.stride])
        .with_padding(PaddingConfig2d::Explicit(p, p, p, p))
        .with_groups(self.groups)
        .with_bias(false)
        .with_initializer(Initializer::Normal {
            mean: 0.0,
            std: (2.0 / fan).sqrt(),
        })
        .init(device)
    }
}

/// `conv.forward(x)` through kiln's convolution: whole-batch GEMMs on flex for forward and both
/// gradients, burn's conv2d on other devices. Falls back to the module's own forward for what
/// kiln's layers never build (a bias, asymmetric or `Same` padding).
pub fn conv(conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
    match (&conv.padding, &conv.bias) {
        (PaddingConfig2d::Explicit(top, left, bottom, right), None)
            if top == bottom && left == right =>
        {
            let options = Conv2dOptions {
                stride: conv.stride,
                padding: [*top, *left],
                dilation: conv.dilation,
                groups: conv.groups,
            };
            in_low_precision(x, conv.weight.val(), |x, w| conv2d(x, w, options))
        }
        _ => conv.forward(x),
    }
}

/// `linear.forward(x)`, in the [`autocast`](crate::autocast) precision (bias included, as
/// `torch.autocast` runs `nn.Linear`).
pub fn linear(linear: &Linear, x: Tensor<2>) -> Tensor<2> {
    let bias = linear.bias.as_ref().map(|b| b.val());
    in_low_precision(x, linear.weight.val(), |x, w| {
        let bias = bias.map(|b| match low_precision() {
            Some(low) => b.cast(low),
            None => b,
        });
        burn::tensor::module::linear(x, w, bias)
    })
}

/// `pool.forward(x)` through kiln's max pooling: its CPU kernel on flex, burn's elsewhere. Falls
/// back to the module's own forward for what kiln's stems never build (dilation, ceil mode,
/// asymmetric or `Same` padding).
pub fn max_pool(pool: &MaxPool2d, x: Tensor<4>) -> Tensor<4> {
    match &pool.padding {
        PaddingConfig2d::Explicit(top, left, bottom, right)
            if top == bottom && left == right && pool.dilation == [1, 1] && !pool.ceil_mode =>
        {
            let options = MaxPool2dOptions {
                kernel: pool.kernel_size,
                stride: pool.stride,
                padding: [*top, *left],
            };
            max_pool2d(x, options)
        }
        _ => pool.forward(x),
    }
}

/// A fresh `nn.Linear(in_features, num_classes)` as PyTorch initialises it
/// (`U(-1/sqrt(in), 1/sqrt(in))` for weight and bias).
pub fn classifier(in_features: usize, num_classes: usize, device: &Device) -> Linear {
    let bound = 1.0 / (in_features as f64).sqrt();
    LinearConfig::new(in_features, num_classes)
        .with_initializer(Initializer::Uniform {
            min: -bound,
            max: bound,
        })
        .init(device)
}
