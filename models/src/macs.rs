//! How many multiply-adds a forward pass costs: every convolution's and the classifier's, walked
//! from the same shapes `resnet.rs` and `densenet.rs` build, so a benchmark can turn a step time
//! into GFLOP/s. Batch norm, pooling and activations are left out, as torchvision's published
//! GFLOPS (multiply-adds, despite the name) leave them out.

use crate::arch::Arch;
use crate::resnet::BlockKind;

/// A square feature map flowing through the network: channels and side.
#[derive(Debug, Clone, Copy)]
struct Map {
    channels: usize,
    side: usize,
}

impl Map {
    /// The multiply-adds of a `kernel x kernel` convolution to `out` channels, and its output.
    fn conv(self, out: usize, kernel: usize, stride: usize, groups: usize) -> (u64, Map) {
        let side = (self.side + 2 * (kernel / 2) - kernel) / stride + 1;
        let per_pixel = out * (self.channels / groups) * kernel * kernel;
        let macs = (per_pixel * side * side) as u64;
        (
            macs,
            Map {
                channels: out,
                side,
            },
        )
    }

    /// The map after a pooling window of `kernel` with `stride` and `padding`.
    fn pool(self, kernel: usize, stride: usize, padding: usize) -> Map {
        let side = (self.side + 2 * padding - kernel) / stride + 1;
        Map { side, ..self }
    }
}

impl Arch {
    /// Multiply-adds of one image's forward pass at `image_size` pixels with `classes` outputs
    /// (torchvision's figure at 224 px and 1000 classes: resnet18 1.81 G). A training step costs
    /// about three times this (forward, input gradient, weight gradient).
    pub fn forward_macs(self, image_size: usize, classes: usize) -> u64 {
        let input = Map {
            channels: 3,
            side: image_size,
        };
        if let Some(config) = self.resnet(classes) {
            let (stem, mut map) = input.conv(64, 7, 2, 1);
            map = map.pool(3, 2, 1);
            let mut macs = stem;
            let expansion = config.block.expansion();
            for (stage, &blocks) in config.layers.iter().enumerate() {
                let planes = 64 << stage;
                for block in 0..blocks {
                    let stride = if stage > 0 && block == 0 { 2 } else { 1 };
                    let out = planes * expansion;
                    if stride != 1 || map.channels != out {
                        macs += map.conv(out, 1, stride, 1).0;
                    }
                    map = match config.block {
                        BlockKind::Basic => {
                            let (a, m) = map.conv(planes, 3, stride, 1);
                            let (b, m) = m.conv(planes, 3, 1, 1);
                            macs += a + b;
                            m
                        }
                        BlockKind::Bottleneck => {
                            let width = planes * config.width_per_group / 64 * config.groups;
                            let (a, m) = map.conv(width, 1, 1, 1);
                            let (b, m) = m.conv(width, 3, stride, config.groups);
                            let (c, m) = m.conv(out, 1, 1, 1);
                            macs += a + b + c;
                            m
                        }
                    };
                }
            }
            return macs + (map.channels * classes) as u64;
        }
        let config = self
            .densenet(classes)
            .expect("every Arch is a ResNet or a DenseNet");
        let (stem, mut map) = input.conv(config.num_init_features, 7, 2, 1);
        map = map.pool(3, 2, 1);
        let mut macs = stem;
        let bottleneck = config.bn_size * config.growth_rate;
        for (block, &layers) in config.block_config.iter().enumerate() {
            for _ in 0..layers {
                let (a, m) = map.conv(bottleneck, 1, 1, 1);
                let (b, _) = m.conv(config.growth_rate, 3, 1, 1);
                macs += a + b;
                map.channels += config.growth_rate;
            }
            if block + 1 < config.block_config.len() {
                let (t, m) = map.conv(map.channels / 2, 1, 1, 1);
                macs += t;
                map = m.pool(2, 2, 0);
            }
        }
        macs + (map.channels * classes) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// torchvision's published GFLOPS (multiply-adds) at 224 px and 1000 classes, from each
    /// weights enum's `_ops` field.
    #[test]
    fn forward_macs_match_torchvision_published_figures() {
        let published = [
            (Arch::Resnet18, 1.81),
            (Arch::Resnet34, 3.66),
            (Arch::Resnet50, 4.09),
            (Arch::Resnet101, 7.80),
            (Arch::Resnet152, 11.51),
            (Arch::Resnext50_32x4d, 4.23),
            (Arch::Resnext101_32x8d, 16.41),
            (Arch::WideResnet50_2, 11.40),
            (Arch::WideResnet101_2, 22.75),
            (Arch::Densenet121, 2.83),
            (Arch::Densenet161, 7.73),
            (Arch::Densenet169, 3.36),
            (Arch::Densenet201, 4.29),
        ];
        for (arch, gmacs) in published {
            let ours = arch.forward_macs(224, 1000) as f64 / 1e9;
            assert!(
                (ours - gmacs).abs() <= 0.006,
                "{arch}: {ours:.3} GMACs, torchvision says {gmacs}"
            );
        }
    }

    #[test]
    fn forward_macs_scale_with_the_image_and_the_classes() {
        let conv = |size| Arch::Resnet18.forward_macs(size, 1) - 512;
        // Every map halves five times from 224 and from 64 alike, so the cost scales exactly
        // with the pixels.
        assert_eq!(conv(224) * 64 * 64, conv(64) * 224 * 224);
        let head = Arch::Densenet121.forward_macs(64, 11) - Arch::Densenet121.forward_macs(64, 1);
        assert_eq!(head, 1024 * 10);
    }
}
