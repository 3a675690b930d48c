//! `kiln ui` in a real browser: headless Chromium loads the runs table, a run's page, a
//! comparison of two runs and the models page from the kiln binary, and the test reads the DOM
//! it rendered (run names, one chart per metric, no JavaScript error caught by the page).
//! Screenshots are left in the test's temporary directory (printed) for a person to look at.
//! A second test times the runs table over 1,000 runs of 10,000 values each.
//!
//! Chromium is Debian's `chromium` (or `$KILN_CHROMIUM`); without it the tests say so and pass,
//! unless `KILN_REQUIRE_CHROMIUM` is set (CI sets it).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use kiln_engine::kernels::testing::temp_dir;
use kiln_runs::history::{Metric, NewRun};
use kiln_runs::{ModelRegistry, RunHistory, RunPaths, RunStatus};

const KILN: &str = env!("CARGO_BIN_EXE_kiln");

/// The browser, or `None` (after saying why) when the test may pass without one.
fn chromium() -> Option<PathBuf> {
    let path = std::env::var_os("KILN_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    if path.is_file() {
        return Some(path);
    }
    if std::env::var_os("KILN_REQUIRE_CHROMIUM").is_some() {
        panic!(
            "KILN_REQUIRE_CHROMIUM is set but {} is missing",
            path.display()
        );
    }
    eprintln!(
        "skipped: no Chromium at {} (apt-get install chromium)",
        path.display()
    );
    None
}

/// `kiln ui` over `home` on a free port, and its address.
struct Ui {
    child: Child,
    url: String,
}

impl Ui {
    fn start(home: &Path) -> Self {
        let mut child = Command::new(KILN)
            .args(["ui", "--port", "0"])
            .env("KILN_HOME", home)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("kiln ui starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .unwrap_or_else(|| panic!("kiln ui printed no address: {line:?}"))
            .trim_end_matches('/')
            .to_string();
        Self { child, url }
    }
}

impl Drop for Ui {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The DOM of `url` after its scripts ran, and a screenshot of it at `png`.
fn browse(chromium: &Path, url: &str, png: &Path) -> String {
    let base = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        "--virtual-time-budget=8000",
    ];
    let profile = png.with_extension("profile");
    let o = Command::new(chromium)
        .args(base)
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--screenshot={}", png.display()))
        .arg("--window-size=1280,1100")
        .arg(url)
        .output()
        .expect("chromium runs");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = Command::new(chromium)
        .args(base)
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("--dump-dom")
        .arg(url)
        .output()
        .expect("chromium runs");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A run with `epochs` epochs of train/val loss and accuracy, a learning rate, step losses
/// every 10 steps, a log and an artifact; `quality` scales how well it learns.
fn add_run(h: &mut RunHistory, name: &str, epochs: i64, quality: f64) -> String {
    let job = r#"{"name": "NAME", "experiment": "fashion", "train": {"lr": 0.1, "epochs": 5}}"#;
    let id = h
        .create_run(&NewRun {
            name,
            experiment: "fashion",
            compute_target: "local",
            job: &job.replace("NAME", name),
        })
        .unwrap();
    let paths = RunPaths::new(h.home(), &id);
    std::fs::create_dir_all(&paths.logs).unwrap();
    std::fs::create_dir_all(paths.outputs.join("model")).unwrap();
    std::fs::write(paths.outputs.join("model/kiln.json"), "{}").unwrap();
    let log: String = (1..=epochs)
        .map(|e| {
            format!(
                "epoch {e}/{epochs}: val/acc {:.3}\n",
                quality * e as f64 / 6.0
            )
        })
        .collect();
    std::fs::write(paths.output_log(), log).unwrap();
    h.set_running(&id, "kiln train --data images --lr 0.1", None, None)
        .unwrap();
    let metric = |epoch: i64, step: i64, split: &str, name: &str, value: f64| Metric {
        rank: Some(0),
        epoch: Some(epoch),
        step: Some(step),
        split: (!split.is_empty()).then(|| split.to_string()),
        name: name.into(),
        value: Some(value),
        time: Some(1.7e9 + step as f64),
    };
    let mut metrics = Vec::new();
    for e in 1..=epochs {
        for s in (1..=100).step_by(10) {
            let step = (e - 1) * 100 + s;
            metrics.push(metric(
                e,
                step,
                "train",
                "step_loss",
                2.3 / (1.0 + quality * step as f64 / 100.0),
            ));
        }
        let step = e * 100;
        let acc = quality * (1.0 - 0.7f64.powi(e as i32));
        metrics.push(metric(e, step, "train", "loss", 2.3 * (1.0 - acc)));
        metrics.push(metric(e, step, "val", "loss", 2.4 * (1.0 - acc)));
        metrics.push(metric(e, step, "train", "acc", acc));
        metrics.push(metric(e, step, "val", "acc", acc * 0.95));
        metrics.push(metric(
            e,
            step,
            "train",
            "lr",
            0.1 * 0.5f64.powi(e as i32 - 1),
        ));
    }
    h.add_metrics(&id, &metrics).unwrap();
    h.set_artifacts(&id, &[("outputs/model/kiln.json".into(), 2)])
        .unwrap();
    h.finish(&id, RunStatus::Completed, Some(0), None).unwrap();
    id
}

/// The body of `GET path` (HTTP/1.1, `Connection: close`; kiln ui answers with a length).
fn http_get(url: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(url.trim_start_matches("http://")).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_string()
}

fn count(dom: &str, needle: &str) -> usize {
    dom.matches(needle).count()
}

/// The page caught no JavaScript error and finished drawing `hash`.
fn assert_clean(dom: &str, hash: &str) {
    assert!(
        dom.contains("<ul id=\"errors\"></ul>"),
        "the page caught errors: {dom}"
    );
    assert!(
        dom.contains(&format!("data-ready=\"{hash}\"")),
        "{hash} never finished: {dom}"
    );
}

#[test]
fn the_page_shows_runs_a_run_a_comparison_and_models() {
    let Some(chromium) = chromium() else { return };
    let dir = temp_dir("ui-browser");
    let home = dir.join("home");
    let mut h = RunHistory::open(&home).unwrap();
    let a = add_run(&mut h, "resnet18-lr0.1", 5, 0.9);
    let b = add_run(&mut h, "resnet18-lr0.01", 5, 0.6);
    ModelRegistry::new(&mut h)
        .register(&a, "fashion-resnet", "outputs/model")
        .unwrap();
    drop(h);
    let ui = Ui::start(&home);
    let shot = |name: &str| dir.join(format!("{name}.png"));

    let dom = browse(&chromium, &format!("{}/#/", ui.url), &shot("runs"));
    assert_clean(&dom, "#/");
    assert!(
        dom.contains("resnet18-lr0.1") && dom.contains("resnet18-lr0.01"),
        "{dom}"
    );
    assert_eq!(count(&dom, "<tr class=\"run\""), 2, "{dom}");
    assert!(
        dom.contains("val/acc=0.7"),
        "last metrics in the table: {dom}"
    );

    let dom = browse(&chromium, &format!("{}/#/run/{a}", ui.url), &shot("run"));
    assert_clean(&dom, &format!("#/run/{a}"));
    assert!(dom.contains("Run ") && dom.contains("resnet18-lr0.1"));
    // acc, loss, lr, step_loss: one chart each.
    assert_eq!(count(&dom, "<canvas"), 4, "{dom}");
    for name in ["acc", "loss", "lr", "step_loss"] {
        assert!(
            dom.contains(&format!("<h4>{name}</h4>")),
            "no {name} chart: {dom}"
        );
    }
    assert!(dom.contains("epoch 5/5"), "the log is shown: {dom}");
    assert!(
        dom.contains("outputs/model/kiln.json"),
        "artifacts listed: {dom}"
    );
    assert!(dom.contains("\"lr\": 0.1"), "parameters shown: {dom}");
    assert!(
        dom.contains("kiln train --data images"),
        "the command shown: {dom}"
    );

    let dom = browse(
        &chromium,
        &format!("{}/#/compare/{a},{b}", ui.url),
        &shot("compare"),
    );
    assert_clean(&dom, &format!("#/compare/{a},{b}"));
    assert_eq!(count(&dom, "<canvas"), 4, "{dom}");
    assert!(
        dom.contains("resnet18-lr0.1 val/acc") && dom.contains("resnet18-lr0.01 val/acc"),
        "{dom}"
    );

    let dom = browse(&chromium, &format!("{}/#/models", ui.url), &shot("models"));
    assert_clean(&dom, "#/models");
    assert!(dom.contains("fashion-resnet") && dom.contains(&a), "{dom}");

    for name in ["runs", "run", "compare", "models"] {
        let png = shot(name);
        let size = std::fs::metadata(&png).map(|m| m.len()).unwrap_or(0);
        assert!(size > 10_000, "{} is {size} bytes", png.display());
        println!("screenshot: {}", png.display());
    }
}

#[test]
fn a_thousand_runs_of_ten_thousand_values_render_in_under_two_seconds() {
    let Some(chromium) = chromium() else { return };
    let dir = temp_dir("ui-thousand");
    let home = dir.join("home");
    let mut h = RunHistory::open(&home).unwrap();
    let filled = Instant::now();
    let values: Vec<Metric> = (0..10_000)
        .map(|i| Metric {
            rank: Some(0),
            epoch: Some(i / 1000 + 1),
            step: Some(i),
            split: Some(["train", "val"][i as usize % 2].into()),
            name: "loss".into(),
            value: Some(1.0 / (1.0 + i as f64)),
            time: Some(1.7e9 + i as f64),
        })
        .collect();
    for i in 0..1000 {
        let id = h
            .create_run(&NewRun {
                name: &format!("run-{i:04}"),
                experiment: ["fashion", "digits"][i % 2],
                compute_target: "local",
                job: "{}",
            })
            .unwrap();
        h.add_metrics(&id, &values).unwrap();
        h.finish(&id, RunStatus::Completed, Some(0), None).unwrap();
    }
    drop(h);
    println!(
        "1,000 runs x 10,000 values written in {:.1} s",
        filled.elapsed().as_secs_f64()
    );
    let ui = Ui::start(&home);
    let api = Instant::now();
    let body = http_get(&ui.url, "/api/runs");
    let runs: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(runs.as_array().unwrap().len(), 1000);
    println!(
        "GET /api/runs (1,000 runs): {:.0} ms",
        api.elapsed().as_secs_f64() * 1e3
    );
    // The page stamps the time from navigation to the table drawn (`data-render-ms`).
    let mut times = Vec::new();
    for i in 0..3 {
        let dom = browse(
            &chromium,
            &format!("{}/#/", ui.url),
            &dir.join(format!("thousand-{i}.png")),
        );
        assert_clean(&dom, "#/");
        assert_eq!(count(&dom, "<tr class=\"run\""), 1000);
        let ms: f64 = dom
            .split("data-render-ms=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .and_then(|v| v.parse().ok())
            .expect("the page stamps its render time");
        times.push(ms);
    }
    times.sort_by(f64::total_cmp);
    println!(
        "runs table of 1,000 runs drawn in {:?} ms (median {} ms)",
        times, times[1]
    );
    assert!(times[1] < 2000.0, "median {} ms", times[1]);
    // The history is a gigabyte; the screenshots stay.
    drop(ui);
    let _ = std::fs::remove_dir_all(&home);
}
