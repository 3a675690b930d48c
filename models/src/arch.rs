//! The thirteen torchvision classification architectures kiln builds, by torchvision's names,
//! and [`Model`], one type that holds any of them.

use std::fmt;
use std::str::FromStr;

use burn::module::{Flag, Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::{Device, Tensor};

use crate::densenet::{DenseNet, DenseNetConfig};
use crate::error::ModelError;
use crate::resnet::{BlockKind, ResNet, ResNetConfig};

/// A torchvision architecture name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[allow(missing_docs)]
pub enum Arch {
    Resnet18,
    Resnet34,
    Resnet50,
    Resnet101,
    Resnet152,
    #[serde(rename = "resnext50_32x4d")]
    Resnext50_32x4d,
    #[serde(rename = "resnext101_32x8d")]
    Resnext101_32x8d,
    #[serde(rename = "wide_resnet50_2")]
    WideResnet50_2,
    #[serde(rename = "wide_resnet101_2")]
    WideResnet101_2,
    Densenet121,
    Densenet161,
    Densenet169,
    Densenet201,
}

impl Arch {
    /// Every architecture, in torchvision's documentation order.
    pub const ALL: [Arch; 13] = [
        Arch::Resnet18,
        Arch::Resnet34,
        Arch::Resnet50,
        Arch::Resnet101,
        Arch::Resnet152,
        Arch::Resnext50_32x4d,
        Arch::Resnext101_32x8d,
        Arch::WideResnet50_2,
        Arch::WideResnet101_2,
        Arch::Densenet121,
        Arch::Densenet161,
        Arch::Densenet169,
        Arch::Densenet201,
    ];

    /// torchvision's function name, e.g. `resnext50_32x4d`.
    pub fn name(self) -> &'static str {
        match self {
            Arch::Resnet18 => "resnet18",
            Arch::Resnet34 => "resnet34",
            Arch::Resnet50 => "resnet50",
            Arch::Resnet101 => "resnet101",
            Arch::Resnet152 => "resnet152",
            Arch::Resnext50_32x4d => "resnext50_32x4d",
            Arch::Resnext101_32x8d => "resnext101_32x8d",
            Arch::WideResnet50_2 => "wide_resnet50_2",
            Arch::WideResnet101_2 => "wide_resnet101_2",
            Arch::Densenet121 => "densenet121",
            Arch::Densenet161 => "densenet161",
            Arch::Densenet169 => "densenet169",
            Arch::Densenet201 => "densenet201",
        }
    }

    /// Whether this is a DenseNet (classifier `classifier`) rather than a ResNet (`fc`).
    pub fn is_densenet(self) -> bool {
        matches!(
            self,
            Arch::Densenet121 | Arch::Densenet161 | Arch::Densenet169 | Arch::Densenet201
        )
    }

    /// The ResNet configuration, for ResNet-family names.
    pub fn resnet(self, num_classes: usize) -> Option<ResNetConfig> {
        use BlockKind::{Basic, Bottleneck};
        let (block, layers, groups, width) = match self {
            Arch::Resnet18 => (Basic, [2, 2, 2, 2], 1, 64),
            Arch::Resnet34 => (Basic, [3, 4, 6, 3], 1, 64),
            Arch::Resnet50 => (Bottleneck, [3, 4, 6, 3], 1, 64),
            Arch::Resnet101 => (Bottleneck, [3, 4, 23, 3], 1, 64),
            Arch::Resnet152 => (Bottleneck, [3, 8, 36, 3], 1, 64),
            Arch::Resnext50_32x4d => (Bottleneck, [3, 4, 6, 3], 32, 4),
            Arch::Resnext101_32x8d => (Bottleneck, [3, 4, 23, 3], 32, 8),
            Arch::WideResnet50_2 => (Bottleneck, [3, 4, 6, 3], 1, 128),
            Arch::WideResnet101_2 => (Bottleneck, [3, 4, 23, 3], 1, 128),
            _ => return None,
        };
        Some(
            ResNetConfig::new(block, layers)
                .with_num_classes(num_classes)
                .with_groups(groups)
                .with_width_per_group(width),
        )
    }

    /// The DenseNet configuration, for DenseNet names.
    pub fn densenet(self, num_classes: usize) -> Option<DenseNetConfig> {
        let (growth, blocks, init) = match self {
            Arch::Densenet121 => (32, [6, 12, 24, 16], 64),
            Arch::Densenet161 => (48, [6, 12, 36, 24], 96),
            Arch::Densenet169 => (32, [6, 12, 32, 32], 64),
            Arch::Densenet201 => (32, [6, 12, 48, 32], 64),
            _ => return None,
        };
        Some(DenseNetConfig::new(growth, blocks, init).with_num_classes(num_classes))
    }

    /// A freshly initialised model of this architecture. Every parameter is drawn here, in
    /// field order, so a seeded device gives the same weights every time (burn would otherwise
    /// draw them lazily, at first use).
    pub fn init(self, num_classes: usize, device: &Device) -> Model {
        let model = match (self.resnet(num_classes), self.densenet(num_classes)) {
            (Some(config), _) => Model::ResNet(config.init(device)),
            (_, Some(config)) => Model::DenseNet(config.init(device)),
            (None, None) => unreachable!("every Arch is a ResNet or a DenseNet"),
        };
        struct DrawNow;
        impl ModuleVisitor for DrawNow {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
                let _ = param.val();
            }
        }
        model.visit(&mut DrawNow);
        model
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Arch {
    type Err = ModelError;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Arch::ALL
            .into_iter()
            .find(|arch| arch.name() == name)
            .ok_or_else(|| ModelError::UnknownArch {
                name: name.to_string(),
                valid: Arch::ALL.map(Arch::name).join(", "),
            })
    }
}

/// Any kiln model: what the trainer, `predict` and the weight files work with.
// The variants hold tensor handles, not tensors: their size difference is a few words.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum Model {
    /// ResNet, ResNeXt, Wide ResNet.
    ResNet(ResNet),
    /// DenseNet.
    DenseNet(DenseNet),
}

impl Model {
    /// Logits `[N, num_classes]` for normalised images `[N, 3, H, W]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        match self {
            Model::ResNet(m) => m.forward(x),
            Model::DenseNet(m) => m.forward(x),
        }
    }

    /// Number of classifier outputs.
    pub fn num_classes(&self) -> usize {
        let head = match self {
            Model::ResNet(m) => &m.fc,
            Model::DenseNet(m) => &m.classifier,
        };
        head.weight.shape().dims::<2>()[1]
    }

    /// Train mode (batch statistics, dropout) or eval mode, like PyTorch's `model.train()` and
    /// `model.eval()`. Parameters stay where they are and keep their gradient setting.
    pub fn set_training(self, training: bool) -> Self {
        struct Mode(bool);
        impl ModuleMapper for Mode {
            fn map_flag(&mut self, flag: Param<Flag>) -> Param<Flag> {
                flag.with_value(self.0)
            }
        }
        self.map(&mut Mode(training))
    }
}
