//! The trainer end to end, on small generated image folders: determinism, resume, early
//! stopping with best-weight restore, transfer learning, and the outputs it writes.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use image::{Rgb, RgbImage};
use kiln_engine::kernels::testing::temp_dir;
use kiln_engine::model_dir;
use kiln_engine::train::progress::Progress;
use kiln_engine::train::{StopReason, TrainConfig, TrainSummary, Trainer};
use kiln_models::torchvision;

/// burn draws random numbers from one generator per device, global to the process, and the
/// trainer seeds it: a test that trains must not run while another one does, or each takes
/// numbers from the other's sequence (seen as "two seeded runs differ" on a loaded machine).
fn one_at_a_time() -> MutexGuard<'static, ()> {
    static TRAINING: Mutex<()> = Mutex::new(());
    TRAINING
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Two easy classes: reddish and bluish squares with a little texture.
fn dataset(root: &Path, per_class: usize) {
    for split in ["train", "val"] {
        let n = if split == "train" {
            per_class
        } else {
            per_class / 2
        };
        for (class, base) in [("blue", [20u8, 40, 200]), ("red", [200u8, 40, 20])] {
            let dir = root.join(split).join(class);
            std::fs::create_dir_all(&dir).expect("dir");
            for i in 0..n {
                let img = RgbImage::from_fn(36, 36, |x, y| {
                    let t = ((x * 7 + y * 13 + i as u32 * 31) % 40) as u8;
                    Rgb([
                        base[0].saturating_add(t),
                        base[1] + t,
                        base[2].saturating_sub(t),
                    ])
                });
                img.save(dir.join(format!("{i:03}.png"))).expect("png");
            }
        }
    }
}

fn config(data: &Path, out: &Path) -> TrainConfig {
    TrainConfig {
        data: Some(data.to_path_buf()),
        epochs: 3,
        batch_size: 8,
        lr: 0.01,
        image_size: Some(32),
        workers: Some(2),
        output_dir: out.join("outputs"),
        ..TrainConfig::default()
    }
}

fn fit(config: TrainConfig) -> TrainSummary {
    Trainer::new(config)
        .with_progress(Progress::silent())
        .fit()
        .expect("training")
}

fn weights(dir: &Path) -> torchvision::StateDict {
    torchvision::read_state_dict(&dir.join("model.safetensors")).expect("weights")
}

#[test]
fn seeded_runs_are_bitwise_identical_and_resume_equals_uninterrupted() {
    let _training = one_at_a_time();
    let data = temp_dir("det-data");
    dataset(&data, 16);
    let (a, b, c) = (temp_dir("det-a"), temp_dir("det-b"), temp_dir("det-c"));
    let run_a = fit(config(&data, &a));
    let run_b = fit(config(&data, &b));
    let metrics = |s: &TrainSummary| {
        s.history
            .iter()
            .map(|m| (m.train_loss, m.train_acc, m.val_loss, m.val_acc, m.lr))
            .collect::<Vec<_>>()
    };
    assert_eq!(metrics(&run_a), metrics(&run_b), "two seeded runs differ");
    // 4 steps an epoch, and no step waits for the device: one read of their losses and hits
    // at each epoch's end (no progress bar here).
    assert_eq!(
        run_a.step_host_reads, 3,
        "device reads by the training steps"
    );
    assert_eq!(weights(&run_a.model_dir), weights(&run_b.model_dir));

    // Interrupted after epoch 2: the checkpoints it had then survive; resume from them. Epoch
    // 2's is always kept, as one of the last two; epoch 1's only while it is the best, so it is
    // in run A's at the end only if it was the best after epoch 2 too (and the resumed run needs
    // it to write the model). Where epoch 3 beat it, the resumed run needs none but epoch 2's.
    let ckpts = c.join("outputs/checkpoints");
    std::fs::create_dir_all(&ckpts).expect("dir");
    for epoch in ["epoch-1", "epoch-2"] {
        let kept = a.join("outputs/checkpoints").join(epoch);
        if !kept.exists() {
            continue;
        }
        let status = std::process::Command::new("cp")
            .arg("-r")
            .arg(kept)
            .arg(&ckpts)
            .status()
            .expect("cp");
        assert!(status.success());
    }
    let resumed = fit(TrainConfig {
        resume: Some(c.join("outputs")),
        ..config(&data, &c)
    });
    assert_eq!(
        metrics(&resumed),
        metrics(&run_a),
        "resume differs from uninterrupted run"
    );
    assert_eq!(weights(&resumed.model_dir), weights(&run_a.model_dir));
}

#[test]
fn early_stopping_stops_on_patience_and_keeps_the_best_epoch() {
    let _training = one_at_a_time();
    let data = temp_dir("es-data");
    dataset(&data, 8);
    let out = temp_dir("es-out");
    // A learning rate this large makes validation loss jump about.
    let summary = fit(TrainConfig {
        epochs: 6,
        patience: 1,
        lr: 2.0,
        batch_size: 4,
        ..config(&data, &out)
    });
    let losses: Vec<f64> = summary.history.iter().map(|m| m.val_loss).collect();
    // Replay the rule on what was measured.
    let mut best = (0, losses[0]);
    let mut stop_at = None;
    for (e, &l) in losses.iter().enumerate().skip(1) {
        if l < best.1 {
            best = (e, l);
        } else {
            stop_at = Some(e);
            break;
        }
    }
    assert_eq!(summary.best_epoch, best.0 + 1, "losses {losses:?}");
    match stop_at {
        Some(e) => {
            assert_eq!(
                summary.stop_reason,
                StopReason::EarlyStopping,
                "losses {losses:?}"
            );
            assert_eq!(summary.history.len(), e + 1, "losses {losses:?}");
        }
        None => assert_eq!(summary.stop_reason, StopReason::Completed),
    }
    let kept = weights(&summary.model_dir);
    let best_ckpt = weights(&out.join(format!("outputs/checkpoints/epoch-{}", summary.best_epoch)));
    assert_eq!(
        kept, best_ckpt,
        "the model directory holds the best epoch's weights"
    );
}

#[test]
fn writes_model_dir_metrics_curves_and_keeps_two_checkpoints_and_the_best() {
    let _training = one_at_a_time();
    let data = temp_dir("out-data");
    dataset(&data, 8);
    let out = temp_dir("out-out");
    let summary = fit(TrainConfig {
        epochs: 4,
        patience: 10,
        ..config(&data, &out)
    });
    let (info, arch) = model_dir::read_info(&summary.model_dir).expect("kiln.json");
    assert_eq!(arch.name(), "resnet18");
    assert_eq!(info.classes, ["blue", "red"]);
    assert_eq!(info.image_size, 32);
    let lines = std::fs::read_to_string(out.join("logs/metrics.jsonl")).expect("metrics");
    let records: Vec<serde_json::Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(records.len(), 4 * 8, "5 train + 3 val metrics per epoch");
    for key in [
        "run", "rank", "epoch", "step", "split", "name", "value", "time",
    ] {
        assert!(records[0].get(key).is_some(), "missing {key}");
    }
    assert!(out.join("outputs/curves.png").is_file());
    let mut kept: Vec<String> = std::fs::read_dir(out.join("outputs/checkpoints"))
        .expect("checkpoints")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    kept.sort();
    let mut expected = vec!["epoch-3".to_string(), "epoch-4".to_string()];
    let best = format!("epoch-{}", summary.best_epoch);
    if !expected.contains(&best) {
        expected.insert(0, best);
    }
    assert_eq!(kept, expected);
}

#[test]
fn transfer_learning_from_torchvision_weights_with_a_frozen_backbone() {
    let _training = one_at_a_time();
    let data = temp_dir("tl-data");
    dataset(&data, 8);
    let out = temp_dir("tl-out");
    // "Pretrained" weights for 1000 classes, as torchvision ships them.
    let pretrained = out.join("resnet18-imagenet.safetensors");
    let source = kiln_models::Arch::Resnet18.init(1000, &burn::tensor::Device::flex());
    torchvision::save_safetensors(&source, &pretrained, None).expect("save");
    let summary = fit(TrainConfig {
        pretrained: Some(pretrained.clone()),
        freeze_backbone: true,
        epochs: 1,
        ..config(&data, &out)
    });
    let before = torchvision::read_state_dict(&pretrained).expect("read");
    let after = weights(&summary.model_dir);
    assert_eq!(after["fc.weight"].shape().as_slice(), [2, 512]);
    assert_eq!(
        after["conv1.weight"], before["conv1.weight"],
        "backbone frozen"
    );
    assert_eq!(
        after["layer4.1.conv2.weight"],
        before["layer4.1.conv2.weight"]
    );
}

#[test]
fn bad_options_and_data_are_clear_errors() {
    let _training = one_at_a_time();
    let data = temp_dir("bad-data");
    dataset(&data, 4);
    std::fs::create_dir_all(data.join("val/green")).expect("dir");
    image::RgbImage::new(8, 8)
        .save(data.join("val/green/0.png"))
        .expect("png");
    let out = temp_dir("bad-out");
    let err = Trainer::new(config(&data, &out))
        .with_progress(Progress::silent())
        .fit()
        .expect_err("class mismatch");
    assert!(err.to_string().starts_with("InvalidDatasetError"), "{err}");
    // The architecture is typed: an unknown name is refused where the config is read.
    let err = serde_json::from_value::<TrainConfig>(serde_json::json!({"arch": "resnet19"}))
        .expect_err("arch");
    assert!(
        err.to_string().contains("resnet19") && err.to_string().contains("densenet121"),
        "{err}"
    );
}

#[test]
fn memory_efficient_densenet_trains_like_the_plain_one() {
    let _training = one_at_a_time();
    let data = temp_dir("me-data");
    dataset(&data, 4);
    let run = |memory_efficient: bool| {
        let out = temp_dir(&format!("me-out-{memory_efficient}"));
        fit(TrainConfig {
            arch: kiln_models::Arch::Densenet121,
            epochs: 1,
            batch_size: 4,
            max_steps_per_epoch: Some(2),
            memory_efficient,
            ..config(&data, &out)
        })
    };
    let (plain, efficient) = (run(false), run(true));
    let (a, b) = (&plain.history[0], &efficient.history[0]);
    assert!(
        (a.train_loss - b.train_loss).abs() < 1e-5,
        "{} vs {}",
        a.train_loss,
        b.train_loss
    );
    assert!(
        (a.val_loss - b.val_loss).abs() < 1e-4,
        "{} vs {}",
        a.val_loss,
        b.val_loss
    );
}

#[test]
fn a_run_that_fails_leaves_no_metrics_and_resume_refuses_other_classes() {
    let _training = one_at_a_time();
    // An image that does not decode: the run fails at its first batch and writes no metrics.
    let data = temp_dir("fail-data");
    dataset(&data, 4);
    std::fs::write(data.join("train/red/zz-broken.png"), b"not a png").expect("write");
    let out = temp_dir("fail-out");
    let err = Trainer::new(config(&data, &out))
        .with_progress(Progress::silent())
        .fit()
        .expect_err("decode failure");
    assert!(err.to_string().contains("zz-broken.png"), "{err}");
    assert!(
        !out.join("logs/metrics.jsonl").exists(),
        "an empty metrics file left behind"
    );

    // One epoch, then resume on data whose classes were renamed: refused, naming them.
    std::fs::remove_file(data.join("train/red/zz-broken.png")).expect("rm");
    let first = fit(TrainConfig {
        epochs: 1,
        ..config(&data, &out)
    });
    assert_eq!(first.history.len(), 1);
    for split in ["train", "val"] {
        std::fs::rename(
            data.join(split).join("red"),
            data.join(split).join("crimson"),
        )
        .expect("rename");
    }
    let err = Trainer::new(TrainConfig {
        resume: Some(out.join("outputs")),
        ..config(&data, &out)
    })
    .with_progress(Progress::silent())
    .fit()
    .expect_err("other classes");
    let e = err.to_string();
    assert!(
        e.starts_with("InvalidDatasetError") && e.contains("[red]") && e.contains("[crimson]"),
        "{e}"
    );
}
