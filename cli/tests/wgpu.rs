//! `kiln train --device wgpu` end to end: a few steps of ResNet-18 on a tiny copy of the
//! bundled dataset, on whatever wgpu adapter there is (CI: llvmpipe, a software Vulkan driver),
//! with the fused SGD kernel doing the updates. Skips without an adapter unless
//! `KILN_REQUIRE_WGPU` is set.

use std::path::Path;
use std::process::Command;

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

/// `per_class` images of each class of `from` into `to`.
fn subset(from: &Path, to: &Path, per_class: usize) {
    for class in std::fs::read_dir(from).expect("classes").flatten() {
        let dest = to.join(class.file_name());
        std::fs::create_dir_all(&dest).expect("class dir");
        let mut images: Vec<_> = std::fs::read_dir(class.path())
            .expect("images")
            .flatten()
            .map(|e| e.path())
            .collect();
        images.sort();
        for image in images.iter().take(per_class) {
            std::fs::copy(image, dest.join(image.file_name().unwrap())).expect("copy");
        }
    }
}

#[test]
fn train_on_wgpu_end_to_end() {
    if kiln_engine::kernels::testing::wgpu().is_none() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("kiln-wgpu-train-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let data = Path::new(ROOT).join("data/fashion-mnist-mini");
    subset(&data.join("train"), &dir.join("data/train"), 4);
    subset(&data.join("val"), &dir.join("data/val"), 2);
    let outputs = dir.join("outputs");
    let o = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args([
            "train",
            "--device",
            "wgpu",
            "--epochs",
            "2",
            "--batch-size",
            "8",
        ])
        .args(["--image-size", "32", "--workers", "1", "--lr", "0.01"])
        .arg("--data")
        .arg(dir.join("data"))
        .arg("--output-dir")
        .arg(&outputs)
        .output()
        .expect("kiln runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "{text}");
    assert!(text.contains("epoch 2/2"), "{text}");
    assert!(outputs.join("model/model.safetensors").is_file());
    let metrics = std::fs::read_to_string(dir.join("logs/metrics.jsonl")).expect("metrics");
    let losses: Vec<f64> = metrics
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("json"))
        .filter(|m| m["name"] == "loss")
        .map(|m| m["value"].as_f64().expect("a finite loss"))
        .collect();
    assert_eq!(
        losses.len(),
        4,
        "train and val loss for 2 epochs: {metrics}"
    );
    assert!(
        losses.iter().all(|l| l.is_finite() && *l > 0.0),
        "{losses:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
