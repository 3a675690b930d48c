//! Parity with real torchvision: every architecture at full size gives torchvision's eval
//! logits, and three give its train-mode batch-norm statistics and gradients. The expected
//! values come from `fixtures/generate.py`.

mod common;

use burn::tensor::Device;
use kiln_kernels::test_device;
use kiln_models::{Arch, torchvision};

use common::{filled, input, parity, relative_error};

fn eval_parity(arch: Arch, device: Device) {
    let model = filled(arch, &device).set_training(false);
    let logits = model.forward(input(&device)).into_data();
    let expected = &parity()[&format!("{arch}.eval_logits")];
    let err = relative_error(&logits, expected);
    assert!(
        err < 1e-4,
        "{arch}: eval logits differ from torchvision by {err:.2e} relative"
    );
}

fn train_parity(arch: Arch, device: Device) {
    let device = device.autodiff();
    let model = common::filled_for(arch, &device, true);
    let fixtures = parity();
    let loss = (model.forward(input(&device))
        * burn::tensor::Tensor::from_data(common::formula("loss_weight", &[2, 10]), &device))
    .sum();
    let grads = loss.backward();
    let (stem, head) = match &model {
        kiln_models::Model::ResNet(m) => (
            m.conv1.weight.grad(&grads),
            m.fc.weight.grad(&grads).map(|g| g.transpose()),
        ),
        kiln_models::Model::DenseNet(m) => (
            m.features.conv0.weight.grad(&grads),
            m.classifier.weight.grad(&grads).map(|g| g.transpose()),
        ),
    };
    let (stem_key, head_key) = if arch.is_densenet() {
        ("features.conv0.weight", "classifier.weight")
    } else {
        ("conv1.weight", "fc.weight")
    };
    let stem = stem
        .map(|g| g.into_data())
        .unwrap_or_else(|| panic!("{arch}: no stem gradient"));
    let head = head
        .map(|g| g.into_data())
        .unwrap_or_else(|| panic!("{arch}: no head gradient"));
    for (key, grad) in [(stem_key, &stem), (head_key, &head)] {
        let err = relative_error(grad, &fixtures[&format!("{arch}.train.grad.{key}")]);
        assert!(
            err < 1e-3,
            "{arch}: gradient of {key} differs by {err:.2e} relative"
        );
    }
    let state = torchvision::state_dict(&model);
    let prefix = format!("{arch}.train.");
    let mut checked = 0;
    for (key, expected) in fixtures.iter().filter(|(k, _)| k.starts_with(&prefix)) {
        let key = &key[prefix.len()..];
        if key.starts_with("grad.") {
            continue;
        }
        let err = relative_error(&state[key], expected);
        assert!(err < 1e-3, "{arch}: {key} differs by {err:.2e} relative");
        checked += 1;
    }
    assert_eq!(
        checked, 4,
        "{arch}: expected running mean and var of two batch norms"
    );
}

macro_rules! eval_tests {
    ($($name:ident => $arch:expr),* $(,)?) => {
        $(test_device!($name, |device: Device| eval_parity($arch, device));)*
    };
}

eval_tests! {
    eval_resnet18 => Arch::Resnet18,
    eval_resnet34 => Arch::Resnet34,
    eval_resnet50 => Arch::Resnet50,
    eval_resnet101 => Arch::Resnet101,
    eval_resnet152 => Arch::Resnet152,
    eval_resnext50_32x4d => Arch::Resnext50_32x4d,
    eval_resnext101_32x8d => Arch::Resnext101_32x8d,
    eval_wide_resnet50_2 => Arch::WideResnet50_2,
    eval_wide_resnet101_2 => Arch::WideResnet101_2,
    eval_densenet121 => Arch::Densenet121,
    eval_densenet161 => Arch::Densenet161,
    eval_densenet169 => Arch::Densenet169,
    eval_densenet201 => Arch::Densenet201,
}

test_device!(train_resnet18, |device: Device| train_parity(
    Arch::Resnet18,
    device
));
test_device!(train_resnet50, |device: Device| train_parity(
    Arch::Resnet50,
    device
));
test_device!(train_densenet121, |device: Device| train_parity(
    Arch::Densenet121,
    device
));
