//! `kiln ui`'s JSON API over a real socket: every route, errors as `{"error": ...}`, 404 for
//! paths that climb out of a run (`..`, absolute paths, symbolic links), the token beyond
//! localhost, and API latency under 16 concurrent clients.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kiln_runs::history::{Metric, NewRun};
use kiln_runs::{ModelRegistry, RunHistory, RunPaths, RunStatus};
use kiln_ui::UiOptions;
use serde_json::Value;

fn home(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kiln-ui-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// A history with one finished run (metrics, a log, a model) and a symlink out of it.
fn populate(home: &Path) -> String {
    let mut h = RunHistory::open(home).unwrap();
    let id = h
        .create_run(&NewRun {
            name: "digits",
            experiment: "mnist",
            compute_target: "local",
            job: "{\"train\": {\"lr\": 0.1}}",
        })
        .unwrap();
    let paths = RunPaths::new(home, &id);
    std::fs::create_dir_all(paths.outputs.join("model")).unwrap();
    std::fs::create_dir_all(&paths.logs).unwrap();
    std::fs::write(paths.outputs.join("model/kiln.json"), "{}").unwrap();
    std::fs::write(paths.output_log(), "epoch 1/2\nepoch 2/2\n").unwrap();
    std::os::unix::fs::symlink("/etc/passwd", paths.outputs.join("escape")).unwrap();
    h.set_status(&id, RunStatus::Running).unwrap();
    let m = |epoch: i64, v: f64| Metric {
        rank: Some(0),
        epoch: Some(epoch),
        step: Some(epoch * 10),
        split: Some("val".into()),
        name: "acc".into(),
        value: Some(v),
        time: Some(1.0e9 + epoch as f64),
    };
    h.add_metrics(&id, &[m(1, 0.5), m(2, 0.75)]).unwrap();
    h.set_artifacts(&id, &[("outputs/model/kiln.json".into(), 2)])
        .unwrap();
    h.finish(&id, RunStatus::Completed, Some(0), None).unwrap();
    ModelRegistry::new(&mut h)
        .register(&id, "digits", "outputs/model")
        .unwrap();
    id
}

fn start(home: &Path, host: &str, token: Option<&str>) -> SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    let options = UiOptions {
        host: host.parse::<IpAddr>().unwrap(),
        port: 0,
        token: token.map(str::to_string),
    };
    let home = home.to_path_buf();
    std::thread::spawn(move || {
        kiln_ui::run(home, options, |addr| tx.send(addr).unwrap()).unwrap();
    });
    rx.recv_timeout(Duration::from_secs(30))
        .expect("kiln ui listens")
}

/// One HTTP/1.1 request; returns the status and the body.
fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[&str],
    body: &str,
) -> (u16, String) {
    let (status, _, body) = exchange(addr, "localhost", method, path, headers, body);
    (status, body)
}

/// One HTTP/1.1 request to `host`; returns the status, the head and the body.
fn exchange(
    addr: SocketAddr,
    host: &str,
    method: &str,
    path: &str,
    headers: &[&str],
    body: &str,
) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for h in headers {
        req += &format!("{h}\r\n");
    }
    req += &format!("Content-Length: {}\r\n\r\n{body}", body.len());
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    (status, head.to_string(), body)
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out += &rest[..n];
        body = &rest[n + 2..];
    }
    out
}

fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    request(addr, "GET", path, &[], "")
}

fn json(addr: SocketAddr, path: &str) -> Value {
    let (status, body) = get(addr, path);
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap()
}

#[test]
fn every_route_answers_and_errors_are_json() {
    let home = home("routes");
    let id = populate(&home);
    let addr = start(&home, "127.0.0.1", None);
    let (status, page) = get(addr, "/");
    assert_eq!(status, 200);
    assert!(page.contains("<title>kiln</title>"));
    let runs = json(addr, "/api/runs");
    assert_eq!(runs[0]["id"], id.as_str());
    assert_eq!(runs[0]["sweep_id"], Value::Null);
    assert_eq!(
        json(addr, "/api/runs?experiment=mnist&status=Completed")
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        json(addr, "/api/runs?experiment=other")
            .as_array()
            .unwrap()
            .len(),
        0
    );
    let (status, body) = get(addr, "/api/runs?status=Done");
    assert_eq!(status, 400);
    assert!(
        body.contains("\"error\"") && body.contains("unknown run status 'Done'"),
        "{body}"
    );
    let run = json(addr, &format!("/api/runs/{}", &id[..5]));
    assert_eq!(
        (run["name"].as_str(), run["status"].as_str()),
        (Some("digits"), Some("Completed"))
    );
    assert_eq!(run["artifacts"][0][0], "outputs/model/kiln.json");
    let metrics = json(addr, &format!("/api/runs/{id}/metrics"));
    assert_eq!(metrics.as_array().unwrap().len(), 2);
    assert_eq!(metrics[1]["value"], 0.75);
    let log = json(addr, &format!("/api/runs/{id}/log"));
    assert_eq!(log["text"], "epoch 1/2\nepoch 2/2\n");
    assert_eq!(log["ended"], true);
    let rest = json(addr, &format!("/api/runs/{id}/log?offset=10"));
    assert_eq!(rest["text"], "epoch 2/2\n");
    assert_eq!(rest["offset"], 20);
    let (status, body) = get(
        addr,
        &format!("/api/runs/{id}/files/outputs/model/kiln.json"),
    );
    assert_eq!((status, body.as_str()), (200, "{}"));
    let models = json(addr, "/api/models");
    assert_eq!(
        (models[0]["name"].as_str(), models[0]["version"].as_i64()),
        (Some("digits"), Some(1))
    );
    let model = json(addr, "/api/models/digits/1");
    assert_eq!(model["files"][0]["path"], "kiln.json");
    assert_eq!(model["files"][0]["sha256"].as_str().unwrap().len(), 64);
    let (status, body) = get(addr, "/api/models/digits/1/files/kiln.json");
    assert_eq!((status, body.as_str()), (200, "{}"));
    for (path, want) in [
        ("/api/runs/nosuchrun", "no run 'nosuchrun'"),
        ("/api/models/digits/7", "no model digits:7"),
        ("/api/nothing", "no such page or API route"),
        ("/elsewhere", "no such page or API route"),
    ] {
        let (status, body) = get(addr, path);
        assert_eq!(status, 404, "{path}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert!(
            v["error"].as_str().unwrap().contains(want),
            "{path}: {body}"
        );
    }
}

#[test]
fn a_log_is_followed_in_chunks_without_cutting_a_character() {
    let home = home("chunks");
    let id = populate(&home);
    let chunk = 1 << 20;
    let log = format!("{}éz", "a".repeat(chunk - 1));
    std::fs::write(RunPaths::new(&home, &id).output_log(), &log).unwrap();
    let addr = start(&home, "127.0.0.1", None);
    let first = json(addr, &format!("/api/runs/{id}/log"));
    assert_eq!(first["text"].as_str().unwrap().len(), chunk - 1);
    assert_eq!(first["offset"], chunk - 1);
    let rest = json(addr, &format!("/api/runs/{id}/log?offset={}", chunk - 1));
    assert_eq!(rest["text"], "éz");
    assert_eq!(rest["offset"], log.len());
}

#[test]
fn no_file_outside_a_run_is_served() {
    let home = home("escape");
    let id = populate(&home);
    std::fs::write(home.join("secret"), "secret").unwrap();
    // A run's snapshot of the user's source is not served either.
    let paths = RunPaths::new(&home, &id);
    std::fs::create_dir_all(&paths.snapshot).unwrap();
    std::fs::write(paths.snapshot.join(".env"), "secret\"").unwrap();
    std::fs::write(paths.dir.join("job.json"), "secret\"").unwrap();
    let addr = start(&home, "127.0.0.1", None);
    for path in [
        format!("/api/runs/{id}/files/../../secret"),
        format!("/api/runs/{id}/files/..%2F..%2Fsecret"),
        format!("/api/runs/{id}/files/outputs/../../../secret"),
        format!("/api/runs/{id}/files//etc/passwd"),
        format!("/api/runs/{id}/files/%2Fetc%2Fpasswd"),
        format!("/api/runs/{id}/files/outputs/escape"),
        format!("/api/runs/{id}/files/snapshot/.env"),
        format!("/api/runs/{id}/files/job.json"),
        "/api/models/digits/1/files/../../../secret".to_string(),
        "/api/models/..%2F..%2F/1/files/kiln.db".to_string(),
    ] {
        let (status, body) = get(addr, &path);
        assert_eq!(status, 404, "{path}: {body}");
        assert!(
            !body.contains("secret\"") && !body.contains("root:"),
            "{path}: {body}"
        );
    }
}

#[test]
fn beyond_localhost_the_token_is_required() {
    let home = home("token");
    populate(&home);
    let options = UiOptions {
        host: "0.0.0.0".parse().unwrap(),
        port: 0,
        token: None,
    };
    let e = kiln_ui::run(home.clone(), options, |_| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("KILN_UI_TOKEN"), "{e}");
    let addr = start(&home, "0.0.0.0", Some("s3cret"));
    let addr = SocketAddr::new("127.0.0.1".parse().unwrap(), addr.port());
    let (status, body) = get(addr, "/api/runs");
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("\"error\""));
    let (status, _) = request(
        addr,
        "GET",
        "/api/runs",
        &["Authorization: Bearer wrong"],
        "",
    );
    assert_eq!(status, 401);
    let (status, _) = request(
        addr,
        "GET",
        "/api/runs",
        &["Authorization: Bearer s3cret"],
        "",
    );
    assert_eq!(status, 200);
    // The page itself loads (it asks for the token); a signed-in browser sends the cookie.
    assert_eq!(get(addr, "/").0, 200);
    let form = ["Content-Type: application/x-www-form-urlencoded"];
    assert_eq!(request(addr, "POST", "/login", &form, "token=nope").0, 401);
    let (status, head, _) = exchange(addr, "localhost", "POST", "/login", &form, "token=s3cret");
    assert_eq!(status, 303);
    let cookie = head
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .and_then(|c| c.split(';').next())
        .expect("a session cookie")
        .to_string();
    let (status, _) = request(
        addr,
        "GET",
        "/api/runs",
        &[&format!("Cookie: {cookie}")],
        "",
    );
    assert_eq!(status, 200);
    let raw = ["Cookie: kiln_ui_token=s3cret"];
    assert_eq!(request(addr, "GET", "/api/runs", &raw, "").0, 401);
}

#[test]
fn without_a_token_only_requests_for_localhost_are_answered() {
    let home = home("rebind");
    populate(&home);
    let addr = start(&home, "127.0.0.1", None);
    let port = addr.port();
    for host in [
        "localhost".to_string(),
        format!("127.0.0.1:{port}"),
        format!("[::1]:{port}"),
        format!("LOCALHOST:{port}"),
    ] {
        let (status, _, body) = exchange(addr, &host, "GET", "/api/runs", &[], "");
        assert_eq!(status, 200, "{host}: {body}");
    }
    // A page whose name was rebound to 127.0.0.1 sends its own name.
    for host in [
        "attacker.example",
        "attacker.example:5000",
        "127.0.0.1.nip.io",
    ] {
        let (status, _, body) = exchange(addr, host, "GET", "/api/runs", &[], "");
        assert_eq!(status, 403, "{host}: {body}");
        assert!(
            body.contains("\"error\"") && body.contains("localhost"),
            "{body}"
        );
        assert_eq!(exchange(addr, host, "GET", "/", &[], "").0, 403);
    }
}

#[test]
fn api_latency_under_sixteen_concurrent_clients() {
    let home = home("load");
    let id = populate(&home);
    let addr = start(&home, "127.0.0.1", None);
    let started = Instant::now();
    let clients: Vec<_> = (0..16)
        .map(|i| {
            let path = if i % 2 == 0 {
                "/api/runs".to_string()
            } else {
                format!("/api/runs/{id}/metrics")
            };
            std::thread::spawn(move || {
                (0..25)
                    .map(|_| {
                        let t = Instant::now();
                        let (status, _) = get(addr, &path);
                        assert_eq!(status, 200);
                        t.elapsed().as_secs_f64() * 1e3
                    })
                    .collect::<Vec<f64>>()
            })
        })
        .collect();
    let mut ms: Vec<f64> = clients
        .into_iter()
        .flat_map(|c| c.join().unwrap())
        .collect();
    ms.sort_by(|a, b| a.total_cmp(b));
    let p = |q: f64| ms[((ms.len() - 1) as f64 * q) as usize];
    println!(
        "{} requests from 16 clients in {:.2} s: p50 {:.1} ms, p99 {:.1} ms",
        ms.len(),
        started.elapsed().as_secs_f64(),
        p(0.5),
        p(0.99)
    );
    assert!(p(0.99) < 2000.0);
}
