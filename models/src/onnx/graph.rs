//! The ResNet and DenseNet inference graphs, node by node as torchvision's modules run, with
//! the weights named as in the state dict (`layer1.0.conv1.weight`, `features.norm0.bias`).

use super::Graph;
use super::proto::Attr;
use crate::densenet::DenseNetConfig;
use crate::error::ModelError;
use crate::resnet::{BlockKind, ResNetConfig};

/// torchvision's batch-norm epsilon.
const EPS: f32 = 1e-5;

impl Graph<'_> {
    /// `Conv` with the state dict's `{key}.weight` (no bias: these models' convolutions have
    /// none); the kernel size comes from the weight.
    fn conv(
        &mut self,
        x: &str,
        key: &str,
        stride: usize,
        padding: usize,
        groups: usize,
    ) -> Result<String, ModelError> {
        let w = format!("{key}.weight");
        let shape = self.weight(&w)?;
        let k = shape[2] as i64;
        let (s, p) = (stride as i64, padding as i64);
        Ok(self.node(
            "Conv",
            key,
            &[x, &w],
            &[
                ("kernel_shape", Attr::Ints(vec![k, k])),
                ("strides", Attr::Ints(vec![s, s])),
                ("pads", Attr::Ints(vec![p, p, p, p])),
                ("group", Attr::Int(groups as i64)),
            ],
        ))
    }

    /// `BatchNormalization` with the running statistics (inference).
    fn bn(&mut self, x: &str, key: &str) -> Result<String, ModelError> {
        let names: Vec<String> = ["weight", "bias", "running_mean", "running_var"]
            .iter()
            .map(|p| format!("{key}.{p}"))
            .collect();
        for n in &names {
            self.weight(n)?;
        }
        let inputs: Vec<&str> = std::iter::once(x)
            .chain(names.iter().map(String::as_str))
            .collect();
        Ok(self.node(
            "BatchNormalization",
            key,
            &inputs,
            &[("epsilon", Attr::Float(EPS))],
        ))
    }

    fn relu(&mut self, x: &str) -> String {
        let out = format!("{x}.relu");
        self.node("Relu", &out, &[x], &[])
    }

    fn pool(&mut self, op: &str, x: &str, out: &str, kernel: i64, stride: i64, pad: i64) -> String {
        self.node(
            op,
            out,
            &[x],
            &[
                ("kernel_shape", Attr::Ints(vec![kernel, kernel])),
                ("strides", Attr::Ints(vec![stride, stride])),
                ("pads", Attr::Ints(vec![pad, pad, pad, pad])),
            ],
        )
    }

    /// Global average pool, flatten, and the classifier `{key}` as `Gemm` (`y = x W^T + b`).
    fn head(&mut self, x: &str, key: &str, out: &str) -> Result<(), ModelError> {
        let pooled = self.node("GlobalAveragePool", "avgpool", &[x], &[]);
        let flat = self.node("Flatten", "flatten", &[&pooled], &[("axis", Attr::Int(1))]);
        let (w, b) = (format!("{key}.weight"), format!("{key}.bias"));
        self.weight(&w)?;
        self.weight(&b)?;
        self.node("Gemm", out, &[&flat, &w, &b], &[("transB", Attr::Int(1))]);
        Ok(())
    }
}

/// torchvision's `ResNet.forward`: stem, four stages of blocks, pooled classifier `fc`.
pub(crate) fn resnet(
    g: &mut Graph<'_>,
    input: &str,
    output: &str,
    config: &ResNetConfig,
) -> Result<(), ModelError> {
    let x = g.conv(input, "conv1", 2, 3, 1)?;
    let x = g.bn(&x, "bn1")?;
    let x = g.relu(&x);
    let mut x = g.pool("MaxPool", &x, "maxpool", 3, 2, 1);
    for (stage, blocks) in config.layers.iter().enumerate() {
        for b in 0..*blocks {
            let stride = if stage > 0 && b == 0 { 2 } else { 1 };
            let key = format!("layer{}.{b}", stage + 1);
            let y = match config.block {
                // conv3x3(stride) - bn - relu - conv3x3 - bn
                BlockKind::Basic => {
                    let y = g.conv(&x, &format!("{key}.conv1"), stride, 1, 1)?;
                    let y = g.bn(&y, &format!("{key}.bn1"))?;
                    let y = g.relu(&y);
                    let y = g.conv(&y, &format!("{key}.conv2"), 1, 1, 1)?;
                    g.bn(&y, &format!("{key}.bn2"))?
                }
                // conv1x1 - bn - relu - conv3x3(stride, groups) - bn - relu - conv1x1 - bn
                BlockKind::Bottleneck => {
                    let y = g.conv(&x, &format!("{key}.conv1"), 1, 0, 1)?;
                    let y = g.bn(&y, &format!("{key}.bn1"))?;
                    let y = g.relu(&y);
                    let y = g.conv(&y, &format!("{key}.conv2"), stride, 1, config.groups)?;
                    let y = g.bn(&y, &format!("{key}.bn2"))?;
                    let y = g.relu(&y);
                    let y = g.conv(&y, &format!("{key}.conv3"), 1, 0, 1)?;
                    g.bn(&y, &format!("{key}.bn3"))?
                }
            };
            let shortcut = if g.has(&format!("{key}.downsample.0.weight")) {
                let s = g.conv(&x, &format!("{key}.downsample.0"), stride, 0, 1)?;
                g.bn(&s, &format!("{key}.downsample.1"))?
            } else {
                x.clone()
            };
            let sum = g.node("Add", &format!("{key}.add"), &[&y, &shortcut], &[]);
            x = g.relu(&sum);
        }
    }
    g.head(&x, "fc", output)
}

/// torchvision's `DenseNet.forward`: stem, dense blocks (each layer concatenates everything
/// before it) and transitions, final norm and ReLU, pooled `classifier`.
pub(crate) fn densenet(
    g: &mut Graph<'_>,
    input: &str,
    output: &str,
    config: &DenseNetConfig,
) -> Result<(), ModelError> {
    let x = g.conv(input, "features.conv0", 2, 3, 1)?;
    let x = g.bn(&x, "features.norm0")?;
    let x = g.relu(&x);
    let mut x = g.pool("MaxPool", &x, "features.pool0", 3, 2, 1);
    let blocks = config.block_config.len();
    for (i, layers) in config.block_config.iter().enumerate() {
        let mut features = vec![x.clone()];
        for j in 0..*layers {
            let key = format!("features.denseblock{}.denselayer{}", i + 1, j + 1);
            let inputs: Vec<&str> = features.iter().map(String::as_str).collect();
            let cat = if inputs.len() == 1 {
                features[0].clone()
            } else {
                g.node(
                    "Concat",
                    &format!("{key}.cat"),
                    &inputs,
                    &[("axis", Attr::Int(1))],
                )
            };
            let y = g.bn(&cat, &format!("{key}.norm1"))?;
            let y = g.relu(&y);
            let y = g.conv(&y, &format!("{key}.conv1"), 1, 0, 1)?;
            let y = g.bn(&y, &format!("{key}.norm2"))?;
            let y = g.relu(&y);
            // Dropout is the identity in inference.
            features.push(g.conv(&y, &format!("{key}.conv2"), 1, 1, 1)?);
        }
        let inputs: Vec<&str> = features.iter().map(String::as_str).collect();
        x = g.node(
            "Concat",
            &format!("features.denseblock{}", i + 1),
            &inputs,
            &[("axis", Attr::Int(1))],
        );
        if i + 1 < blocks {
            let key = format!("features.transition{}", i + 1);
            let y = g.bn(&x, &format!("{key}.norm"))?;
            let y = g.relu(&y);
            let y = g.conv(&y, &format!("{key}.conv"), 1, 0, 1)?;
            x = g.pool("AveragePool", &y, &format!("{key}.pool"), 2, 2, 0);
        }
    }
    let x = g.bn(&x, "features.norm5")?;
    let x = g.relu(&x);
    g.head(&x, "classifier", output)
}
