//! `kiln sweep` end to end through the binary: a script that reports known curves, so the
//! bandit policy must cancel exactly the runs it should at the right interval; concurrency
//! held to its limit; a misspelled primary metric warned about; cancel, a killed sweep and a
//! resumed one; and a real sweep of kiln's trainer on the bundled data.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use kiln_engine::kernels::testing::temp_dir;
use serde_json::Value;

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
const KILN: &str = env!("CARGO_BIN_EXE_kiln");

fn kiln(home: &Path, args: &[&str]) -> Output {
    Command::new(KILN)
        .args(args)
        .env("KILN_HOME", home)
        .env("RAYON_NUM_THREADS", "1")
        .output()
        .expect("kiln runs")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn status(home: &Path, sweep: &str) -> Value {
    let o = kiln(home, &["sweep", "status", sweep, "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    serde_json::from_slice(&o.stdout).expect("json")
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().expect("a parent")).expect("dir");
    std::fs::write(path, text).expect("write");
}

/// A project whose `run.sh` is `script`.
fn project(dir: &Path, script: &str) -> PathBuf {
    let src = dir.join("src");
    write(&src.join("run.sh"), script);
    std::fs::set_permissions(src.join("run.sh"), std::fs::Permissions::from_mode(0o755))
        .expect("chmod");
    src
}

/// The id `kiln sweep` prints first: `sweep <id>: ...`.
fn sweep_id(out: &str) -> String {
    out.lines()
        .find_map(|l| l.strip_prefix("sweep ")?.split(':').next())
        .expect("a sweep id")
        .to_string()
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "timed out: {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn trial_statuses(s: &Value) -> Vec<String> {
    s["trials"]
        .as_array()
        .expect("trials")
        .iter()
        .map(|t| t["status"].as_str().expect("a status").to_string())
        .collect()
}

/// Writes the named curve's `val_acc` reports, half a second apart.
const CURVES: &str = r#"#!/bin/sh
case "$2" in
  good) values="0.5 0.8 0.85 0.9" ;;
  bad) values="0.5 0.6 0.6 0.6" ;;
  close) values="0.45 0.7 0.8 0.85" ;;
  late) values="0.5 0.7 0.7 0.5" ;;
esac
step=0
for v in $values; do
  step=$((step + 1))
  echo "{\"name\": \"val_acc\", \"value\": $v, \"step\": $step}" >> "$KILN_LOGS/metrics.jsonl"
  sleep 0.5
done
"#;

#[test]
fn bandit_cancels_exactly_the_runs_behind_its_slack_at_the_right_interval() {
    let dir = temp_dir("sweep-bandit");
    let home = dir.join("home");
    project(&dir, CURVES);
    let file = dir.join("sweep.toml");
    write(
        &file,
        "primary_metric_name = \"val_acc\"\nprimary_metric_goal = \"maximize\"\n\
         sampling = \"grid\"\nmax_concurrent_runs = 1\n\
         [job]\nsource_directory = \"src\"\nentry_script = \"run.sh\"\n\
         [parameter_space]\n\"--curve\" = { choice = [\"good\", \"bad\", \"close\", \"late\"] }\n\
         [early_termination]\npolicy = \"bandit\"\nslack_factor = 0.2\ndelay_evaluation = 2\n",
    );
    let o = kiln(&home, &["sweep", file.to_str().unwrap()]);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    let id = sweep_id(&out);
    let s = status(&home, &id);
    assert_eq!(s["status"], "Completed", "{s}");
    assert_eq!(
        trial_statuses(&s),
        ["Completed", "Canceled", "Completed", "Canceled"],
        "{out}"
    );
    let note = |i: usize| {
        s["trials"][i]["note"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    // bad: 0.6 at interval 2 against 0.8 / 1.2 = 0.667 (interval 1 is not judged: delay 2).
    assert!(
        note(1).contains("bandit policy at interval 2") && note(1).contains("0.8 / (1 + 0.2)"),
        "{}",
        note(1)
    );
    // late: 0.7 at interval 3 against 0.85 / 1.2 = 0.708.
    assert!(note(3).contains("at interval 3"), "{}", note(3));
    assert!(note(0).is_empty() && note(2).is_empty());
    assert!(
        out.contains("canceled by the bandit policy at interval 2"),
        "{out}"
    );
    assert!(
        out.contains("2 completed, 2 canceled by early termination (bandit)"),
        "{out}"
    );
    // The canceled run's own log says why, and it ended before writing its whole curve.
    let bad = s["trials"][1]["run_id"].as_str().unwrap();
    let log = kiln(&home, &["runs", "logs", bad]);
    assert!(
        text(&log).contains("canceled by the bandit policy"),
        "{}",
        text(&log)
    );
    assert!(s["trials"][1]["reports"].as_u64().unwrap() < 4);
    let best = kiln(&home, &["sweep", "best", &id]);
    assert!(
        text(&best).contains("--curve=good") && text(&best).contains("0.9"),
        "{}",
        text(&best)
    );
    // `kiln runs list` shows the trials under their sweep.
    let list = text(&kiln(&home, &["runs", "list"]));
    let rows: Vec<&str> = list.lines().collect();
    let at = rows
        .iter()
        .position(|r| r.starts_with(&id))
        .expect("the sweep is listed");
    assert!(rows[at + 1].contains("  sweep trial 0"), "{list}");
    assert!(rows[at + 4].contains("  sweep trial 3"), "{list}");
}

#[test]
fn trials_run_at_most_max_concurrent_runs_at_once() {
    let dir = temp_dir("sweep-concurrency");
    let home = dir.join("home");
    let trace = dir.join("trace");
    project(
        &dir,
        "#!/bin/sh\necho \"start $(date +%s.%N)\" >> \"$TRACE\"\nsleep 1\n\
         echo \"end $(date +%s.%N)\" >> \"$TRACE\"\n\
         echo '{\"name\": \"loss\", \"value\": 1}' >> \"$KILN_LOGS/metrics.jsonl\"\n",
    );
    let file = dir.join("sweep.toml");
    write(
        &file,
        &format!(
            "primary_metric_name = \"loss\"\nprimary_metric_goal = \"minimize\"\n\
             max_total_runs = 5\nmax_concurrent_runs = 2\nseed = 4\n\
             [job]\nsource_directory = \"src\"\nentry_script = \"run.sh\"\n\
             [job.environment]\nTRACE = \"{}\"\n\
             [parameter_space]\n\"--x\" = {{ uniform = [0, 1] }}\n",
            trace.display()
        ),
    );
    let o = kiln(&home, &["sweep", file.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let mut events: Vec<(f64, i32)> = std::fs::read_to_string(&trace)
        .unwrap()
        .lines()
        .map(|l| {
            let (what, t) = l.split_once(' ').unwrap();
            (t.parse().unwrap(), if what == "start" { 1 } else { -1 })
        })
        .collect();
    assert_eq!(events.len(), 10);
    events.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let (mut now, mut most) = (0, 0);
    for (_, d) in events {
        now += d;
        most = most.max(now);
    }
    assert_eq!(most, 2, "two at once, never three");
    let s = status(&home, &sweep_id(&text(&o)));
    assert_eq!(trial_statuses(&s), ["Completed"; 5]);
    // Random draws are seeded: the same seed gives the same parameters.
    let xs: Vec<f64> = s["trials"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["params"]["--x"].as_f64().unwrap())
        .collect();
    assert!(xs.iter().all(|x| (0.0..=1.0).contains(x)));
    let again = kiln(&home, &["sweep", file.to_str().unwrap()]);
    let s2 = status(&home, &sweep_id(&text(&again)));
    let xs2: Vec<f64> = s2["trials"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["params"]["--x"].as_f64().unwrap())
        .collect();
    assert_eq!(xs, xs2);
}

#[test]
fn a_primary_metric_the_runs_never_report_is_warned_about_after_the_first_trial() {
    let dir = temp_dir("sweep-metric");
    let home = dir.join("home");
    project(&dir, CURVES);
    let file = dir.join("sweep.toml");
    write(
        &file,
        "primary_metric_name = \"val_accuracy\"\nprimary_metric_goal = \"maximize\"\n\
         sampling = \"grid\"\n[job]\nsource_directory = \"src\"\nentry_script = \"run.sh\"\n\
         [parameter_space]\n\"--curve\" = { choice = [\"good\"] }\n",
    );
    let o = kiln(&home, &["sweep", file.to_str().unwrap()]);
    let out = text(&o);
    assert!(
        out.contains(
            "warning: trial 0 completed without reporting primary_metric_name 'val_accuracy'; \
             it reported val_acc."
        ),
        "{out}"
    );
    let best = kiln(&home, &["sweep", "best"]);
    assert!(!best.status.success());
    assert!(
        text(&best).contains("no trial has completed with a value of val_accuracy"),
        "{}",
        text(&best)
    );
}

#[test]
fn sweep_file_errors_name_the_line_and_start_nothing() {
    let dir = temp_dir("sweep-errors");
    let home = dir.join("home");
    project(&dir, CURVES);
    let cases = [
        (
            "\"--lr\" = { unifrom = [0, 1] }\n",
            ":9: parameter_space.--lr: unknown parameter expression 'unifrom'; did you mean 'uniform'?",
        ),
        (
            "\"--lr\" = { uniform = [1, 0] }\n",
            ":9: parameter_space.--lr: expected low < high",
        ),
        (
            "\"--lr\" = 0.1\n",
            ":9: parameter_space.--lr: expected one parameter expression",
        ),
        (
            "\"--lr\" = { choice = [0.1] }\n[early_termination]\npolicy = \"bandit\"\n",
            ":11: early_termination.policy: bandit needs slack_factor or slack_amount",
        ),
    ];
    for (space, want) in cases {
        let file = dir.join("sweep.toml");
        write(
            &file,
            &format!(
                "primary_metric_name = \"val_acc\"\nprimary_metric_goal = \"maximize\"\n\
                 max_total_runs = 2\n[job]\nsource_directory = \"src\"\n\
                 entry_script = \"run.sh\"\n\n[parameter_space]\n{space}"
            ),
        );
        let o = kiln(&home, &["sweep", file.to_str().unwrap()]);
        assert!(!o.status.success());
        assert!(text(&o).contains(want), "want {want}\n got {}", text(&o));
    }
    let file = dir.join("bayes.toml");
    write(
        &file,
        "primary_metric_name = \"val_acc\"\nprimary_metric_goal = \"maximize\"\n\
         sampling = \"bayesian\"\nmax_total_runs = 2\n[job]\nsource_directory = \"src\"\n\
         entry_script = \"run.sh\"\n[parameter_space]\n\"--lr\" = { uniform = [0, 1] }\n\
         [early_termination]\npolicy = \"median_stopping\"\n",
    );
    let o = kiln(&home, &["sweep", file.to_str().unwrap()]);
    assert!(
        text(&o).contains(
            "bayes.toml:11: early_termination.policy: bayesian sampling takes no early termination"
        ),
        "{}",
        text(&o)
    );
    let list = kiln(&home, &["runs", "list"]);
    assert!(text(&list).contains("no runs yet"), "{}", text(&list));
}

/// Reports `val_acc` = `--v`; first sleeps a minute while its value is listed in `$HOLD`.
const SLEEPER: &str = "#!/bin/sh\necho $$ > \"$KILN_OUTPUTS/pid\"\n\
    if grep -qx \"$2\" \"$HOLD\" 2>/dev/null; then sleep 60; fi\n\
    echo \"{\\\"name\\\": \\\"val_acc\\\", \\\"value\\\": $2}\" >> \"$KILN_LOGS/metrics.jsonl\"\n";

/// A grid sweep of three sleeper trials, one at a time; `hold` lists the values that sleep.
fn sleeper_sweep(dir: &Path) -> PathBuf {
    project(dir, SLEEPER);
    let file = dir.join("sweep.toml");
    write(
        &file,
        &format!(
            "primary_metric_name = \"val_acc\"\nprimary_metric_goal = \"maximize\"\n\
             sampling = \"grid\"\n[job]\nsource_directory = \"src\"\nentry_script = \"run.sh\"\n\
             [job.environment]\nHOLD = \"{}\"\n\
             [parameter_space]\n\"--v\" = {{ choice = [0.1, 0.2, 0.3] }}\n",
            dir.join("hold").display()
        ),
    );
    file
}

#[test]
fn cancel_stops_the_running_trial_and_a_resumed_sweep_reuses_finished_ones() {
    let dir = temp_dir("sweep-cancel");
    let home = dir.join("home");
    let file = sleeper_sweep(&dir);
    // The first trial finishes; the second sleeps until the sweep is canceled.
    write(&dir.join("hold"), "0.2\n0.3\n");
    let o = kiln(&home, &["sweep", file.to_str().unwrap(), "--detach"]);
    assert!(o.status.success(), "{}", text(&o));
    let id = sweep_id(&text(&o));
    wait_until("trial 1 running", || {
        trial_statuses(&status(&home, &id)) == ["Completed", "Running"]
    });
    let o = kiln(&home, &["sweep", "cancel", &id]);
    assert!(o.status.success(), "{}", text(&o));
    let s = status(&home, &id);
    assert_eq!(s["status"], "Canceled");
    assert_eq!(trial_statuses(&s), ["Completed", "Canceled"]);
    assert!(
        s["trials"][1]["note"]
            .as_str()
            .unwrap()
            .contains("canceled with its sweep")
    );
    let first = s["trials"][0]["run_id"].as_str().unwrap().to_string();
    // Resumed without the hold: trial 0 is the same run, trials 1 and 2 run anew.
    std::fs::remove_file(dir.join("hold")).unwrap();
    let o = kiln(&home, &["sweep", file.to_str().unwrap(), "--resume", &id]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains(&format!("reused from sweep {id}")),
        "{}",
        text(&o)
    );
    let s = status(&home, &sweep_id(&text(&o)));
    assert_eq!(trial_statuses(&s), ["Completed"; 3]);
    assert_eq!(s["trials"][0]["run_id"], first.as_str());
    assert_ne!(s["trials"][1]["run_id"], s["trials"][2]["run_id"]);
    assert_eq!(s["resumed_from"], id.as_str());
    let best = kiln(&home, &["sweep", "best", "--json"]);
    let best: Value = serde_json::from_slice(&best.stdout).unwrap();
    assert_eq!(best["params"]["--v"], 0.3);
    // A trial is not a sweep: neither cancel nor resume takes it.
    let o = kiln(&home, &["sweep", "cancel", &first]);
    assert!(text(&o).contains("is not a sweep"), "{}", text(&o));
    let o = kiln(
        &home,
        &["sweep", file.to_str().unwrap(), "--resume", &first],
    );
    assert!(text(&o).contains("is not a sweep"), "{}", text(&o));
}

/// Processes that carry run `id` in their environment.
fn processes_of(id: &str) -> usize {
    let marker = format!("KILN_RUN_ID={id}");
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            std::fs::read(e.path().join("environ"))
                .is_ok_and(|env| env.split(|b| *b == 0).any(|v| v == marker.as_bytes()))
        })
        .count()
}

#[test]
fn a_killed_sweep_leaves_no_trial_running_and_is_marked_lost() {
    let dir = temp_dir("sweep-killed");
    let home = dir.join("home");
    let file = sleeper_sweep(&dir);
    write(&dir.join("hold"), "0.1\n0.2\n0.3\n");
    let mut sweep = Command::new(KILN)
        .args(["sweep", file.to_str().unwrap()])
        .env("KILN_HOME", &home)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("kiln sweep starts");
    let mut trial = String::new();
    wait_until("the first trial's program runs", || {
        let Ok(entries) = std::fs::read_dir(home.join("runs")) else {
            return false;
        };
        entries.flatten().any(|e| {
            e.path().join("outputs/pid").exists() && {
                trial = e.file_name().to_string_lossy().into_owned();
                true
            }
        })
    });
    assert!(processes_of(&trial) > 0, "the trial runs");
    sweep.kill().expect("kill -9");
    sweep.wait().expect("reaped");
    // The next kiln command finds the sweep and its trial lost, and stops what is left.
    wait_until("sweep and trial marked lost", || {
        let o = kiln(&home, &["sweep", "status", "--json"]);
        let s: Value = serde_json::from_slice(&o.stdout).expect("json");
        s["status"] == "Failed" && trial_statuses(&s) == ["Failed"]
    });
    let s: Value =
        serde_json::from_slice(&kiln(&home, &["sweep", "status", "--json"]).stdout).unwrap();
    assert!(s["error"].as_str().unwrap().starts_with("lost"), "{s}");
    wait_until("no process of the trial is left", || {
        processes_of(&trial) == 0
    });
}

#[test]
fn a_real_sweep_of_the_trainer_finds_a_better_learning_rate_than_the_worst() {
    let dir = temp_dir("sweep-train");
    let home = dir.join("home");
    let data = Path::new(ROOT).join("data/fashion-mnist-mini");
    let file = dir.join("sweep.toml");
    write(
        &file,
        &format!(
            "primary_metric_name = \"val/acc\"\nprimary_metric_goal = \"maximize\"\n\
             sampling = \"grid\"\n[job]\nname = \"lr\"\n[job.train]\ndata = \"{}\"\nepochs = 3\n\
             max_steps_per_epoch = 10\nbatch_size = 16\nimage_size = 28\nworkers = 1\n\
             [parameter_space]\n\"--lr\" = {{ choice = [0.00001, 0.001] }}\n",
            data.display()
        ),
    );
    let o = kiln(&home, &["sweep", file.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let s = status(&home, &sweep_id(&text(&o)));
    assert_eq!(trial_statuses(&s), ["Completed"; 2]);
    let acc = |i: usize| s["trials"][i]["best"].as_f64().unwrap();
    println!("val/acc: lr 1e-5 {:.3}, lr 1e-3 {:.3}", acc(0), acc(1));
    assert!(acc(1) > acc(0) + 0.05, "{s}");
    let best: Value =
        serde_json::from_slice(&kiln(&home, &["sweep", "best", "--json"]).stdout).unwrap();
    assert_eq!(best["params"]["--lr"], 0.001);
    // Each trial is a normal run with its model.
    let run = best["run_id"].as_str().unwrap();
    assert!(
        home.join("runs")
            .join(run)
            .join("outputs/model/model.safetensors")
            .exists()
    );
}

#[test]
fn max_duration_minutes_cancels_the_running_trials_and_ends_the_sweep() {
    let dir = temp_dir("sweep-deadline");
    let home = dir.join("home");
    let file = sleeper_sweep(&dir);
    write(&dir.join("hold"), "0.1\n0.2\n0.3\n");
    let text_now = std::fs::read_to_string(&file).unwrap();
    write(&file, &format!("max_duration_minutes = 0.03\n{text_now}"));
    let started = Instant::now();
    let o = kiln(&home, &["sweep", file.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the hold was not waited out"
    );
    assert!(
        text(&o).contains("max_duration_minutes (0.03) reached"),
        "{}",
        text(&o)
    );
    let s = status(&home, &sweep_id(&text(&o)));
    assert_eq!(s["status"], "Completed");
    assert_eq!(
        trial_statuses(&s),
        ["Canceled"],
        "no trial starts after the deadline"
    );
    assert!(
        s["trials"][0]["note"]
            .as_str()
            .unwrap()
            .contains("max_duration_minutes")
    );
}
