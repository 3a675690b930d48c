//! DenseNet, as torchvision builds it.
//!
//! Huang et al., "Densely Connected Convolutional Networks" (2016). Each layer of a dense block
//! sees the concatenation of every earlier feature map in the block (BN-ReLU-1x1 bottleneck to
//! `bn_size * growth_rate` channels, then BN-ReLU-3x3 to `growth_rate`); transitions halve the
//! channels and the resolution. Parameter names are torchvision's current ones
//! (`features.denseblock1.denselayer1.norm1`); `torchvision.rs` maps `blocks.0.layers.0` onto
//! them and reads the old `norm.1`/`conv.2` names of published checkpoints.

use burn::config::Config;
use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::nn::pool::{AvgPool2d, AvgPool2dConfig, MaxPool2d, MaxPool2dConfig};
use burn::nn::{Dropout, DropoutConfig, Linear, PaddingConfig2d};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor};

use crate::layers::{ConvInit, ConvSpec, classifier, conv, linear, max_pool};
use crate::norm::BatchNorm2d;

/// torchvision's `DenseNet(growth_rate, block_config, num_init_features, bn_size, drop_rate,
/// num_classes, memory_efficient)`.
#[derive(Config, Debug)]
pub struct DenseNetConfig {
    /// Channels each dense layer adds (`k` in the paper).
    pub growth_rate: usize,
    /// Dense layers in each of the four blocks.
    pub block_config: [usize; 4],
    /// Channels out of the stem convolution.
    pub num_init_features: usize,
    /// Bottleneck width multiplier: the 1x1 convolution outputs `bn_size * growth_rate`.
    #[config(default = 4)]
    pub bn_size: usize,
    /// Dropout after each dense layer, in train mode.
    #[config(default = 0.0)]
    pub drop_rate: f64,
    /// Classifier outputs.
    #[config(default = 1000)]
    pub num_classes: usize,
    /// Recompute each layer's concatenation and first BN-ReLU in backward instead of keeping
    /// them, by running the model on burn's gradient-checkpointing autodiff device (see
    /// [`DenseNet::training_device`]; `kiln train --memory-efficient` does).
    #[config(default = false)]
    pub memory_efficient: bool,
}

impl DenseNetConfig {
    /// Builds the network with torchvision's initialisation.
    pub fn init(&self, device: &Device) -> DenseNet {
        let mut channels = self.num_init_features;
        let mut blocks = Vec::new();
        let mut transitions = Vec::new();
        for (i, &num_layers) in self.block_config.iter().enumerate() {
            let layers = (0..num_layers)
                .map(|j| self.layer(channels + j * self.growth_rate, device))
                .collect();
            blocks.push(DenseBlock { layers });
            channels += num_layers * self.growth_rate;
            if i + 1 != self.block_config.len() {
                transitions.push(Transition {
                    norm: BatchNorm2d::new(channels, device),
                    conv: ConvSpec::new(channels, channels / 2, 1, ConvInit::KaimingFanIn)
                        .init(device),
                    pool: AvgPool2dConfig::new([2, 2]).with_strides([2, 2]).init(),
                });
                channels /= 2;
            }
        }
        let features = Features {
            conv0: ConvSpec::new(3, self.num_init_features, 7, ConvInit::KaimingFanIn)
                .stride(2)
                .padding(3)
                .init(device),
            norm0: BatchNorm2d::new(self.num_init_features, device),
            pool0: MaxPool2dConfig::new([3, 3])
                .with_strides([2, 2])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(),
            blocks,
            transitions,
            norm5: BatchNorm2d::new(channels, device),
        };
        let mut classifier = classifier(channels, self.num_classes, device);
        // torchvision zeroes the classifier bias.
        classifier.bias = classifier.bias.map(|b| b.map(|b| b.zeros_like()));
        DenseNet {
            features,
            classifier,
            memory_efficient: self.memory_efficient,
        }
    }

    fn layer(&self, in_channels: usize, device: &Device) -> DenseLayer {
        let inner = self.bn_size * self.growth_rate;
        DenseLayer {
            norm1: BatchNorm2d::new(in_channels, device),
            conv1: ConvSpec::new(in_channels, inner, 1, ConvInit::KaimingFanIn).init(device),
            norm2: BatchNorm2d::new(inner, device),
            conv2: ConvSpec::new(inner, self.growth_rate, 3, ConvInit::KaimingFanIn).init(device),
            dropout: DropoutConfig::new(self.drop_rate).init(),
        }
    }
}

/// A DenseNet: `features` (stem, dense blocks, transitions, final BN), ReLU, global average
/// pool, `classifier`.
#[derive(Module, Debug)]
pub struct DenseNet {
    /// Everything before the classifier.
    pub features: Features,
    /// Classifier head.
    pub classifier: Linear,
    /// See [`DenseNetConfig::memory_efficient`].
    pub memory_efficient: bool,
}

impl DenseNet {
    /// Logits `[N, num_classes]` for images `[N, 3, H, W]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        linear(&self.classifier, self.pooled(x))
    }

    /// Pooled features `[N, channels]`, the input of `classifier`.
    pub fn pooled(&self, x: Tensor<4>) -> Tensor<2> {
        let x = relu(self.features.forward(x));
        x.mean_dim(3).mean_dim(2).flatten(1, 3)
    }

    /// The device training should run on: with `memory_efficient`, the autodiff device with
    /// gradient checkpointing, so memory-bound ops (the concatenations, BN, ReLU) are recomputed
    /// in backward rather than stored, as torchvision's `memory_efficient` does.
    pub fn training_device(&self, device: &Device) -> Device {
        let device = device.clone().autodiff();
        if self.memory_efficient {
            device.gradient_checkpointing()
        } else {
            device
        }
    }
}

/// torchvision's `features` `Sequential`.
#[derive(Module, Debug)]
pub struct Features {
    /// Stem convolution, 7x7 stride 2.
    pub conv0: Conv2d,
    /// Stem batch norm.
    pub norm0: BatchNorm2d,
    /// 3x3 stride-2 max pool.
    pub pool0: MaxPool2d,
    /// `denseblock1..4`.
    pub blocks: Vec<DenseBlock>,
    /// `transition1..3`.
    pub transitions: Vec<Transition>,
    /// Final batch norm.
    pub norm5: BatchNorm2d,
}

impl Features {
    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let mut x = max_pool(&self.pool0, self.norm0.forward_relu(conv(&self.conv0, x)));
        for (i, block) in self.blocks.iter().enumerate() {
            x = block.forward(x);
            if let Some(transition) = self.transitions.get(i) {
                x = transition.forward(x);
            }
        }
        self.norm5.forward(x)
    }
}

/// `denseblockN`: layers that each add `growth_rate` channels.
#[derive(Module, Debug)]
pub struct DenseBlock {
    /// `denselayer1..`.
    pub layers: Vec<DenseLayer>,
}

impl DenseBlock {
    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let mut features = vec![x];
        for layer in &self.layers {
            let new = layer.forward(Tensor::cat(features.clone(), 1));
            features.push(new);
        }
        Tensor::cat(features, 1)
    }
}

/// `denselayerN`: BN-ReLU-conv1x1-BN-ReLU-conv3x3, then dropout.
#[derive(Module, Debug)]
pub struct DenseLayer {
    /// BN of the concatenated input.
    pub norm1: BatchNorm2d,
    /// 1x1 bottleneck to `bn_size * growth_rate`.
    pub conv1: Conv2d,
    /// BN of the bottleneck.
    pub norm2: BatchNorm2d,
    /// 3x3 to `growth_rate`.
    pub conv2: Conv2d,
    /// `drop_rate` dropout (train mode only).
    pub dropout: Dropout,
}

impl DenseLayer {
    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let x = conv(&self.conv1, self.norm1.forward_relu(x));
        let x = conv(&self.conv2, self.norm2.forward_relu(x));
        self.dropout.forward(x)
    }
}

/// `transitionN`: BN-ReLU-conv1x1 halving channels, 2x2 average pool.
#[derive(Module, Debug)]
pub struct Transition {
    /// BN of the block output.
    pub norm: BatchNorm2d,
    /// 1x1 to half the channels.
    pub conv: Conv2d,
    /// 2x2 stride-2 average pool.
    pub pool: AvgPool2d,
}

impl Transition {
    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.pool
            .forward(conv(&self.conv, self.norm.forward_relu(x)))
    }
}
