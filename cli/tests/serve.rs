//! `kiln serve` as users run it: a registered model served by name, logits equal to `kiln
//! predict`'s, `tritonclient.http` talking to it unmodified (JSON and binary), key rotation
//! through `--keys-file` and SIGHUP, SIGTERM finishing the request in flight, and bad options
//! refused by name before anything listens.
//!
//! The Python peer is `$KILN_PYTHON` with `tritonclient[http]` installed (CI makes one);
//! without it that check says so and passes, unless `KILN_REQUIRE_PYTHON` is set.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use burn::tensor::Device;
use kiln_engine::kernels::testing::temp_dir;
use kiln_engine::model_dir::{self, ModelInfo};
use kiln_models::Arch;
use kiln_runs::history::NewRun;
use kiln_runs::{ModelRegistry, RunHistory, RunPaths, RunStatus};
use serde_json::{Value, json};

const KILN: &str = env!("CARGO_BIN_EXE_kiln");
const KEY: &str = "cli-test-key-0123456789";
const SIZE: usize = 32;

/// A history in `home` with one finished run whose model is registered as `digits:1`; returns
/// the registered model's directory.
fn registered_model(home: &Path) -> PathBuf {
    let mut history = RunHistory::open(home).unwrap();
    let id = history
        .create_run(&NewRun {
            name: "digits",
            experiment: "serve",
            compute_target: "local",
            job: "{}",
        })
        .unwrap();
    let model = RunPaths::new(home, &id).outputs.join("model");
    let info = ModelInfo {
        arch: "resnet18".into(),
        classes: vec!["cat".into(), "dog".into(), "emu".into()],
        image_size: SIZE as u32,
        mean: [0.485, 0.456, 0.406],
        std: [0.229, 0.224, 0.225],
    };
    let weights = Arch::Resnet18.init(3, &Device::flex()).set_training(false);
    model_dir::save(&model, &weights, &info).unwrap();
    history
        .finish(&id, RunStatus::Completed, Some(0), None)
        .unwrap();
    ModelRegistry::new(&mut history)
        .register(&id, "digits", "outputs/model")
        .unwrap();
    home.join("models/digits/1")
}

/// A `kiln serve` process, its address once it listens, and its stdout lines after that.
struct Served {
    child: Child,
    addr: SocketAddr,
    lines: mpsc::Receiver<String>,
    /// What it printed up to its address.
    before: Vec<String>,
}

impl Served {
    fn start(home: &Path, args: &[&str], keys: Option<&str>) -> Self {
        let mut command = Command::new(KILN);
        command
            .arg("serve")
            .args(args)
            .args(["--port", "0"])
            .env("KILN_HOME", home)
            .env_remove("KILN_SERVE_KEYS")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(keys) = keys {
            command.env("KILN_SERVE_KEYS", keys);
        }
        let mut child = command.spawn().expect("kiln serve starts");
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut before = Vec::new();
        let addr = loop {
            let line = lines
                .recv_timeout(Duration::from_secs(120))
                .expect("kiln serve prints where it listens");
            if let Some(at) = line.split(" on http://").nth(1) {
                break at.split('/').next().unwrap().parse().unwrap();
            }
            before.push(line);
        };
        Self {
            child,
            addr,
            lines,
            before,
        }
    }

    /// The next stdout line containing `needle` (earlier ones are skipped).
    fn wait_for(&self, needle: &str) -> String {
        loop {
            let line = self
                .lines
                .recv_timeout(Duration::from_secs(120))
                .unwrap_or_else(|_| panic!("kiln serve never printed '{needle}'"));
            if line.contains(needle) {
                return line;
            }
        }
    }

    fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid.
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, signal) }, 0);
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A POST with a bearer key; returns the status and the JSON body.
fn post(addr: SocketAddr, path: &str, key: &str, body: &Value) -> (u16, Value) {
    let mut s = TcpStream::connect(addr).unwrap();
    let body = body.to_string();
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nAuthorization: Bearer \
         {key}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

fn inputs(n: usize) -> Vec<f32> {
    (0..n * 3 * SIZE * SIZE)
        .map(|i| ((i * 7919) % 2000) as f32 / 1000.0 - 1.0)
        .collect()
}

fn infer_body(x: &[f32], n: usize) -> Value {
    json!({"inputs": [{"name": "input", "shape": [n, 3, SIZE, SIZE], "datatype": "FP32", "data": x}]})
}

/// `kiln predict --input-tensor`'s logits for `x`.
fn predicted(root: &Path, model: &Path, x: &[f32], n: usize) -> Vec<f32> {
    let input = root.join("input.safetensors");
    let output = root.join("logits.safetensors");
    let bytes: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
    let view = safetensors::tensor::TensorView::new(
        safetensors::Dtype::F32,
        vec![n, 3, SIZE, SIZE],
        &bytes,
    )
    .unwrap();
    let tensors = BTreeMap::from([("input".to_string(), view)]);
    safetensors::serialize_to_file(&tensors, None, &input).unwrap();
    let o = Command::new(KILN)
        .args(["predict", "--arch", "resnet18", "--weights"])
        .arg(model.join("model.safetensors"))
        .arg("--input-tensor")
        .arg(&input)
        .arg("--logits-out")
        .arg(&output)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let bytes = std::fs::read(&output).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    file.tensor("logits")
        .unwrap()
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

#[test]
fn serves_a_registered_model_with_predicts_logits_and_drains_on_sigterm() {
    let root = temp_dir("serve-cli");
    let home = root.join("home");
    let model = registered_model(&home);
    let served = Served::start(
        &home,
        &["digits", "--max-batch-delay-ms", "1500"],
        Some(KEY),
    );
    let ready = served.wait_for("ready");
    // One copy per core by default on the CPU.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let copies = if cores == 1 {
        "1 model copy".to_string()
    } else {
        format!("{cores} model copies")
    };
    assert!(ready.contains(&copies), "{ready}");
    let x = inputs(2);
    let (status, out) = post(
        served.addr,
        "/v2/models/digits/versions/1/infer",
        KEY,
        &infer_body(&x, 2),
    );
    assert_eq!(status, 200, "{out}");
    let served_logits: Vec<f32> = out["outputs"][0]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    let expected = predicted(&root, &model, &x, 2);
    assert_eq!(served_logits.len(), expected.len());
    for (a, b) in served_logits.iter().zip(&expected) {
        assert!((a - b).abs() <= 1e-5, "served {a}, predict {b}");
    }

    // SIGTERM while a request waits in its batch: the request is answered, then it stops.
    let addr = served.addr;
    let body = infer_body(&inputs(1), 1);
    let client = std::thread::spawn(move || post(addr, "/v2/models/digits/infer", KEY, &body));
    std::thread::sleep(Duration::from_millis(300));
    let mut served = served;
    served.signal(libc::SIGTERM);
    let (status, out) = client.join().unwrap();
    assert_eq!(status, 200, "{out}");
    served.wait_for("stopped");
    let status = served.child.wait().unwrap();
    assert!(status.success(), "{status}");
}

#[test]
fn keys_rotate_through_the_keys_file_on_sighup() {
    let root = temp_dir("serve-keys");
    let home = root.join("home");
    let model = registered_model(&home);
    let file = root.join("keys");
    let (old, new) = ("old-key-0123456789abcdef", "new-key-0123456789abcdef");
    std::fs::write(&file, old).unwrap();
    let served = Served::start(
        &home,
        &[
            model.to_str().unwrap(),
            "--name",
            "digits",
            "--keys-file",
            file.to_str().unwrap(),
        ],
        None,
    );
    served.wait_for("ready");
    let body = infer_body(&inputs(1), 1);
    let status = |key: &str| post(served.addr, "/v2/models/digits/infer", key, &body).0;
    assert_eq!((status(old), status(new)), (200, 401));
    std::fs::write(&file, format!("{new},{old}\n")).unwrap();
    served.signal(libc::SIGHUP);
    served.wait_for("reloaded the primary and secondary keys");
    assert_eq!((status(old), status(new)), (200, 200));
    std::fs::write(&file, new).unwrap();
    served.signal(libc::SIGHUP);
    served.wait_for("reloaded the primary key");
    assert_eq!((status(old), status(new)), (401, 200));
    // A broken file keeps the keys in use.
    std::fs::write(&file, "short").unwrap();
    served.signal(libc::SIGHUP);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(status(new), 200);
}

#[test]
fn a_generated_key_is_printed_once_and_required() {
    let root = temp_dir("serve-generated");
    let home = root.join("home");
    let model = registered_model(&home);
    let served = Served::start(&home, &[model.to_str().unwrap(), "--name", "digits"], None);
    let line = served
        .before
        .iter()
        .find(|l| l.contains("generated"))
        .expect("a generated key is printed");
    let key = line
        .split("key ")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .to_string();
    assert_eq!(key.len(), 64, "{line}");
    let ready = served.wait_for("ready");
    assert!(!ready.contains(&key), "{ready}");
    let body = infer_body(&inputs(1), 1);
    assert_eq!(
        post(served.addr, "/v2/models/digits/infer", "", &body).0,
        401
    );
    assert_eq!(
        post(served.addr, "/v2/models/digits/infer", &key, &body).0,
        200
    );
}

#[test]
fn tritonclient_talks_to_it_in_json_and_binary() {
    let Some(python) = python() else { return };
    let root = temp_dir("serve-triton");
    let home = root.join("home");
    let model = registered_model(&home);
    let served = Served::start(&home, &["digits"], Some(KEY));
    served.wait_for("ready");
    let x = inputs(2);
    let expected = predicted(&root, &model, &x, 2);
    let script = r#"
import json, sys
import numpy as np
import tritonclient.http as http
url, key, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
x = np.array(json.loads(sys.stdin.read()), dtype=np.float32).reshape(2, 3, size, size)
client = http.InferenceServerClient(url)
headers = {"Authorization": "Bearer " + key}
assert client.is_server_live() and client.is_server_ready()
assert client.is_model_ready("digits", headers=headers)
meta = client.get_model_metadata("digits", headers=headers)
out = {"meta": meta}
for binary in (False, True):
    inp = http.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    req = http.InferRequestedOutput("logits", binary_data=binary)
    result = client.infer("digits", [inp], outputs=[req], headers=headers, request_id="t1")
    out["binary" if binary else "json"] = result.as_numpy("logits").ravel().tolist()
    out["id"] = result.get_response()["id"]
images = np.array([open(p, "rb").read() for p in sys.argv[4:6]], dtype=np.object_)
inp = http.InferInput("input", [2], "BYTES")
inp.set_data_from_numpy(images, binary_data=True)
result = client.infer("digits", [inp], outputs=[http.InferRequestedOutput("logits", binary_data=True)], headers=headers)
out["images"] = result.as_numpy("logits").tolist()
top = http.InferRequestedOutput("logits", binary_data=True, class_count=2)
inp = http.InferInput("input", list(x.shape), "FP32")
inp.set_data_from_numpy(x, binary_data=True)
result = client.infer("digits", [inp], outputs=[top], headers=headers)
out["top"] = [s.decode() for s in result.as_numpy("logits").ravel()]
try:
    client.infer("digits", [inp], headers={"Authorization": "Bearer wrong-key-0123456789"})
    out["unauthorized"] = "accepted"
except Exception as e:
    out["unauthorized"] = str(e)
print(json.dumps(out))
"#;
    let images: Vec<PathBuf> = (0..2u8)
        .map(|i| {
            let path = root.join(format!("image-{i}.png"));
            image::RgbImage::from_fn(40, 36, |x, y| {
                image::Rgb([x as u8 * 6, y as u8 * 7, 100 * i])
            })
            .save(&path)
            .unwrap();
            path
        })
        .collect();
    let mut child = Command::new(&python)
        .args([
            "-c",
            script,
            &served.addr.to_string(),
            KEY,
            &SIZE.to_string(),
        ])
        .args(&images)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(json!(x).to_string().as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        out["meta"]["inputs"][0]["shape"],
        json!([-1, 3, SIZE, SIZE])
    );
    assert_eq!(out["id"], "t1");
    for form in ["json", "binary"] {
        let logits: Vec<f32> = out[form]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        assert_eq!(logits.len(), expected.len(), "{form}");
        for (a, b) in logits.iter().zip(&expected) {
            assert!((a - b).abs() <= 1e-5, "{form}: {a} vs {b}");
        }
    }
    // Encoded images sent as BYTES score as `kiln predict` scores the files.
    let o = Command::new(KILN)
        .args(["predict", "--model"])
        .arg(&model)
        .args(["--format", "json", "--top-k", "1"])
        .args(&images)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let predicted: Value = serde_json::from_slice(&o.stdout).unwrap();
    for (row, prediction) in out["images"]
        .as_array()
        .unwrap()
        .iter()
        .zip(predicted.as_array().unwrap())
    {
        let logits: Vec<f32> = row
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        let probs = kiln_engine::infer::softmax(&logits);
        let best = kiln_engine::infer::top_k(&probs, 1)[0];
        let top = &prediction["predictions"][0];
        assert_eq!(top["class"], ["cat", "dog", "emu"][best], "{out}");
        assert!((top["probability"].as_f64().unwrap() as f32 - probs[best]).abs() < 1e-5);
    }
    let top = out["top"].as_array().unwrap();
    assert_eq!(top.len(), 4, "{out}");
    assert!(top[0].as_str().unwrap().split(':').count() == 3, "{out}");
    let unauthorized = out["unauthorized"].as_str().unwrap();
    assert!(unauthorized.contains("Bearer"), "{unauthorized}");
}

/// A Python with `tritonclient[http]`, or `None` (allowed only without `KILN_REQUIRE_PYTHON`).
fn python() -> Option<String> {
    match std::env::var("KILN_PYTHON") {
        Ok(p) if !p.is_empty() => Some(p),
        _ => {
            assert!(
                std::env::var_os("KILN_REQUIRE_PYTHON").is_none(),
                "KILN_REQUIRE_PYTHON is set but KILN_PYTHON names no Python with tritonclient"
            );
            eprintln!("KILN_PYTHON is not set: the tritonclient check is skipped");
            None
        }
    }
}

#[test]
fn bad_options_are_refused_by_name_before_anything_listens() {
    let root = temp_dir("serve-bad");
    let home = root.join("home");
    let model = registered_model(&home);
    let dir = model.to_str().unwrap();
    let file = root.join("a-file");
    std::fs::write(&file, "x").unwrap();
    let cases: Vec<(Vec<&str>, Option<&str>, &str)> = vec![
        (
            vec![dir, "--no-auth", "--host", "0.0.0.0"],
            None,
            "--no-auth with --host 0.0.0.0",
        ),
        (
            vec![dir, "--max-batch-size", "0"],
            Some(KEY),
            "--max-batch-size 0",
        ),
        (
            vec![dir, "--max-batch-size", "5000"],
            Some(KEY),
            "--max-batch-size 5000",
        ),
        (vec![dir, "--workers", "0"], Some(KEY), "--workers 0"),
        (
            vec![dir, "--max-batch-delay-ms", "20000"],
            Some(KEY),
            "--max-batch-delay-ms 20000",
        ),
        (
            vec![dir, "--max-body-mb", "0"],
            Some(KEY),
            "--max-body-mb 0",
        ),
        (vec![dir, "--timeout-ms", "0"], Some(KEY), "--timeout-ms 0"),
        (vec![dir, "--name", "a/b"], Some(KEY), "model name 'a/b'"),
        (
            vec!["./nowhere"],
            Some(KEY),
            "MODEL ./nowhere: no such directory",
        ),
        (vec!["ghost"], Some(KEY), "no model named ghost"),
        (vec!["digits:7"], Some(KEY), "no model digits version 7"),
        (vec![file.to_str().unwrap()], Some(KEY), "is a file"),
        (
            vec![root.to_str().unwrap()],
            Some(KEY),
            "InvalidModelDirectoryError",
        ),
        (vec![dir], Some("short"), "KILN_SERVE_KEYS"),
        (
            vec![dir, "--keys-file", "/nonexistent/keys"],
            None,
            "--keys-file /nonexistent/keys",
        ),
        (vec![dir, "--device", "tpu"], Some(KEY), "tpu"),
    ];
    for (args, keys, expected) in cases {
        let mut command = Command::new(KILN);
        command
            .arg("serve")
            .args(&args)
            .args(["--port", "0"])
            .env("KILN_HOME", &home)
            .env_remove("KILN_SERVE_KEYS");
        if let Some(keys) = keys {
            command.env("KILN_SERVE_KEYS", keys);
        }
        let o = command.output().unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{args:?} was accepted");
        assert!(
            stderr.contains(expected),
            "{args:?}: expected '{expected}' in: {stderr}"
        );
        assert!(
            !String::from_utf8_lossy(&o.stdout).contains("listening"),
            "{args:?}"
        );
    }
}

#[test]
fn no_auth_serves_loopback_clients_without_a_key() {
    let root = temp_dir("serve-no-auth");
    let home = root.join("home");
    let model = registered_model(&home);
    let served = Served::start(
        &home,
        &[model.to_str().unwrap(), "--name", "digits", "--no-auth"],
        None,
    );
    assert!(
        !served.before.iter().any(|l| l.contains("generated")),
        "{:?}",
        served.before
    );
    served.wait_for("ready");
    let body = infer_body(&inputs(1), 1);
    assert_eq!(
        post(served.addr, "/v2/models/digits/infer", "", &body).0,
        200
    );
}
