//! Weights in and out: kiln's safetensors round trip, torchvision's names, real `torch.save`
//! files (zip, legacy DenseNet names, legacy pickle), and bad input.

mod common;

use std::io::Write;

use burn::tensor::Device;
use kiln_models::torchvision::{self, LoadOptions};
use kiln_models::{Arch, ModelError};
use sha2::{Digest, Sha256};

use common::{fixtures, formula};

fn flex() -> Device {
    Device::flex()
}

fn tmp(name: &str) -> std::path::PathBuf {
    kiln_kernels::testing::temp_dir(name).join(name)
}

#[test]
fn saved_weights_load_back_bit_identically() {
    for arch in [Arch::Resnet18, Arch::Densenet121, Arch::Resnext50_32x4d] {
        let model = arch.init(7, &flex());
        let path = tmp(&format!("{arch}.safetensors"));
        torchvision::save_safetensors(&model, &path, None).expect("save");
        let back = torchvision::load(arch, &path, None, &flex()).expect("load");
        assert_eq!(
            back.num_classes(),
            7,
            "class count taken from the classifier shape"
        );
        let (a, b) = (
            torchvision::state_dict(&model),
            torchvision::state_dict(&back),
        );
        assert_eq!(a.len(), b.len());
        for (key, data) in &a {
            assert_eq!(data.as_bytes(), b[key].as_bytes(), "{arch}: {key} changed");
        }
    }
}

#[test]
fn saved_keys_are_torchvisions_for_every_arch() {
    let digests: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("state_dict_keys.json")).expect("keys fixture"),
    )
    .expect("json");
    for arch in Arch::ALL {
        let model = arch.init(10, &flex());
        let path = tmp(&format!("keys-{arch}.safetensors"));
        torchvision::save_safetensors(&model, &path, None).expect("save");
        // Read the file back: what torchvision would see, minus num_batches_tracked.
        let state = torchvision::read_state_dict(&path).expect("read");
        let lines: Vec<String> = state
            .iter()
            .map(|(k, v)| format!("{k}:{:?}", v.shape().as_slice()))
            .collect();
        let text = lines.join("\n");
        let digest = format!("{:x}", Sha256::digest(text.as_bytes()));
        let expected = &digests["keys"][arch.name()];
        assert_eq!(
            state.len() as u64,
            expected["count"].as_u64().expect("count"),
            "{arch}: key count"
        );
        assert_eq!(
            digest,
            expected["sha256"].as_str().expect("sha"),
            "{arch}: keys:\n{text}"
        );
        std::fs::remove_file(&path).ok();
    }
}

#[test]
fn saved_file_carries_num_batches_tracked_as_torch_does() {
    let path = tmp("nbt.safetensors");
    torchvision::save_safetensors(&Arch::Resnet18.init(3, &flex()), &path, None).expect("save");
    let bytes = std::fs::read(&path).expect("read");
    let file = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
    let nbt = file.tensor("layer1.0.downsample.1.num_batches_tracked");
    assert!(nbt.is_err(), "resnet18 layer1 has no downsample");
    let nbt = file
        .tensor("bn1.num_batches_tracked")
        .expect("bn1.num_batches_tracked");
    assert_eq!(nbt.dtype(), safetensors::Dtype::I64);
    assert!(file.tensor("layer2.0.downsample.0.weight").is_ok());
}

#[test]
fn reads_a_real_torch_save_file() {
    let path = fixtures().join("resnet18_partial.pth");
    let state = torchvision::read_state_dict(&path).expect("read .pth");
    assert!(!state.keys().any(|k| k.contains("num_batches_tracked")));
    for (key, data) in &state {
        assert_eq!(data, &formula(key, data.shape().as_slice()), "{key}");
    }
    let model = torchvision::load_state_dict(
        Arch::Resnet18.init(10, &flex()),
        state.clone(),
        Arch::Resnet18,
        &path,
        LoadOptions {
            allow_missing: true,
            ..Default::default()
        },
    )
    .expect("partial load");
    let loaded = torchvision::state_dict(&model);
    for (key, data) in &state {
        assert_eq!(loaded[key].as_bytes(), data.as_bytes(), "{key} not applied");
    }
}

#[test]
fn reads_densenet_legacy_key_names() {
    let path = fixtures().join("densenet121_legacy.pth");
    let state = torchvision::read_state_dict(&path).expect("read legacy densenet");
    assert!(state.contains_key("features.denseblock1.denselayer1.norm1.weight"));
    assert!(state.contains_key("features.denseblock1.denselayer1.conv2.weight"));
    assert!(
        !state
            .keys()
            .any(|k| k.contains(".norm.1.") || k.contains(".conv.2."))
    );
    let model = torchvision::load_state_dict(
        Arch::Densenet121.init(10, &flex()),
        state,
        Arch::Densenet121,
        &path,
        LoadOptions {
            allow_missing: true,
            ..Default::default()
        },
    )
    .expect("legacy names load");
    let key = "features.denseblock1.denselayer1.conv1.weight";
    let loaded = &torchvision::state_dict(&model)[key];
    assert_eq!(loaded, &formula(key, loaded.shape().as_slice()));
}

#[test]
fn legacy_pickle_format_reads_or_says_to_resave() {
    let path = fixtures().join("densenet121_legacy_pickle.pth");
    match torchvision::read_state_dict(&path) {
        Ok(state) => {
            let key = "features.denseblock1.denselayer1.norm2.running_var";
            assert_eq!(state[key], formula(key, state[key].shape().as_slice()));
        }
        Err(e) => {
            let msg = e.to_string();
            assert!(
                msg.contains("densenet121_legacy_pickle.pth") && msg.contains("torch.save"),
                "{msg}"
            );
        }
    }
}

#[test]
fn weights_of_another_arch_name_the_first_mismatch() {
    let path = tmp("r18.safetensors");
    torchvision::save_safetensors(&Arch::Resnet18.init(10, &flex()), &path, None).expect("save");
    let err = torchvision::load(Arch::Resnet34, &path, None, &flex()).expect_err("mismatch");
    let msg = err.to_string();
    assert!(matches!(err, ModelError::Mismatch { .. }), "{msg}");
    assert!(
        msg.contains("missing key 'layer1.2.bn1.bias'") || msg.contains("missing key"),
        "{msg}"
    );

    let err = torchvision::load(Arch::Resnet50, &path, None, &flex()).expect_err("mismatch");
    let msg = err.to_string();
    // Keys are compared in sorted order; for resnet18 weights in resnet50 the first misfit
    // is the classifier.
    assert!(
        msg.contains("fc.weight") && msg.contains("[10, 512]") && msg.contains("[10, 2048]"),
        "{msg}"
    );
}

#[test]
fn weights_for_another_class_count_name_the_key_and_shapes() {
    let path = tmp("r18-10.safetensors");
    torchvision::save_safetensors(&Arch::Resnet18.init(10, &flex()), &path, None).expect("save");
    let err = torchvision::load(Arch::Resnet18, &path, Some(5), &flex()).expect_err("mismatch");
    let msg = err.to_string();
    assert!(
        msg.contains("fc.bias") || msg.contains("fc.weight"),
        "{msg}"
    );
    assert!(msg.contains("[10") && msg.contains("[5"), "{msg}");
}

#[test]
fn truncated_or_foreign_files_are_clear_errors() {
    let good = tmp("good.safetensors");
    torchvision::save_safetensors(&Arch::Resnet18.init(2, &flex()), &good, None).expect("save");
    let bytes = std::fs::read(&good).expect("read");
    let cases = [
        ("truncated.safetensors", bytes[..bytes.len() / 2].to_vec()),
        (
            "truncated.pth",
            std::fs::read(fixtures().join("resnet18_partial.pth")).expect("pth")[..4000].to_vec(),
        ),
        ("text.pth", b"this is not a checkpoint at all".to_vec()),
        ("empty.pth", Vec::new()),
    ];
    for (name, content) in cases {
        let path = tmp(name);
        std::fs::File::create(&path)
            .and_then(|mut f| f.write_all(&content))
            .expect("write");
        let err = torchvision::load(Arch::Resnet18, &path, None, &flex()).expect_err(name);
        let msg = err.to_string();
        assert!(matches!(err, ModelError::BadFile { .. }), "{name}: {msg}");
        assert!(
            msg.contains(name) && msg.contains("expected"),
            "{name}: {msg}"
        );
    }
    let missing = tmp("no-such-file.pth");
    let msg = torchvision::load(Arch::Resnet18, &missing, None, &flex())
        .expect_err("missing")
        .to_string();
    assert!(msg.contains("no-such-file.pth"), "{msg}");
}

#[test]
fn unknown_arch_lists_the_valid_names() {
    let msg = "resnet19".parse::<Arch>().expect_err("unknown").to_string();
    assert!(msg.contains("resnet19"), "{msg}");
    for arch in Arch::ALL {
        assert!(msg.contains(arch.name()), "{msg}");
    }
}

#[test]
fn write_to_an_unwritable_path_names_it() {
    let path = std::path::Path::new("/nonexistent-dir/model.safetensors");
    let msg = torchvision::save_safetensors(&Arch::Resnet18.init(2, &flex()), path, None)
        .expect_err("unwritable")
        .to_string();
    assert!(msg.contains("/nonexistent-dir/model.safetensors"), "{msg}");
}

/// A safetensors file of f32 tensors of the given shapes (values all zero).
fn write_shapes(name: &str, tensors: &[(&str, &[usize])]) -> std::path::PathBuf {
    let blobs: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, shape)| vec![0u8; 4 * shape.iter().product::<usize>()])
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .zip(&blobs)
        .map(|((key, shape), blob)| {
            let view =
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.to_vec(), blob)
                    .expect("view");
            (key.to_string(), view)
        })
        .collect();
    let path = tmp(name);
    safetensors::serialize_to_file(views, None, &path).expect("write");
    path
}

#[test]
fn a_classifier_no_model_can_be_built_for_is_refused_before_building_it() {
    // 300,000 classes of one feature: a small file whose model would need 600 MB of classifier
    // on resnet18's 512 features, refused by count before anything is built.
    let wide = write_shapes("wide.safetensors", &[("fc.weight", &[300_000, 1])]);
    let msg = torchvision::load(Arch::Resnet18, &wide, None, &flex())
        .expect_err("too many classes")
        .to_string();
    assert!(
        msg.contains("wide.safetensors") && msg.contains("300000 classes") && msg.contains("1 to"),
        "{msg}"
    );
    // A classifier of no rows, or of no shape at all, names the key and its shape.
    let empty = write_shapes("empty-fc.safetensors", &[("fc.weight", &[0, 512])]);
    let msg = torchvision::load(Arch::Resnet18, &empty, None, &flex())
        .expect_err("no classes")
        .to_string();
    assert!(msg.contains("0 classes"), "{msg}");
    let scalar = write_shapes("scalar-fc.safetensors", &[("fc.weight", &[])]);
    let msg = torchvision::load(Arch::Resnet18, &scalar, None, &flex())
        .expect_err("a scalar classifier")
        .to_string();
    assert!(
        msg.contains("scalar-fc.safetensors") && msg.contains("'fc.weight' has shape []"),
        "{msg}"
    );
}
