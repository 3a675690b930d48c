//! Transfer-learning helpers and torchvision's construction options.

use burn::tensor::{Device, Tensor};
use kiln_models::resnet::{BlockKind, ResNetConfig};
use kiln_models::{Arch, Model, torchvision};

#[test]
fn with_num_classes_replaces_only_the_head() {
    let device = Device::flex();
    for arch in [Arch::Resnet18, Arch::Densenet121] {
        let model = arch.init(1000, &device);
        let before = torchvision::state_dict(&model);
        let model = model.with_num_classes(4);
        assert_eq!(model.num_classes(), 4);
        let after = torchvision::state_dict(&model);
        let head = if arch.is_densenet() {
            "classifier."
        } else {
            "fc."
        };
        for (key, data) in &after {
            if key.starts_with(head) {
                assert_eq!(data.shape()[0], 4, "{key}");
            } else {
                assert_eq!(
                    data.as_bytes(),
                    before[key].as_bytes(),
                    "{arch}: {key} changed"
                );
            }
        }
        let logits = model
            .set_training(false)
            .forward(Tensor::zeros([1, 3, 32, 32], &device));
        assert_eq!(logits.dims(), [1, 4]);
    }
}

#[test]
fn freeze_backbone_leaves_gradients_only_on_the_head() {
    let device = Device::flex().autodiff();
    for arch in [Arch::Resnet18, Arch::Densenet121] {
        let model = arch.init(3, &device).freeze_backbone();
        let loss = model.forward(Tensor::ones([2, 3, 32, 32], &device)).sum();
        let grads = loss.backward();
        match &model {
            Model::ResNet(m) => {
                assert!(m.fc.weight.grad(&grads).is_some(), "head trains");
                assert!(m.conv1.weight.grad(&grads).is_none(), "stem frozen");
            }
            Model::DenseNet(m) => {
                assert!(m.classifier.weight.grad(&grads).is_some(), "head trains");
                assert!(
                    m.features.conv0.weight.grad(&grads).is_none(),
                    "stem frozen"
                );
            }
        }
    }
}

#[test]
fn zero_init_residual_zeroes_each_blocks_last_bn() {
    let device = Device::flex();
    let model = Model::ResNet(
        ResNetConfig::new(BlockKind::Bottleneck, [3, 4, 6, 3])
            .with_zero_init_residual(true)
            .init(&device),
    );
    let state = torchvision::state_dict(&model);
    let zero = |k: &str| {
        state[k]
            .try_to_vec::<f32>()
            .expect("f32")
            .iter()
            .all(|v| *v == 0.0)
    };
    assert!(zero("layer1.0.bn3.weight") && zero("layer4.2.bn3.weight"));
    assert!(!zero("layer1.0.bn2.weight") && !zero("bn1.weight"));
}

#[test]
fn eval_mode_uses_running_stats_and_train_mode_updates_them() {
    let device = Device::flex().autodiff();
    let model = Arch::Resnet18.init(2, &device);
    let x = Tensor::<4>::ones([2, 3, 32, 32], &device);
    let eval = model.set_training(false);
    let _ = eval.forward(x.clone());
    let mean = |m: &Model| torchvision::state_dict(m)["bn1.running_mean"].clone();
    assert_eq!(
        mean(&eval),
        Tensor::<1>::zeros([64], &device).into_data(),
        "eval keeps stats"
    );
    let train = eval.set_training(true);
    let _ = train.forward(x);
    assert_ne!(
        mean(&train),
        Tensor::<1>::zeros([64], &device).into_data(),
        "train updates stats"
    );
}

#[test]
fn every_arch_has_torchvisions_parameter_count() {
    // torchvision's numbers for num_classes=1000.
    let expected = [
        (Arch::Resnet18, 11_689_512),
        (Arch::Resnet50, 25_557_032),
        (Arch::Resnext50_32x4d, 25_028_904),
        (Arch::WideResnet50_2, 68_883_240),
        (Arch::Densenet121, 7_978_856),
        (Arch::Densenet161, 28_681_000),
    ];
    for (arch, count) in expected {
        let state = torchvision::state_dict_shapes(&arch.init(1000, &Device::flex()));
        let params: usize = state
            .iter()
            .filter(|(key, _)| !key.contains("running_"))
            .map(|(_, shape)| shape.iter().product::<usize>())
            .sum();
        assert_eq!(params, count, "{arch}");
    }
}

#[test]
fn memory_efficient_densenet_recomputes_and_gives_the_same_gradients() {
    use kiln_models::densenet::DenseNetConfig;
    let config = || DenseNetConfig::new(8, [2, 2, 2, 2], 16).with_num_classes(3);
    let plain = Model::DenseNet(config().init(&Device::flex()));
    let state = torchvision::state_dict(&plain);
    let grads_on = |memory_efficient: bool| {
        let net = config()
            .with_memory_efficient(memory_efficient)
            .init(&Device::flex());
        let device = net.training_device(&Device::flex());
        let strategy = format!("{:?}", device.gradient_checkpointing_strategy());
        let plain_strategy = format!(
            "{:?}",
            Device::flex().autodiff().gradient_checkpointing_strategy()
        );
        assert_eq!(strategy != plain_strategy, memory_efficient, "{strategy}");
        let model = torchvision::load_state_dict(
            Model::DenseNet(
                config()
                    .with_memory_efficient(memory_efficient)
                    .init(&device),
            ),
            state.clone(),
            kiln_models::Arch::Densenet121,
            "same weights".as_ref(),
            Default::default(),
        )
        .expect("same weights");
        let x = Tensor::<4>::ones([2, 3, 32, 32], &device);
        let grads = model.forward(x).sum().backward();
        match &model {
            Model::DenseNet(m) => m
                .features
                .conv0
                .weight
                .grad(&grads)
                .expect("grad")
                .into_data(),
            Model::ResNet(_) => unreachable!(),
        }
    };
    let (a, b) = (grads_on(false), grads_on(true));
    a.assert_approx_eq::<f32>(&b, burn::tensor::Tolerance::absolute(1e-5));
}
