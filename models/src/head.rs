//! The classifier head for transfer learning: replace it for a new class count, and freeze
//! everything else.

use burn::module::Module;

use crate::arch::Model;
use crate::layers::classifier;

impl Model {
    /// The same backbone with a fresh classifier of `num_classes` outputs, initialised as
    /// torchvision initialises a new head (DenseNet's bias at zero).
    pub fn with_num_classes(self, num_classes: usize) -> Self {
        match self {
            Model::ResNet(mut m) => {
                let device = m.fc.weight.device();
                let in_features = m.fc.weight.shape().dims::<2>()[0];
                m.fc = classifier(in_features, num_classes, &device);
                Model::ResNet(m)
            }
            Model::DenseNet(mut m) => {
                let device = m.classifier.weight.device();
                let in_features = m.classifier.weight.shape().dims::<2>()[0];
                let mut head = classifier(in_features, num_classes, &device);
                head.bias = head.bias.map(|b| b.map(|b| b.zeros_like()));
                m.classifier = head;
                Model::DenseNet(m)
            }
        }
    }

    /// Stops gradients for every parameter but the classifier's, as setting
    /// `requires_grad = False` on the backbone does in PyTorch. Batch norm keeps its mode.
    pub fn freeze_backbone(self) -> Self {
        match self.no_grad() {
            Model::ResNet(mut m) => {
                m.fc = m.fc.set_require_grad(true);
                Model::ResNet(m)
            }
            Model::DenseNet(mut m) => {
                m.classifier = m.classifier.set_require_grad(true);
                Model::DenseNet(m)
            }
        }
    }
}
