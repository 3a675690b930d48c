//! `kiln serve`'s service over a real socket: the Open Inference Protocol's routes in JSON and
//! binary, logits equal to the model's own, images scored as `kiln predict` scores them, keys,
//! named errors for bad requests with the server answering after each, dynamic batching under
//! concurrent clients, ready only after loading, and a stop that finishes requests in flight.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use burn::tensor::Device;
use kiln_engine::data::decode::decode_rgb_bytes;
use kiln_engine::infer::{self, Scorer};
use kiln_engine::kernels::testing::temp_dir;
use kiln_engine::model_dir::{self, ModelInfo};
use kiln_models::Arch;
use kiln_serve::{BatchLimits, Keys, Notice, ServeOptions, ServedModel};
use serde_json::{Value, json};

const KEY: &str = "primary-key-0123456789";
const SECOND: &str = "secondary-key-0123456789";
const SIZE: usize = 32;

/// A resnet18 model directory for three classes at 32 px.
fn model_dir(name: &str) -> PathBuf {
    let dir = temp_dir(name).join("digits");
    let model = Arch::Resnet18.init(3, &Device::flex()).set_training(false);
    let info = ModelInfo {
        arch: "resnet18".into(),
        classes: vec!["cat".into(), "dog".into(), "emu".into()],
        image_size: SIZE as u32,
        mean: [0.485, 0.456, 0.406],
        std: [0.229, 0.224, 0.225],
    };
    model_dir::save(&dir, &model, &info).expect("model dir");
    dir
}

fn options(limits: BatchLimits) -> ServeOptions {
    ServeOptions {
        host: [127, 0, 0, 1].into(),
        port: 0,
        device: kiln_engine::config::DeviceKind::Cpu,
        limits,
        workers: 1,
        max_body_bytes: 1 << 20,
        timeout: Duration::from_secs(60),
        keys: Some(Keys {
            primary: KEY.into(),
            secondary: Some(SECOND.into()),
        }),
        keys_file: None,
    }
}

fn limits(max_batch_size: usize, delay_ms: u64) -> BatchLimits {
    BatchLimits {
        max_batch_size,
        max_batch_delay: Duration::from_millis(delay_ms),
    }
}

/// A running server: its address, its notices, and the way to stop it.
struct Server {
    addr: SocketAddr,
    notices: mpsc::Receiver<String>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    done: Option<std::thread::JoinHandle<Result<(), kiln_serve::ServeError>>>,
}

impl Server {
    fn start(dir: &Path, options: ServeOptions) -> Self {
        let (tx, notices) = mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let model = ServedModel {
            dir: dir.to_path_buf(),
            name: "digits".into(),
            version: "1".into(),
        };
        let done = std::thread::spawn(move || {
            let tx = std::sync::Mutex::new(tx);
            kiln_serve::serve_until(
                model,
                options,
                move |n| {
                    let text = match n {
                        Notice::Listening(addr) => format!("listening {addr}"),
                        other => format!("{other:?}"),
                    };
                    let _ = tx.lock().unwrap().send(text);
                },
                async move {
                    let _ = stopped.await;
                },
            )
        });
        let first = notices
            .recv_timeout(Duration::from_secs(60))
            .expect("the server listens");
        let addr = first.strip_prefix("listening ").unwrap().parse().unwrap();
        Self {
            addr,
            notices,
            stop: Some(stop),
            done: Some(done),
        }
    }

    fn wait_ready(&self) {
        let notice = self
            .notices
            .recv_timeout(Duration::from_secs(120))
            .expect("the model loads");
        assert!(notice.starts_with("Ready"), "{notice}");
    }

    fn stop(mut self) -> Result<(), kiln_serve::ServeError> {
        let _ = self.stop.take().unwrap().send(());
        self.done.take().unwrap().join().unwrap()
    }
}

/// An HTTP/1.1 exchange; returns the status, the head (lowercase) and the body.
fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for (name, value) in headers {
        req += &format!("{name}: {value}\r\n");
    }
    req += &format!("Content-Length: {}\r\n\r\n", body.len());
    s.write_all(req.as_bytes()).unwrap();
    // The server may answer (413) before reading the whole body.
    let _ = s.write_all(body);
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head");
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    let mut body = raw[split + 4..].to_vec();
    if head.contains("transfer-encoding: chunked") {
        body = dechunk(&body);
    }
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, head, body)
}

fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(at) = body.windows(2).position(|w| w == b"\r\n") {
        let n = usize::from_str_radix(std::str::from_utf8(&body[..at]).unwrap().trim(), 16)
            .unwrap_or(0);
        if n == 0 {
            break;
        }
        out.extend_from_slice(&body[at + 2..at + 2 + n]);
        body = &body[at + 4 + n..];
    }
    out
}

const AUTH: (&str, &str) = ("Authorization", "Bearer primary-key-0123456789");

fn post_json(addr: SocketAddr, path: &str, body: &Value) -> (u16, Value) {
    let (status, _, body) = http(
        addr,
        "POST",
        path,
        &[AUTH, ("Content-Type", "application/json")],
        body.to_string().as_bytes(),
    );
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

fn get_json(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> (u16, Value) {
    let (status, _, body) = http(addr, "GET", path, headers, b"");
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

/// Deterministic inputs: `n` images of 3 x SIZE x SIZE floats.
fn inputs(n: usize, seed: u32) -> Vec<f32> {
    (0..n * 3 * SIZE * SIZE)
        .map(|i| (((i as u32).wrapping_mul(2_654_435_761) ^ seed) % 1000) as f32 / 500.0 - 1.0)
        .collect()
}

fn png(seed: u8) -> Vec<u8> {
    let image = image::RgbImage::from_fn(40, 48, |x, y| {
        image::Rgb([
            (x as u8).wrapping_mul(5).wrapping_add(seed),
            y as u8 * 3,
            seed.wrapping_mul(7),
        ])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    image.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn assert_close(a: &[f32], b: &[f32], tolerance: f32) {
    assert_eq!(a.len(), b.len());
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!((x - y).abs() <= tolerance, "element {i}: {x} vs {y}");
    }
}

fn infer_path() -> &'static str {
    "/v2/models/digits/infer"
}

#[test]
fn serves_the_models_logits_in_json_and_binary_and_images_as_predict_scores_them() {
    let dir = model_dir("serve-logits");
    let server = Server::start(&dir, options(limits(8, 1)));
    server.wait_ready();
    let addr = server.addr;
    let scorer = Scorer::load(&dir, &Device::flex()).unwrap();

    assert_eq!(get_json(addr, "/v2/health/live", &[]).0, 200);
    assert_eq!(get_json(addr, "/v2/health/ready", &[]).0, 200);
    let (status, meta) = get_json(addr, "/v2/models/digits", &[AUTH]);
    assert_eq!(status, 200, "{meta}");
    assert_eq!(meta["inputs"][0]["shape"], json!([-1, 3, SIZE, SIZE]));
    assert_eq!(
        meta["outputs"][0],
        json!({"name": "logits", "datatype": "FP32", "shape": [-1, 3]})
    );
    assert_eq!(
        get_json(addr, "/v2/models/digits/versions/1/ready", &[AUTH]).0,
        200
    );
    assert_eq!(get_json(addr, "/v2", &[AUTH]).1["name"], "kiln");

    // FP32 in JSON: the logits of the model itself, at the same batch.
    let x = inputs(2, 7);
    let expected = scorer.logits(x.clone(), 2);
    let (status, out) = post_json(
        addr,
        infer_path(),
        &json!({"id": "r1", "inputs": [{"name": "input", "shape": [2, 3, SIZE, SIZE], "datatype": "FP32", "data": x}]}),
    );
    assert_eq!(status, 200, "{out}");
    assert_eq!(out["id"], "r1");
    assert_eq!(out["model_name"], "digits");
    assert_eq!(out["outputs"][0]["shape"], json!([2, 3]));
    assert_close(&floats(&out["outputs"][0]["data"]), &expected, 1e-5);

    // The binary extension, in and out.
    let header = json!({"inputs": [{"name": "input", "shape": [2, 3, SIZE, SIZE], "datatype": "FP32", "parameters": {"binary_data_size": x.len() * 4}}], "outputs": [{"name": "logits", "parameters": {"binary_data": true}}]}).to_string();
    let mut body = header.clone().into_bytes();
    body.extend(x.iter().flat_map(|v| v.to_le_bytes()));
    let length = header.len().to_string();
    let (status, head, raw) = http(
        addr,
        "POST",
        "/v2/models/digits/versions/1/infer",
        &[AUTH, ("Inference-Header-Content-Length", &length)],
        &body,
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&raw));
    let json_len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("inference-header-content-length: "))
        .expect("the response names its JSON length")
        .trim()
        .parse()
        .unwrap();
    let meta: Value = serde_json::from_slice(&raw[..json_len]).unwrap();
    assert_eq!(meta["outputs"][0]["parameters"]["binary_data_size"], 24);
    let logits: Vec<f32> = raw[json_len..]
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    assert_close(&logits, &expected, 1e-5);

    // Encoded images (BYTES, base64 in JSON) preprocessed as predict does, with top-k.
    let images = [png(1), png(90)];
    let mut x = Vec::new();
    for (i, bytes) in images.iter().enumerate() {
        let image = decode_rgb_bytes(bytes, &i.to_string(), 1 << 26).unwrap();
        scorer.preprocess(&image, &mut x).unwrap();
    }
    let expected = scorer.logits(x, 2);
    let b64: Vec<String> = images
        .iter()
        .map(|b| base64::engine::general_purpose::STANDARD.encode(b))
        .collect();
    let (status, out) = post_json(
        addr,
        infer_path(),
        &json!({"inputs": [{"name": "input", "shape": [2], "datatype": "BYTES", "data": b64}]}),
    );
    assert_eq!(status, 200, "{out}");
    assert_close(&floats(&out["outputs"][0]["data"]), &expected, 1e-5);
    let (status, out) = post_json(
        addr,
        infer_path(),
        &json!({"inputs": [{"name": "input", "shape": [2], "datatype": "BYTES", "data": b64}], "outputs": [{"name": "logits", "parameters": {"classification": 2}}]}),
    );
    assert_eq!(status, 200, "{out}");
    assert_eq!(out["outputs"][0]["shape"], json!([2, 2]));
    let probs = infer::softmax(&expected[3..]);
    let best = infer::top_k(&probs, 1)[0];
    let top = out["outputs"][0]["data"][2].as_str().unwrap();
    let (p, rest) = top.split_once(':').unwrap();
    assert!(
        (p.parse::<f32>().unwrap() - probs[best]).abs() < 1e-6,
        "{top}"
    );
    assert_eq!(rest, format!("{best}:{}", ["cat", "dog", "emu"][best]));

    // Encoded images in the binary extension: each a 4-byte little-endian length, then bytes.
    let blob: Vec<u8> = images
        .iter()
        .flat_map(|b| {
            (b.len() as u32)
                .to_le_bytes()
                .into_iter()
                .chain(b.iter().copied())
        })
        .collect();
    let header = json!({"inputs": [{"name": "input", "shape": [2, 1], "datatype": "BYTES", "parameters": {"binary_data_size": blob.len()}}]}).to_string();
    let mut body = header.clone().into_bytes();
    body.extend(&blob);
    let length = header.len().to_string();
    let (status, _, raw) = http(
        addr,
        "POST",
        infer_path(),
        &[AUTH, ("Inference-Header-Content-Length", &length)],
        &body,
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&raw));
    let out: Value = serde_json::from_slice(&raw).unwrap();
    assert_close(&floats(&out["outputs"][0]["data"]), &expected, 1e-5);

    // curl's route: an image body, predict's JSON shape.
    let (status, _, raw) = http(
        addr,
        "POST",
        "/predictions/digits?top_k=2",
        &[AUTH],
        &images[1],
    );
    assert_eq!(status, 200);
    let out: Value = serde_json::from_slice(&raw).unwrap();
    let predictions = out[0]["predictions"].as_array().unwrap();
    assert_eq!(predictions.len(), 2);
    assert_eq!(predictions[0]["class"], ["cat", "dog", "emu"][best]);
    assert!((predictions[0]["probability"].as_f64().unwrap() as f32 - probs[best]).abs() < 1e-6);

    let (status, _, metrics) = http(addr, "GET", "/metrics", &[AUTH], b"");
    assert_eq!(status, 200);
    let metrics = String::from_utf8(metrics).unwrap();
    assert!(
        metrics.contains("kiln_serve_requests_total{route=\"infer\",code=\"200\"} 5"),
        "{metrics}"
    );
    assert!(metrics.contains("kiln_serve_ready 1"), "{metrics}");
    server.stop().unwrap();
}

#[test]
fn keys_guard_everything_but_health() {
    let dir = model_dir("serve-keys");
    let server = Server::start(&dir, options(limits(4, 1)));
    server.wait_ready();
    let addr = server.addr;
    let x = inputs(1, 3);
    let body = json!({"inputs": [{"name": "input", "shape": [1, 3, SIZE, SIZE], "datatype": "FP32", "data": x}]}).to_string();
    for headers in [
        vec![],
        vec![("Authorization", "Bearer wrong-key-0123456789xx")],
        vec![("Authorization", "Basic cHJpbWFyeS1rZXk=")],
        vec![("Authorization", "Bearer primary-key-012345678")],
    ] {
        let (status, head, raw) = http(addr, "POST", infer_path(), &headers, body.as_bytes());
        assert_eq!(status, 401, "{headers:?}");
        assert!(head.contains("www-authenticate: bearer"));
        let error: Value = serde_json::from_slice(&raw).unwrap();
        assert!(
            error["error"].as_str().unwrap().contains("Bearer"),
            "{error}"
        );
        assert_eq!(http(addr, "GET", "/metrics", &headers, b"").0, 401);
        assert_eq!(http(addr, "GET", "/v2/models/digits", &headers, b"").0, 401);
    }
    // Paths that only look like the open health routes still need a key.
    for path in [
        "/v2/health/ready/../models/digits/infer",
        "/v2/health/%72eady/../../models/digits/infer",
        "//v2/models/digits/infer",
        "/v2/health/live/../../v2/models/digits/infer",
    ] {
        let (status, _, _) = http(addr, "POST", path, &[], body.as_bytes());
        assert!(status == 401 || status == 404, "{path}: {status}");
    }
    // The scheme's name is case-insensitive.
    let lower = format!("bearer {KEY}");
    assert_eq!(
        http(
            addr,
            "POST",
            infer_path(),
            &[("Authorization", &lower)],
            body.as_bytes()
        )
        .0,
        200
    );
    for key in [KEY, SECOND] {
        let auth = format!("Bearer {key}");
        let (status, _, _) = http(
            addr,
            "POST",
            infer_path(),
            &[("Authorization", &auth)],
            body.as_bytes(),
        );
        assert_eq!(status, 200, "{key}");
    }
    assert_eq!(get_json(addr, "/v2/health/live", &[]).0, 200);
    assert_eq!(get_json(addr, "/v2/health/ready", &[]).0, 200);
    server.stop().unwrap();
}

#[test]
fn bad_requests_get_named_errors_and_the_server_keeps_answering() {
    let dir = model_dir("serve-bad");
    let mut opts = options(limits(4, 1));
    opts.max_body_bytes = 64 * 1024;
    let server = Server::start(&dir, opts);
    server.wait_ready();
    let addr = server.addr;
    let good = json!({"inputs": [{"name": "input", "shape": [1, 3, SIZE, SIZE], "datatype": "FP32", "data": inputs(1, 5)}]});
    let expect_good = || {
        let (status, out) = post_json(addr, infer_path(), &good);
        assert_eq!(status, 200, "{out}");
    };
    expect_good();
    let n = 3 * SIZE * SIZE;
    let bad: Vec<(Vec<u8>, &str)> = vec![
        (b"not json".to_vec(), "not an inference request"),
        (b"{\"inputs\": [".to_vec(), "not an inference request"),
        (json!({"inputs": []}).to_string().into(), "has 0 inputs"),
        (json!({"inputs": [{"name": "image", "shape": [1, 3, SIZE, SIZE], "datatype": "FP32", "data": vec![0.0; n]}]}).to_string().into(), "named 'image'"),
        (json!({"inputs": [{"name": "input", "shape": [1, 3, 16, 16], "datatype": "FP32", "data": vec![0.0; 768]}]}).to_string().into(), "shape [1, 3, 16, 16]"),
        (json!({"inputs": [{"name": "input", "shape": [1, 3, SIZE, SIZE], "datatype": "FP32", "data": [1.0, 2.0]}]}).to_string().into(), "holds 2 numbers"),
        (json!({"inputs": [{"name": "input", "shape": [1, 3, SIZE, SIZE], "datatype": "FP64", "data": vec![0.0; n]}]}).to_string().into(), "datatype FP64"),
        (json!({"inputs": [{"name": "input", "shape": [1, 3, SIZE, SIZE], "datatype": "FP32", "data": ["a"]}]}).to_string().into(), "holds strings"),
        (json!({"inputs": [{"name": "input", "shape": [1], "datatype": "BYTES", "data": ["!!notbase64"]}]}).to_string().into(), "not base64"),
        (json!({"inputs": [{"name": "input", "shape": [1], "datatype": "BYTES", "data": ["aGVsbG8="]}]}).to_string().into(), "inputs[0] element 0"),
        (json!({"inputs": [{"name": "input", "shape": [2], "datatype": "BYTES", "data": ["aGVsbG8="]}]}).to_string().into(), "holds 1 images"),
        (json!({"inputs": [{"name": "input", "shape": [1, 3, SIZE, SIZE], "datatype": "FP32", "data": vec![0.0; n]}], "outputs": [{"name": "probs"}]}).to_string().into(), "'probs'"),
        (json!({"inputs": [{"name": "input", "shape": [1, 3, SIZE, SIZE], "datatype": "FP32", "data": vec![0.0; n]}], "outputs": [{"name": "logits", "parameters": {"classification": 0}}]}).to_string().into(), "classification 0"),
        (json!({"inputs": [{"name": "input", "shape": -1, "datatype": "FP32"}]}).to_string().into(), "inputs[0].shape"),
        (json!({"input": []}).to_string().into(), "missing field `inputs`"),
        (json!({"inputs": [{"name": "input", "shape": [65], "datatype": "BYTES", "data": vec!["aGVsbG8="; 65]}]}).to_string().into(), "holds 65 images; at most 64"),
    ];
    for (body, expected) in &bad {
        let (status, _, raw) = http(addr, "POST", infer_path(), &[AUTH], body);
        let error: Value = serde_json::from_slice(&raw).unwrap_or(Value::Null);
        let message = error["error"].as_str().unwrap_or_default();
        assert_eq!(
            status,
            400,
            "{}: {message}",
            String::from_utf8_lossy(&body[..body.len().min(80)])
        );
        assert!(
            message.contains(expected),
            "expected '{expected}' in: {message}"
        );
        expect_good();
    }
    // A binary header length past the body.
    let (status, _, raw) = http(
        addr,
        "POST",
        infer_path(),
        &[AUTH, ("Inference-Header-Content-Length", "999")],
        b"{}",
    );
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&raw));
    // Too large: 413, named.
    let big = vec![b' '; 100 * 1024];
    let (status, _, raw) = http(addr, "POST", infer_path(), &[AUTH], &big);
    assert_eq!(status, 413);
    assert!(String::from_utf8_lossy(&raw).contains("65536-byte limit"));
    // curl's route: no body, not an image, a bad top_k.
    for (path, body, expected) in [
        ("/predictions/digits", &b""[..], "body is empty"),
        ("/predictions/digits", &b"plain text"[..], "request body"),
        ("/predictions/digits?top_k=0", &b"x"[..], "top_k '0'"),
    ] {
        let (status, _, raw) = http(addr, "POST", path, &[AUTH], body);
        assert_eq!(status, 400, "{path}");
        assert!(
            String::from_utf8_lossy(&raw).contains(expected),
            "{}",
            String::from_utf8_lossy(&raw)
        );
    }
    // An image so elongated that resizing it would take gigabytes, refused before it is.
    let thin = image::RgbImage::new(1, 16_384);
    let mut encoded = std::io::Cursor::new(Vec::new());
    thin.write_to(&mut encoded, image::ImageFormat::Png)
        .unwrap();
    let (status, _, raw) = http(
        addr,
        "POST",
        "/predictions/digits",
        &[AUTH],
        encoded.get_ref(),
    );
    assert_eq!(status, 400);
    assert!(
        String::from_utf8_lossy(&raw).contains("too elongated"),
        "{}",
        String::from_utf8_lossy(&raw)
    );
    // A path that is not UTF-8: a JSON error too.
    let (status, body) = get_json(addr, "/v2/models/%FF/ready", &[AUTH]);
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].is_string(), "{body}");
    // Unknown model, version, route and method.
    assert_eq!(post_json(addr, "/v2/models/other/infer", &good).0, 404);
    assert_eq!(
        post_json(addr, "/v2/models/digits/versions/2/infer", &good).0,
        404
    );
    assert_eq!(get_json(addr, "/nowhere", &[AUTH]).0, 404);
    assert_eq!(get_json(addr, infer_path(), &[AUTH]).0, 405);
    expect_good();
    let (_, _, metrics) = http(addr, "GET", "/metrics", &[AUTH], b"");
    let metrics = String::from_utf8(metrics).unwrap();
    assert!(
        metrics.contains("kiln_serve_errors_total{code=\"400\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("kiln_serve_errors_total{code=\"413\"} 1"),
        "{metrics}"
    );
    server.stop().unwrap();
}

#[test]
fn concurrent_requests_share_forward_passes() {
    let dir = model_dir("serve-batch");
    let server = Server::start(&dir, options(limits(8, 200)));
    server.wait_ready();
    let addr = server.addr;
    let scorer = Scorer::load(&dir, &Device::flex()).unwrap();
    let clients: Vec<_> = (0..16u32)
        .map(|i| {
            std::thread::spawn(move || {
                let x = inputs(1, i);
                let (status, out) = post_json(
                    addr,
                    infer_path(),
                    &json!({"inputs": [{"name": "input", "shape": [1, 3, SIZE, SIZE], "datatype": "FP32", "data": x}]}),
                );
                assert_eq!(status, 200, "{out}");
                (x, floats(&out["outputs"][0]["data"]))
            })
        })
        .collect();
    for client in clients {
        let (x, logits) = client.join().unwrap();
        // Batched with others, a row's logits stay its own (within GEMM rounding).
        assert_close(&logits, &scorer.logits(x, 1), 1e-4);
    }
    let (_, _, metrics) = http(addr, "GET", "/metrics", &[AUTH], b"");
    let metrics = String::from_utf8(metrics).unwrap();
    let passes: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("kiln_serve_batch_size_count "))
        .unwrap()
        .parse()
        .unwrap();
    // Warm-up passes are not counted: 16 requests in at most 8 passes of up to 8.
    assert!(
        (2..=8).contains(&passes),
        "{passes} forward passes for 16 requests\n{metrics}"
    );
    assert!(metrics.contains("kiln_serve_images_total 16"), "{metrics}");
    server.stop().unwrap();
}

#[test]
fn ready_only_after_loading_and_a_stop_finishes_requests_in_flight() {
    let dir = model_dir("serve-ready");
    // A large warm-up batch keeps the model loading for a while.
    let server = Server::start(&dir, options(limits(1024, 1500)));
    let addr = server.addr;
    let started = Instant::now();
    let (status, ready) = get_json(addr, "/v2/health/ready", &[]);
    assert_eq!(
        (status, &ready),
        (503, &json!({"ready": false})),
        "after {:?}",
        started.elapsed()
    );
    assert_eq!(get_json(addr, "/v2/health/live", &[]).0, 200);
    let good = json!({"inputs": [{"name": "input", "shape": [1, 3, SIZE, SIZE], "datatype": "FP32", "data": inputs(1, 1)}]});
    let (status, out) = post_json(addr, infer_path(), &good);
    assert_eq!(status, 503, "{out}");
    assert!(out["error"].as_str().unwrap().contains("still loading"));
    server.wait_ready();
    assert_eq!(get_json(addr, "/v2/health/ready", &[]).0, 200);
    // A request waits 1.5 s for company in its batch; the stop comes meanwhile.
    let client = std::thread::spawn(move || post_json(addr, infer_path(), &good));
    std::thread::sleep(Duration::from_millis(300));
    let stopping = Instant::now();
    server.stop().expect("a clean stop");
    let (status, out) = client.join().unwrap();
    assert_eq!(status, 200, "{out}");
    assert!(
        stopping.elapsed() >= Duration::from_millis(500),
        "the stop waited for the request"
    );
    assert!(
        TcpStream::connect(addr).is_err(),
        "nothing listens after the stop"
    );
}

#[test]
fn two_model_copies_share_the_queue_without_stalling() {
    let dir = model_dir("serve-workers");
    let mut opts = options(limits(4, 30));
    opts.workers = 2;
    opts.timeout = Duration::from_secs(20);
    let server = Server::start(&dir, opts);
    server.wait_ready();
    let addr = server.addr;
    let scorer = Scorer::load(&dir, &Device::flex()).unwrap();
    let started = Instant::now();
    // Requests of 1 to 3 images: some overfill a batch and start the next one.
    let clients: Vec<_> = (0..12u32)
        .map(|i| {
            std::thread::spawn(move || {
                let n = 1 + i as usize % 3;
                let x = inputs(n, i);
                let (status, out) = post_json(
                    addr,
                    infer_path(),
                    &json!({"inputs": [{"name": "input", "shape": [n, 3, SIZE, SIZE], "datatype": "FP32", "data": x}]}),
                );
                assert_eq!(status, 200, "{out}");
                (x, n, floats(&out["outputs"][0]["data"]))
            })
        })
        .collect();
    for client in clients {
        let (x, n, logits) = client.join().unwrap();
        assert_close(&logits, &scorer.logits(x, n), 1e-4);
    }
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    server.stop().unwrap();
}

#[test]
fn a_request_past_its_timeout_gets_503_and_the_server_goes_on() {
    let dir = model_dir("serve-timeout");
    let mut opts = options(limits(8, 1500));
    opts.timeout = Duration::from_millis(300);
    let server = Server::start(&dir, opts);
    server.wait_ready();
    let good = json!({"inputs": [{"name": "input", "shape": [1, 3, SIZE, SIZE], "datatype": "FP32", "data": inputs(1, 2)}]});
    let (status, out) = post_json(server.addr, infer_path(), &good);
    assert_eq!(status, 503, "{out}");
    assert!(
        out["error"].as_str().unwrap().contains("--timeout-ms"),
        "{out}"
    );
    // A full batch goes at once, inside the timeout.
    let eight = json!({"inputs": [{"name": "input", "shape": [8, 3, SIZE, SIZE], "datatype": "FP32", "data": inputs(8, 2)}]});
    let (status, out) = post_json(server.addr, infer_path(), &eight);
    assert_eq!(status, 200, "{out}");
    server.stop().unwrap();
}

#[test]
fn a_model_that_cannot_load_stops_the_server_with_the_reason() {
    let dir = model_dir("serve-broken");
    std::fs::write(dir.join("model.safetensors"), b"not weights").unwrap();
    let server = Server::start(&dir, options(limits(4, 1)));
    let error = server
        .done
        .unwrap()
        .join()
        .unwrap()
        .unwrap_err()
        .to_string();
    assert!(error.contains("cannot load the model from"), "{error}");
}
