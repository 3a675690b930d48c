//! `kiln export onnx` from a model directory, and the errors a user sees for a bad directory
//! or an output that cannot be written, with nothing partial left behind.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use burn::tensor::Device;
use kiln_engine::kernels::testing::temp_dir;
use kiln_engine::model_dir::{self, ModelInfo};
use kiln_models::Arch;

fn kiln(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .output()
        .expect("kiln runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A resnet18 model directory for three classes.
fn model_dir(root: &Path) -> PathBuf {
    let dir = root.join("model");
    let device = Device::flex();
    let model = Arch::Resnet18.init(3, &device).set_training(false);
    let info = ModelInfo {
        arch: "resnet18".into(),
        classes: vec!["cat".into(), "dog".into(), "emu".into()],
        image_size: 64,
        mean: [0.485, 0.456, 0.406],
        std: [0.229, 0.224, 0.225],
    };
    model_dir::save(&dir, &model, &info).expect("model dir");
    dir
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf8")
}

#[test]
fn exports_a_model_directory_with_its_metadata() {
    let root = temp_dir("ok");
    let dir = model_dir(&root);
    let out = root.join("resnet18.onnx");
    let o = kiln(&[
        "export",
        "onnx",
        "--model",
        s(&dir),
        "--out",
        s(&out),
        "--batch",
        "4",
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(
        text(&o.stdout).contains("opset 17, batch 4"),
        "{}",
        text(&o.stdout)
    );
    let bytes = std::fs::read(&out).expect("written");
    // Over 11.7 M float parameters, and the class names in the metadata.
    assert!(bytes.len() > 11_000_000 * 4, "{}", bytes.len());
    let needle = br#"["cat","dog","emu"]"#;
    assert!(bytes.windows(needle.len()).any(|w| w == needle));
    let o = kiln(&[
        "export",
        "onnx",
        "--model",
        s(&dir),
        "--out",
        s(&out),
        "--opset",
        "9",
    ]);
    assert!(!o.status.success());
    assert!(text(&o.stderr).contains("opset 9"), "{}", text(&o.stderr));
}

#[test]
fn a_bad_model_directory_is_named() {
    let root = temp_dir("bad");
    let dir = model_dir(&root);
    let out = root.join("x.onnx");
    std::fs::write(
        dir.join("kiln.json"),
        r#"{"arch":"resnet19","classes":["a"],"image_size":32,"mean":[0,0,0],"std":[1,1,1]}"#,
    )
    .expect("write");
    let o = kiln(&["export", "onnx", "--model", s(&dir), "--out", s(&out)]);
    let err = text(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("InvalidModelDirectoryError") && err.contains("resnet19"),
        "{err}"
    );
    std::fs::remove_file(dir.join("kiln.json")).expect("rm");
    let o = kiln(&["export", "onnx", "--model", s(&dir), "--out", s(&out)]);
    let err = text(&o.stderr);
    assert!(
        err.contains("InvalidModelDirectoryError") && err.contains("kiln.json"),
        "{err}"
    );
    assert!(!out.exists());
}

#[test]
fn an_unwritable_output_is_named_and_nothing_is_left() {
    let root = temp_dir("unwritable");
    let dir = model_dir(&root);
    // The output path is an existing directory: the rename over it fails.
    let out = root.join("taken");
    std::fs::create_dir_all(&out).expect("dir");
    let o = kiln(&["export", "onnx", "--model", s(&dir), "--out", s(&out)]);
    let err = text(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains(s(&out)), "{err}");
    let mut left: Vec<String> = std::fs::read_dir(&root)
        .expect("ls")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["model", "taken"], "a temporary file was left behind");
    let missing = root.join("no/such/dir/x.onnx");
    let o = kiln(&["export", "onnx", "--model", s(&dir), "--out", s(&missing)]);
    assert!(text(&o.stderr).contains(s(&missing)), "{}", text(&o.stderr));
}
