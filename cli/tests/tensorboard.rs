//! TensorBoard event files from `kiln train`: read back in Rust with their checksums, and by
//! the Python `tensorboard` package itself (`EventAccumulator`, `tensorboard --inspect`), whose
//! scalars must equal `metrics.jsonl` at f32 precision; a resumed run shows no step twice.
//!
//! The Python peer is `$KILN_PYTHON` (a Python with `tensorboard` installed; CI makes one).
//! Without it the Python half says so and passes, unless `KILN_REQUIRE_PYTHON` is set.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use kiln_engine::kernels::testing::temp_dir;
use kiln_engine::train::tensorboard::{masked_crc32c, read_events};
use serde_json::Value;

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
const KILN: &str = env!("CARGO_BIN_EXE_kiln");

fn train(out: &Path, extra: &[&str]) {
    let data = Path::new(ROOT).join("data/fashion-mnist-mini");
    let o = Command::new(KILN)
        .args([
            "train",
            "--data",
            data.to_str().unwrap(),
            "--batch-size",
            "8",
        ])
        .args([
            "--max-steps-per-epoch",
            "12",
            "--image-size",
            "28",
            "--workers",
            "1",
        ])
        .args(["--output-dir", out.join("outputs").to_str().unwrap()])
        .args(extra)
        .env("RAYON_NUM_THREADS", "1")
        .output()
        .expect("kiln train runs");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

fn event_files(logs: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(logs)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("events.out.tfevents.")
        })
        .collect();
    files.sort();
    files
}

/// `metrics.jsonl` as `split/name` -> [(step, value)].
fn jsonl(logs: &Path) -> BTreeMap<String, Vec<(i64, f64)>> {
    let mut out: BTreeMap<String, Vec<(i64, f64)>> = BTreeMap::new();
    for line in std::fs::read_to_string(logs.join("metrics.jsonl"))
        .unwrap()
        .lines()
    {
        let m: Value = serde_json::from_str(line).unwrap();
        let tag = format!(
            "{}/{}",
            m["split"].as_str().unwrap(),
            m["name"].as_str().unwrap()
        );
        out.entry(tag).or_default().push((
            m["step"].as_i64().unwrap(),
            m["value"].as_f64().unwrap_or(f64::NAN),
        ));
    }
    out
}

/// A Python with `tensorboard`, or `None` (allowed only without `KILN_REQUIRE_PYTHON`).
fn python() -> Option<String> {
    match std::env::var("KILN_PYTHON") {
        Ok(p) if !p.is_empty() => Some(p),
        _ => {
            assert!(
                std::env::var_os("KILN_REQUIRE_PYTHON").is_none(),
                "KILN_REQUIRE_PYTHON is set but KILN_PYTHON names no Python with tensorboard"
            );
            eprintln!("KILN_PYTHON is not set: the Python tensorboard checks are skipped");
            None
        }
    }
}

/// Every scalar tag's (step, value) pairs as TensorBoard's `EventAccumulator` reads `logs`.
fn accumulated(python: &str, logs: &Path) -> Value {
    let script = r#"
import json, sys
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
acc = EventAccumulator(sys.argv[1], size_guidance={"scalars": 0, "tensors": 0})
acc.Reload()
tags = acc.Tags()
out = {t: [[e.step, e.value] for e in acc.Scalars(t)] for t in tags["scalars"]}
out["__text__"] = [[e.step, 0] for t in tags["tensors"] for e in acc.Tensors(t)]
print(json.dumps(out))
"#;
    let o = Command::new(python)
        .args(["-c", script, logs.to_str().unwrap()])
        .output()
        .expect("python runs");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).expect("json")
}

#[test]
fn event_files_hold_the_runs_metrics_as_tensorboard_reads_them() {
    let dir = temp_dir("tensorboard");
    train(&dir, &["--epochs", "2"]);
    let logs = dir.join("logs");
    let files = event_files(&logs);
    assert_eq!(files.len(), 1, "{files:?}");
    let events = read_events(&files[0]).unwrap();
    assert_eq!(events[0].file_version.as_deref(), Some("brain.Event:2"));
    let metrics = jsonl(&logs);
    // Every metrics.jsonl value is an event scalar with the same tag and step.
    let mut scalars: BTreeMap<String, Vec<(i64, f32)>> = BTreeMap::new();
    for e in &events {
        for v in e.summary.iter().flat_map(|s| &s.value) {
            if let Some(x) = v.simple_value {
                scalars.entry(v.tag.clone()).or_default().push((e.step, x));
            }
        }
    }
    for (tag, values) in &metrics {
        let got: Vec<(i64, f32)> = values.iter().map(|&(s, v)| (s, v as f32)).collect();
        assert_eq!(scalars.get(tag), Some(&got), "{tag}");
    }
    for tag in [
        "train/loss",
        "train/acc",
        "train/lr",
        "train/images_per_s",
        "train/epoch_time_s",
        "val/loss",
        "val/acc",
        "val/top5",
    ] {
        assert!(metrics.contains_key(tag), "{tag}");
    }
    assert_eq!(
        scalars["train/step_loss"]
            .iter()
            .map(|s| s.0)
            .collect::<Vec<_>>(),
        [10, 20]
    );
    let Some(python) = python() else { return };
    let read = accumulated(&python, &logs);
    for (tag, values) in &metrics {
        let theirs: Vec<(i64, f32)> = read[tag]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p[0].as_i64().unwrap(), p[1].as_f64().unwrap() as f32))
            .collect();
        let ours: Vec<(i64, f32)> = values.iter().map(|&(s, v)| (s, v as f32)).collect();
        assert_eq!(theirs, ours, "{tag} as EventAccumulator reads it");
    }
    assert_eq!(
        read["__text__"].as_array().unwrap().len(),
        1,
        "the hyperparameters as text"
    );
    let inspect = Command::new(&python)
        .args([
            "-m",
            "tensorboard.main",
            "--inspect",
            "--logdir",
            logs.to_str().unwrap(),
        ])
        .output()
        .expect("tensorboard --inspect runs");
    let text = String::from_utf8_lossy(&inspect.stdout).into_owned()
        + &String::from_utf8_lossy(&inspect.stderr);
    assert!(
        text.contains("val/acc") && text.contains("train/loss"),
        "{text}"
    );
    // TFRecord's masked CRC-32C, as TensorBoard computes it.
    let vectors: [&[u8]; 4] = [b"", b"123456789", &[0u8; 32], b"brain.Event:2"];
    let crcs = Command::new(&python)
        .args([
            "-c",
            "import sys, json\nfrom tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c\n\
             print(json.dumps([masked_crc32c(bytes.fromhex(h)) for h in sys.argv[1:]]))",
        ])
        .args(vectors.iter().map(|v| v.iter().map(|b| format!("{b:02x}")).collect::<String>()))
        .output()
        .expect("python runs");
    let theirs: Vec<u32> = serde_json::from_slice(&crcs.stdout).expect("json");
    let ours: Vec<u32> = vectors.iter().map(|v| masked_crc32c(v)).collect();
    assert_eq!(theirs, ours);
}

#[test]
fn a_resumed_run_shows_no_step_twice() {
    let dir = temp_dir("tensorboard-resume");
    train(&dir, &["--epochs", "2"]);
    let checkpoint = dir.join("outputs/checkpoints/epoch-1");
    assert!(checkpoint.is_dir());
    train(
        &dir,
        &["--epochs", "3", "--resume", checkpoint.to_str().unwrap()],
    );
    let logs = dir.join("logs");
    let files = event_files(&logs);
    assert_eq!(files.len(), 2, "{files:?}");
    let resumed = read_events(&files[1]).unwrap();
    let start = resumed
        .iter()
        .find(|e| e.session_log.is_some())
        .expect("a SessionLog START");
    assert_eq!(start.step, 13, "one past the checkpoint's step (12)");
    let Some(python) = python() else { return };
    let read = accumulated(&python, &logs);
    let steps: Vec<i64> = read["val/acc"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p[0].as_i64().unwrap())
        .collect();
    assert_eq!(
        steps,
        [12, 24, 36],
        "epoch 2 of the first run is dropped, not shown twice"
    );
    let metrics = jsonl(&logs);
    let theirs: Vec<f32> = read["val/acc"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p[1].as_f64().unwrap() as f32)
        .collect();
    let ours: Vec<f32> = metrics["val/acc"].iter().map(|&(_, v)| v as f32).collect();
    assert_eq!(theirs, ours, "metrics.jsonl kept the same epochs");
}
