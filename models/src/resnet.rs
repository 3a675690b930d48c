//! ResNet, ResNeXt and Wide ResNet, as torchvision builds them.
//!
//! He et al., "Deep Residual Learning for Image Recognition" (2015); Xie et al., "Aggregated
//! Residual Transformations for Deep Neural Networks" (ResNeXt, 2016); Zagoruyko and Komodakis,
//! "Wide Residual Networks" (2016). This is torchvision's v1.5 variant: the stride of a
//! bottleneck sits on its 3x3 convolution. Field names are the state-dict names of
//! `torchvision.models.resnet` (`conv1`, `bn1`, `layer1.0.conv2`, `fc`); the one rename,
//! `downsample.conv`/`downsample.bn` for `downsample.0`/`downsample.1`, lives in
//! `torchvision.rs`.

use burn::config::Config;
use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::nn::pool::{AdaptiveAvgPool2d, AdaptiveAvgPool2dConfig, MaxPool2d, MaxPool2dConfig};
use burn::nn::{Linear, PaddingConfig2d};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor};

use crate::layers::{ConvInit, ConvSpec, classifier, conv, linear, max_pool};
use crate::norm::BatchNorm2d;

/// Which residual block a ResNet stacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum BlockKind {
    /// Two 3x3 convolutions, expansion 1 (resnet18, resnet34).
    Basic,
    /// 1x1, 3x3, 1x1 convolutions, expansion 4 (resnet50 and deeper, ResNeXt, Wide ResNet).
    Bottleneck,
}

impl BlockKind {
    /// Output channels of a block over its `planes`.
    pub fn expansion(self) -> usize {
        match self {
            BlockKind::Basic => 1,
            BlockKind::Bottleneck => 4,
        }
    }
}

/// torchvision's `ResNet(block, layers, num_classes, zero_init_residual, groups,
/// width_per_group)`.
#[derive(Config, Debug)]
pub struct ResNetConfig {
    /// Residual block type.
    pub block: BlockKind,
    /// Blocks in each of the four stages.
    pub layers: [usize; 4],
    /// Classifier outputs.
    #[config(default = 1000)]
    pub num_classes: usize,
    /// Start each block's last BN at zero so every block begins as the identity.
    #[config(default = false)]
    pub zero_init_residual: bool,
    /// Groups of the 3x3 convolutions (ResNeXt's cardinality).
    #[config(default = 1)]
    pub groups: usize,
    /// Channels per group of the bottleneck's 3x3 convolution at `planes == 64`.
    #[config(default = 64)]
    pub width_per_group: usize,
}

impl ResNetConfig {
    /// Builds the network with torchvision's initialisation.
    pub fn init(&self, device: &Device) -> ResNet {
        let conv1 = ConvSpec::new(3, 64, 7, ConvInit::KaimingFanOut)
            .stride(2)
            .padding(3)
            .init(device);
        let mut inplanes = 64;
        let mut stage = |planes: usize, blocks: usize, stride: usize| {
            (0..blocks)
                .map(|i| {
                    let stride = if i == 0 { stride } else { 1 };
                    let block = self.block(inplanes, planes, stride, device);
                    inplanes = planes * self.block.expansion();
                    block
                })
                .collect::<Vec<_>>()
        };
        let layer1 = stage(64, self.layers[0], 1);
        let layer2 = stage(128, self.layers[1], 2);
        let layer3 = stage(256, self.layers[2], 2);
        let layer4 = stage(512, self.layers[3], 2);
        ResNet {
            conv1,
            bn1: BatchNorm2d::new(64, device),
            maxpool: MaxPool2dConfig::new([3, 3])
                .with_strides([2, 2])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(),
            layer1,
            layer2,
            layer3,
            layer4,
            avgpool: AdaptiveAvgPool2dConfig::new([1, 1]).init(),
            fc: classifier(512 * self.block.expansion(), self.num_classes, device),
        }
    }

    fn block(&self, inplanes: usize, planes: usize, stride: usize, device: &Device) -> Block {
        let out = planes * self.block.expansion();
        let downsample = (stride != 1 || inplanes != out).then(|| Downsample {
            conv: ConvSpec::new(inplanes, out, 1, ConvInit::KaimingFanOut)
                .stride(stride)
                .init(device),
            bn: BatchNorm2d::new(out, device),
        });
        let zero = |bn: BatchNorm2d| {
            if self.zero_init_residual {
                bn.zero_weight()
            } else {
                bn
            }
        };
        match self.block {
            BlockKind::Basic => Block::Basic(BasicBlock {
                conv1: ConvSpec::new(inplanes, planes, 3, ConvInit::KaimingFanOut)
                    .stride(stride)
                    .init(device),
                bn1: BatchNorm2d::new(planes, device),
                conv2: ConvSpec::new(planes, planes, 3, ConvInit::KaimingFanOut).init(device),
                bn2: zero(BatchNorm2d::new(planes, device)),
                downsample,
            }),
            BlockKind::Bottleneck => {
                let width = planes * self.width_per_group / 64 * self.groups;
                Block::Bottleneck(Bottleneck {
                    conv1: ConvSpec::new(inplanes, width, 1, ConvInit::KaimingFanOut).init(device),
                    bn1: BatchNorm2d::new(width, device),
                    conv2: ConvSpec::new(width, width, 3, ConvInit::KaimingFanOut)
                        .stride(stride)
                        .groups(self.groups)
                        .init(device),
                    bn2: BatchNorm2d::new(width, device),
                    conv3: ConvSpec::new(width, out, 1, ConvInit::KaimingFanOut).init(device),
                    bn3: zero(BatchNorm2d::new(out, device)),
                    downsample,
                })
            }
        }
    }
}

/// A ResNet: stem, four stages of residual blocks, global average pool, classifier `fc`.
#[derive(Module, Debug)]
pub struct ResNet {
    /// Stem convolution, 7x7 stride 2.
    pub conv1: Conv2d,
    /// Stem batch norm.
    pub bn1: BatchNorm2d,
    /// 3x3 stride-2 max pool.
    pub maxpool: MaxPool2d,
    /// Stage 1, 64 planes.
    pub layer1: Vec<Block>,
    /// Stage 2, 128 planes, stride 2.
    pub layer2: Vec<Block>,
    /// Stage 3, 256 planes, stride 2.
    pub layer3: Vec<Block>,
    /// Stage 4, 512 planes, stride 2.
    pub layer4: Vec<Block>,
    /// Global average pool.
    pub avgpool: AdaptiveAvgPool2d,
    /// Classifier head.
    pub fc: Linear,
}

impl ResNet {
    /// Logits `[N, num_classes]` for images `[N, 3, H, W]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let x = self.features(x);
        linear(&self.fc, x)
    }

    /// Pooled features `[N, 512 * expansion]`, the input of `fc`.
    pub fn features(&self, x: Tensor<4>) -> Tensor<2> {
        let x = self.bn1.forward_relu(conv(&self.conv1, x));
        let mut x = max_pool(&self.maxpool, x);
        for block in [&self.layer1, &self.layer2, &self.layer3, &self.layer4]
            .into_iter()
            .flatten()
        {
            x = block.forward(x);
        }
        self.avgpool.forward(x).flatten(1, 3)
    }
}

/// One residual block; the variant is not part of the parameter names.
// The variants hold tensor handles, not tensors: their size difference is a few words.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum Block {
    /// resnet18/34 block.
    Basic(BasicBlock),
    /// resnet50+ block.
    Bottleneck(Bottleneck),
}

impl Block {
    /// `relu(residual(x) + shortcut(x))`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        match self {
            Block::Basic(b) => b.forward(x),
            Block::Bottleneck(b) => b.forward(x),
        }
    }
}

/// The 1x1 projection shortcut, torchvision's `downsample` `Sequential(conv, bn)`.
#[derive(Module, Debug)]
pub struct Downsample {
    /// `downsample.0`.
    pub conv: Conv2d,
    /// `downsample.1`.
    pub bn: BatchNorm2d,
}

impl Downsample {
    fn shortcut(downsample: &Option<Downsample>, x: Tensor<4>) -> Tensor<4> {
        match downsample {
            Some(d) => d.bn.forward(conv(&d.conv, x)),
            None => x,
        }
    }
}

/// Two 3x3 convolutions.
#[derive(Module, Debug)]
pub struct BasicBlock {
    /// 3x3, carries the stride.
    pub conv1: Conv2d,
    /// BN after `conv1`.
    pub bn1: BatchNorm2d,
    /// 3x3.
    pub conv2: Conv2d,
    /// BN after `conv2` (zeroed by `zero_init_residual`).
    pub bn2: BatchNorm2d,
    /// Projection shortcut where shape changes.
    pub downsample: Option<Downsample>,
}

impl BasicBlock {
    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let out = self.bn1.forward_relu(conv(&self.conv1, x.clone()));
        let out = self.bn2.forward(conv(&self.conv2, out));
        relu(out + Downsample::shortcut(&self.downsample, x))
    }
}

/// 1x1 reduce, 3x3 (grouped for ResNeXt, carries the stride), 1x1 expand.
#[derive(Module, Debug)]
pub struct Bottleneck {
    /// 1x1 reduce.
    pub conv1: Conv2d,
    /// BN after `conv1`.
    pub bn1: BatchNorm2d,
    /// 3x3, grouped, strided.
    pub conv2: Conv2d,
    /// BN after `conv2`.
    pub bn2: BatchNorm2d,
    /// 1x1 expand.
    pub conv3: Conv2d,
    /// BN after `conv3` (zeroed by `zero_init_residual`).
    pub bn3: BatchNorm2d,
    /// Projection shortcut where shape changes.
    pub downsample: Option<Downsample>,
}

impl Bottleneck {
    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let out = self.bn1.forward_relu(conv(&self.conv1, x.clone()));
        let out = self.bn2.forward_relu(conv(&self.conv2, out));
        let out = self.bn3.forward(conv(&self.conv3, out));
        relu(out + Downsample::shortcut(&self.downsample, x))
    }
}
