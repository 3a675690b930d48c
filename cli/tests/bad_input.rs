//! Bad input through the binary: each gets a named error, a non-zero exit (never a panic's
//! 101), and leaves the file system as it was.

use std::path::Path;
use std::process::{Command, Output};

use burn::tensor::Device;
use kiln_engine::kernels::testing::temp_dir;
use kiln_engine::model_dir::{self, ModelInfo};
use kiln_models::Arch;

const KILN: &str = env!("CARGO_BIN_EXE_kiln");

fn kiln_in(dir: &Path, env: &[(&str, &Path)], args: &[&str]) -> Output {
    let mut cmd = Command::new(KILN);
    cmd.args(args).current_dir(dir);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("kiln runs")
}

fn kiln(args: &[&str]) -> Output {
    kiln_in(
        Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/..")),
        &[],
        args,
    )
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Refused: exit code 1 (not a panic's 101) and a message holding `what`.
fn refused(o: &Output, what: &str) {
    assert_eq!(o.status.code(), Some(1), "{}", text(o));
    assert!(text(o).contains(what), "expected '{what}' in: {}", text(o));
    assert!(!text(o).contains("panicked"), "{}", text(o));
}

/// Every path under `dir`, sorted: what a command must leave unchanged.
fn listing(dir: &Path) -> Vec<String> {
    fn walk(dir: &Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            out.push(entry.path().display().to_string());
            if entry.path().is_dir() {
                walk(&entry.path(), out);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, &mut out);
    out.sort();
    out
}

fn model_with(dir: &Path, edit: impl Fn(&mut serde_json::Value)) {
    let model = Arch::Resnet18.init(2, &Device::flex()).set_training(false);
    let info = ModelInfo {
        arch: "resnet18".into(),
        classes: vec!["a".into(), "b".into()],
        image_size: 32,
        mean: [0.5; 3],
        std: [0.25; 3],
    };
    model_dir::save(dir, &model, &info).expect("model dir");
    let path = dir.join("kiln.json");
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("read")).expect("json");
    edit(&mut json);
    std::fs::write(&path, json.to_string()).expect("write");
}

#[test]
fn predict_refuses_bad_model_descriptions_top_k_and_empty_inputs() {
    let dir = temp_dir("predict");
    let image = dir.join("x.png");
    image::RgbImage::new(40, 40).save(&image).expect("png");
    type Edit = fn(&mut serde_json::Value);
    let cases: [(&str, Edit, &str); 9] = [
        (
            "std-zero",
            |j| j["std"][1] = 0.0.into(),
            "std: 0 is out of range",
        ),
        // Positive and finite, yet every pixel normalises to an infinity.
        (
            "std-tiny",
            |j| j["std"][2] = 1e-40.into(),
            "mean[2] 0.5 and std[2] 0.0000",
        ),
        (
            "mean-huge",
            |j| j["mean"][0] = 3e38.into(),
            "turn pixel values 0 to 1 into infinities",
        ),
        (
            "size-zero",
            |j| j["image_size"] = 0.into(),
            "image_size: 0 is out of range",
        ),
        (
            "size-huge",
            |j| j["image_size"] = 100_000.into(),
            "image_size: 100000",
        ),
        (
            "no-classes",
            |j| j["classes"] = serde_json::json!([]),
            "lists no classes",
        ),
        (
            "too-many-classes",
            |j| j["classes"] = (0..100_001).map(|i| i.to_string()).collect(),
            "classes: lists 100001 classes; expected at most 100000",
        ),
        (
            "two-means",
            |j| j["mean"] = serde_json::json!([0.5, 0.5]),
            "is not valid: mean: invalid length 2",
        ),
        (
            "class-number",
            |j| j["classes"][1] = 7.into(),
            "is not valid: classes[1]: invalid type: integer `7`",
        ),
    ];
    for (name, edit, message) in cases {
        let model = dir.join(name);
        model_with(&model, edit);
        let o = kiln(&[
            "predict",
            "--model",
            model.to_str().unwrap(),
            image.to_str().unwrap(),
        ]);
        refused(&o, "InvalidModelDirectoryError");
        refused(&o, message);
    }
    let model = dir.join("good");
    model_with(&model, |_| {});
    let m = model.to_str().unwrap();
    refused(
        &kiln(&[
            "predict",
            "--model",
            m,
            "--top-k",
            "0",
            image.to_str().unwrap(),
        ]),
        "--top-k 0 is out of range; expected at least 1",
    );
    let empty = dir.join("empty");
    std::fs::create_dir_all(&empty).expect("dir");
    refused(
        &kiln(&["predict", "--model", m, empty.to_str().unwrap()]),
        "no images in",
    );
}

#[test]
fn benchmarks_refuse_bad_sizes_and_counts_and_print_one_json_document() {
    for (args, message) in [
        (
            vec!["train", "--batch-size", "0"],
            "--batch-size 0 is out of range",
        ),
        (
            vec!["train", "--image-size", "0"],
            "--image-size 0 is out of range",
        ),
        (vec!["train", "--steps", "0"], "--steps 0 is out of range"),
        (
            vec!["allreduce", "--nproc", "0"],
            "--nproc 0 is out of range",
        ),
        (
            vec!["allreduce", "--nproc", "100000"],
            "--nproc 100000 is out of range",
        ),
        (
            vec!["allreduce", "--size-mb", "NaN"],
            "--size-mb NaN is out of range",
        ),
        (
            vec!["allreduce", "--iters", "0"],
            "--iters 0 is out of range",
        ),
        (
            vec!["kernels", "--size-mb", "0"],
            "--size-mb 0 is out of range",
        ),
        (
            vec!["data", "no-such-folder", "--workers", "0"],
            "--workers 0 is out of range",
        ),
    ] {
        let mut all = vec!["bench"];
        all.extend(args);
        refused(&kiln(&all), message);
    }
    let o = kiln(&[
        "bench",
        "allreduce",
        "--nproc",
        "2",
        "--size-mb",
        "0.01",
        "--iters",
        "2",
        "--json",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let doc: serde_json::Value =
        serde_json::from_slice(&o.stdout).expect("stdout is exactly one JSON document");
    assert_eq!(doc["ranks"], 2);
    // The loader as a GPU run drives it (crop and resize only), and what it costs in cores.
    let val = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/fashion-mnist-mini/val");
    let o = kiln(&[
        "bench",
        "data",
        val.to_str().unwrap(),
        "--image-size",
        "32",
        "--workers",
        "1",
        "--raw",
        "--json",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let doc: serde_json::Value =
        serde_json::from_slice(&o.stdout).expect("stdout is exactly one JSON document");
    assert_eq!(doc["images"], 500);
    assert_eq!(doc["raw"], true);
    let (rate, cores) = (
        doc["images_per_s"].as_f64().expect("rate"),
        doc["cores_per_1000_images_per_s"].as_f64().expect("cores"),
    );
    assert!(
        rate > 0.0 && (cores - 1000.0 / rate).abs() < 1e-6 * cores,
        "{doc}"
    );
}

#[test]
fn the_launcher_refuses_more_workers_than_its_limit_at_once() {
    let start = std::time::Instant::now();
    let o = kiln(&["launch", "--nproc-per-node", "100000", "--", "true"]);
    refused(
        &o,
        "--nproc-per-node 100000 is out of range; expected 1 to 1024",
    );
    let o = kiln(&["train", "--nproc-per-node", "100000"]);
    refused(&o, "--nproc-per-node 100000 is out of range");
    assert!(start.elapsed().as_secs() < 10, "refused at once");
}

#[test]
fn log_metric_keeps_negatives_and_infinities_and_refuses_nan() {
    let logs = temp_dir("log-metric");
    let env = [("KILN_LOGS", logs.as_path())];
    for (name, value) in [("a", "-3"), ("b", "-inf"), ("c", "inf"), ("d", "1e400")] {
        let o = kiln_in(&logs, &env, &["log-metric", name, value]);
        assert!(o.status.success(), "{name} {value}: {}", text(&o));
    }
    refused(
        &kiln_in(&logs, &env, &["log-metric", "e", "NaN"]),
        "NaN is not a metric value",
    );
    let lines = std::fs::read_to_string(logs.join("metrics.jsonl")).expect("metrics");
    let values: Vec<serde_json::Value> = lines
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("json")["value"].clone())
        .collect();
    assert_eq!(
        values,
        [
            serde_json::json!(-3.0),
            serde_json::json!("-inf"),
            serde_json::json!("inf"),
            serde_json::json!("inf")
        ]
    );
}

#[test]
fn train_checks_its_output_directory_and_step_memory_before_the_first_step() {
    let dir = temp_dir("train-output");
    let file = dir.join("not-a-dir");
    std::fs::write(&file, "x").expect("file");
    let before = listing(&dir);
    let o = kiln(&["train", "--output-dir", file.to_str().unwrap()]);
    refused(&o, "is a file");
    assert_eq!(listing(&dir), before, "nothing written beside it");
    let o = kiln(&[
        "train",
        "--arch",
        "resnet50",
        "--image-size",
        "4096",
        "--batch-size",
        "256",
        "--output-dir",
        dir.join("out").to_str().unwrap(),
    ]);
    refused(&o, "needs about");
    refused(&o, "lower --image-size or --batch-size");
    assert_eq!(listing(&dir), before, "nothing written");
    // One class folder: nothing to learn, refused before anything is written.
    let data = dir.join("one-class");
    let mini = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/fashion-mnist-mini");
    for split in ["train", "val"] {
        let to = data.join(split).join("Bag");
        std::fs::create_dir_all(&to).unwrap();
        for entry in std::fs::read_dir(mini.join(split).join("Bag"))
            .unwrap()
            .take(4)
        {
            let from = entry.unwrap().path();
            std::fs::copy(&from, to.join(from.file_name().unwrap())).unwrap();
        }
    }
    let before = listing(&dir);
    let o = kiln(&[
        "train",
        "--data",
        data.to_str().unwrap(),
        "--output-dir",
        dir.join("out").to_str().unwrap(),
    ]);
    refused(
        &o,
        "has one class folder ('Bag'); a classifier needs at least 2",
    );
    assert_eq!(listing(&dir), before, "nothing written");
}

#[test]
fn the_run_history_is_never_started_anew_over_runs_on_disk() {
    let dir = temp_dir("history");
    // KILN_HOME naming a file.
    let file = dir.join("home-file");
    std::fs::write(&file, "x").expect("file");
    refused(
        &kiln_in(&dir, &[("KILN_HOME", &file)], &["runs", "list"]),
        "is a file; expected a directory",
    );
    // A history emptied to 0 bytes (or gone) while runs and models are on disk.
    let home = dir.join("home");
    std::fs::create_dir_all(home.join("runs/abcdefghij")).expect("run dir");
    std::fs::create_dir_all(home.join("models/digits/1")).expect("model dir");
    std::fs::write(home.join("kiln.db"), "").expect("empty db");
    let before = listing(&home);
    for args in [&["runs", "list"][..], &["models", "list"][..]] {
        let o = kiln_in(&dir, &[("KILN_HOME", &home)], args);
        refused(&o, "kiln.db is missing or empty");
        refused(&o, "1 run(s) and 1 model(s)");
    }
    assert_eq!(listing(&home), before, "nothing changed");
    // A file that is not a database: named.
    std::fs::write(
        home.join("kiln.db"),
        "not a database at all, but long enough to be read",
    )
    .expect("garbage db");
    let o = kiln_in(&dir, &[("KILN_HOME", &home)], &["runs", "list"]);
    refused(&o, "kiln.db cannot be read");
}

#[test]
fn data_import_refuses_a_per_class_limit_of_zero() {
    let dir = temp_dir("import-zero");
    for flag in ["--train-per-class", "--val-per-class"] {
        let dest = dir.join("dest");
        let o = kiln(&[
            "data",
            "import",
            "fashion-mnist",
            dir.to_str().unwrap(),
            dest.to_str().unwrap(),
            flag,
            "0",
        ]);
        assert_eq!(o.status.code(), Some(2), "{}", text(&o));
        assert!(
            text(&o).contains("'0' is not a count of images; expected 1 or more")
                && text(&o).contains(flag),
            "{}",
            text(&o)
        );
        assert!(!dest.exists(), "nothing written");
    }
}
