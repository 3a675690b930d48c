//! The `kiln` binary end to end: train on the bundled dataset, predict with the result, score a
//! raw tensor, and the errors a user sees.

use std::path::Path;
use std::process::{Command, Output};

use burn::tensor::{Device, Distribution, Tensor};
use kiln_engine::kernels::testing::temp_dir;
use kiln_models::{Arch, torchvision};

fn kiln(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .output()
        .expect("kiln runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn train_on_the_bundled_dataset_learns_then_predicts() {
    let out = temp_dir("train");
    let outputs = out.join("outputs");
    let o = kiln(&[
        "train",
        "--epochs",
        "2",
        "--output-dir",
        outputs.to_str().expect("utf8"),
    ]);
    let (stdout, stderr) = (text(&o.stdout), text(&o.stderr));
    assert!(o.status.success(), "train failed:\n{stdout}\n{stderr}");
    assert!(
        stdout.contains("epoch 1/2") && stdout.contains("epoch 2/2"),
        "{stdout}"
    );
    assert!(stdout.contains("model written to"), "{stdout}");
    let metrics = std::fs::read_to_string(out.join("logs/metrics.jsonl")).expect("metrics.jsonl");
    let val_acc: Vec<f64> = metrics
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("json"))
        .filter(|r| r["split"] == "val" && r["name"] == "acc")
        .map(|r| r["value"].as_f64().expect("number"))
        .collect();
    assert_eq!(val_acc.len(), 2);
    let best = val_acc.iter().cloned().fold(0.0, f64::max);
    assert!(
        best > 0.5,
        "validation accuracy {val_acc:?} is not well above chance (0.1)"
    );

    // Predict with the trained model: a good image and an unreadable one.
    let model = outputs.join("model");
    let image = "data/fashion-mnist-mini/val/Trouser";
    let bad = out.join("broken.png");
    std::fs::write(&bad, b"not an image").expect("write");
    let o = kiln(&[
        "predict",
        "--model",
        model.to_str().unwrap(),
        "--top-k",
        "3",
        "--format",
        "json",
        image,
        bad.to_str().unwrap(),
    ]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "an unreadable image makes the exit code 2"
    );
    assert!(
        text(&o.stderr).contains("broken.png"),
        "{}",
        text(&o.stderr)
    );
    let rows: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json output");
    let rows = rows.as_array().expect("array");
    assert_eq!(rows.len(), 50, "every Trouser image scored");
    assert_eq!(rows[0]["predictions"].as_array().expect("top-k").len(), 3);
    let trousers = rows
        .iter()
        .filter(|r| r["predictions"][0]["class"] == "Trouser")
        .count();
    assert!(trousers > 25, "only {trousers}/50 trousers recognised");
    let o = kiln(&[
        "predict",
        "--model",
        model.to_str().unwrap(),
        "--format",
        "csv",
        "data/fashion-mnist-mini/val/Bag/00030.png",
    ]);
    assert!(o.status.success());
    assert!(
        text(&o.stdout).starts_with("path,rank,class,probability\n"),
        "{}",
        text(&o.stdout)
    );
}

#[test]
fn predict_without_kiln_json_is_an_invalid_model_directory() {
    let dir = temp_dir("nomodel");
    let o = kiln(&[
        "predict",
        "--model",
        dir.to_str().unwrap(),
        "data/fashion-mnist-mini/val/Bag",
    ]);
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("InvalidModelDirectoryError"),
        "{}",
        text(&o.stderr)
    );
    std::fs::write(
        dir.join("kiln.json"),
        r#"{"arch":"resnet19","classes":["a"],"image_size":32,"mean":[0,0,0],"std":[1,1,1]}"#,
    )
    .expect("write");
    let o = kiln(&[
        "predict",
        "--model",
        dir.to_str().unwrap(),
        "data/fashion-mnist-mini/val/Bag",
    ]);
    let err = text(&o.stderr);
    assert!(
        err.contains("InvalidModelDirectoryError") && err.contains("resnet19"),
        "{err}"
    );
}

fn write_input(path: &Path, x: &Tensor<4>) {
    let data = x.to_data();
    let mut tensors = std::collections::BTreeMap::new();
    tensors.insert("input".to_string(), data);
    torchvision::write_safetensors(path, &tensors, None).expect("write input");
}

#[test]
fn predict_scores_a_raw_tensor_with_torchvision_weights() {
    let dir = temp_dir("raw");
    let device = Device::flex();
    for arch in [Arch::Resnet18, Arch::Densenet121] {
        let model = arch.init(7, &device).set_training(false);
        let weights = dir.join(format!("{arch}.safetensors"));
        torchvision::save_safetensors(&model, &weights, None).expect("weights");
        let x = Tensor::<4>::random([2, 3, 40, 40], Distribution::Normal(0.0, 1.0), &device);
        let input = dir.join("input.safetensors");
        write_input(&input, &x);
        let logits = dir.join("logits.safetensors");
        let o = kiln(&[
            "predict",
            "--arch",
            arch.name(),
            "--weights",
            weights.to_str().unwrap(),
            "--input-tensor",
            input.to_str().unwrap(),
            "--logits-out",
            logits.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", text(&o.stderr));
        let got = &torchvision::read_safetensors(&logits).expect("logits")["logits"];
        let expected = model.forward(x).into_data();
        assert_eq!(
            got.shape().as_slice(),
            [2, 7],
            "class count from the weights"
        );
        assert_eq!(
            got, &expected,
            "{arch}: CLI logits differ from the library's"
        );
    }
    let o = kiln(&[
        "predict",
        "--arch",
        "resnet19",
        "--weights",
        "x.pth",
        "--input-tensor",
        "a",
        "--logits-out",
        "b",
    ]);
    assert!(
        text(&o.stderr).contains("resnet18"),
        "unknown arch lists the valid names"
    );
}

#[test]
fn job_file_train_table_and_unknown_keys() {
    let dir = temp_dir("job");
    let job = dir.join("job.toml");
    std::fs::write(&job, "name = \"x\"\n[train]\nepochs = 1\nbatch_sise = 8\n").expect("write");
    let o = kiln(&["train", "--job", job.to_str().unwrap()]);
    let err = text(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("batch_sise") && err.contains("batch_size"),
        "{err}"
    );
}

/// Every numeric and named option with a bad value: `kiln train --flag value` and a job file's
/// `[train] key = value` are refused with the same message naming the option, before any data
/// is read.
#[test]
fn bad_option_values_get_the_same_error_on_the_command_line_and_in_a_job_file() {
    let dir = temp_dir("bad-options");
    // (option, command-line value, TOML value, what both messages say after the option's
    // name: `--lr: ...` on the command line, `job.toml:3: lr: ...` in the file)
    let cases = [
        ("epochs", "0", "0", "0 is out of range; expected at least 1"),
        (
            "batch_size",
            "0",
            "0",
            "0 is out of range; expected at least 1",
        ),
        (
            "lr",
            "-1",
            "-1.0",
            "-1 is out of range; expected a positive number",
        ),
        (
            "lr",
            "NaN",
            "nan",
            "NaN is out of range; expected a positive number",
        ),
        (
            "head_lr",
            "0",
            "0.0",
            "0 is out of range; expected a positive number",
        ),
        (
            "momentum",
            "2",
            "2.0",
            "2 is out of range; expected 0 <= momentum < 1",
        ),
        (
            "dampening",
            "1.5",
            "1.5",
            "1.5 is out of range; expected 0 to 1",
        ),
        (
            "weight_decay",
            "-0.1",
            "-0.1",
            "-0.1 is out of range; expected 0 or more",
        ),
        (
            "step_size",
            "0",
            "0",
            "0 is out of range; expected at least 1",
        ),
        (
            "gamma",
            "inf",
            "inf",
            "inf is out of range; expected a positive number",
        ),
        (
            "min_delta",
            "-1",
            "-1.0",
            "-1 is out of range; expected 0 or more",
        ),
        (
            "image_size",
            "0",
            "0",
            "0 is out of range; expected 8 to 4096",
        ),
        (
            "image_size",
            "100000",
            "100000",
            "100000 is out of range; expected 8 to 4096",
        ),
        ("workers", "0", "0", "0 is out of range; expected 1 to 1024"),
        (
            "threads",
            "0",
            "0",
            "0 is out of range; expected 1 to 1024 compute threads",
        ),
        (
            "threads",
            "5000",
            "5000",
            "5000 is out of range; expected 1 to 1024 compute threads",
        ),
        ("max_steps_per_epoch", "0", "0", "0 is out of range"),
        (
            "bucket_mb",
            "0",
            "0.0",
            "0 is out of range; expected more than 0",
        ),
        (
            "arch",
            "resnet19",
            "\"resnet19\"",
            "unknown value 'resnet19'; did you mean 'resnet18'?",
        ),
        (
            "schedule",
            "cosin",
            "\"cosin\"",
            "unknown value 'cosin'; did you mean 'cosine'?; expected one of constant, step, cosine, poly",
        ),
        (
            "monitor",
            "val_los",
            "\"val_los\"",
            "unknown value 'val_los'; did you mean 'val_loss'?",
        ),
        (
            "augment",
            "flp",
            "\"flp\"",
            "unknown value 'flp'; did you mean 'flip'?",
        ),
        (
            "device",
            "gpu",
            "\"gpu\"",
            "unknown value 'gpu'; did you mean 'cpu'?",
        ),
    ];
    for (option, cli_value, toml_value, message) in cases {
        let flag = format!("--{}", option.replace('_', "-"));
        let o = kiln(&["train", &flag, cli_value]);
        let cli_err = text(&o.stderr);
        assert!(!o.status.success(), "{flag} {cli_value} was accepted");
        assert!(cli_err.contains(message), "{flag} {cli_value}: {cli_err}");
        assert!(cli_err.contains(&flag), "{flag} {cli_value}: {cli_err}");

        let job = dir.join("job.toml");
        std::fs::write(
            &job,
            format!("name = \"x\"\n[train]\n{option} = {toml_value}\n"),
        )
        .expect("job file");
        let o = kiln(&["train", "--job", job.to_str().expect("utf8")]);
        let job_err = text(&o.stderr);
        assert!(!o.status.success(), "{option} = {toml_value} was accepted");
        assert!(
            job_err.contains(message),
            "{option} = {toml_value}: {job_err}"
        );
        assert!(
            job_err.contains(&format!("job.toml:3: {option}: ")),
            "{option} = {toml_value}: {job_err}"
        );
    }
}
