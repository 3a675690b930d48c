//! `kiln runs list | show | metrics | logs | download | cancel | recover`: the run history, as
//! tables or `--json`. Every command first marks runs whose `kiln submit` was killed as lost;
//! the reading ones read a `KILN_HOME` this user cannot write as it is. `recover` rebuilds the
//! history from the runs and models on disk.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::{Args, Subcommand};
use kiln_engine::train::curves::{Series, draw_metrics};
use kiln_runs::RunPaths;
use kiln_runs::registry::{inside, resolve_in};
use kiln_runs::{self as runs, RunHistory, RunRecord, submit};

use crate::table;

/// Arguments of `kiln runs`.
#[derive(Args, Debug)]
pub struct RunsArgs {
    #[command(subcommand)]
    command: RunsCommand,
}

#[derive(Subcommand, Debug)]
enum RunsCommand {
    /// Runs, newest first.
    List {
        /// Only this experiment's runs.
        #[arg(long)]
        experiment: Option<String>,
        /// JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// One run: status, times, exit code, command, git state, last metrics, artifacts.
    Show {
        /// Run id (or a unique prefix).
        run: String,
        /// JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Every metric value a run recorded.
    Metrics {
        /// Run id (or a unique prefix).
        run: String,
        /// A JSON array for scripts, one value per line.
        #[arg(long)]
        json: bool,
        /// Draw the curves into a PNG.
        #[arg(long)]
        plot: Option<PathBuf>,
    },
    /// The run's output (stdout and stderr).
    Logs {
        /// Run id (or a unique prefix).
        run: String,
        /// Keep printing until the run ends.
        #[arg(long)]
        follow: bool,
    },
    /// Copy a file or directory out of a run (e.g. `outputs/model`).
    Download {
        /// Run id (or a unique prefix).
        run: String,
        /// Path inside the run directory.
        path: String,
        /// Where to put it.
        dest: PathBuf,
    },
    /// Stop a run and its processes.
    Cancel {
        /// Run id (or a unique prefix).
        run: String,
    },
    /// Rebuild the run history from the runs and models on disk, when kiln.db was lost,
    /// emptied or damaged (the old file is moved aside, never deleted).
    Recover {
        /// Rebuild even a sound history (what only it held of runs without run.json is lost
        /// from the new one).
        #[arg(long)]
        force: bool,
    },
}

/// Runs `kiln runs ...`.
pub fn run(args: RunsArgs) -> Result<ExitCode> {
    let home = runs::kiln_home();
    let history = match &args.command {
        RunsCommand::Recover { force } => return recover(&home, *force),
        RunsCommand::Cancel { .. } => RunHistory::open(&home)?,
        _ => RunHistory::open_to_read(&home)?,
    };
    if history.is_read_only() {
        eprintln!(
            "note: {} cannot be written here: the run history is read as it is (runs whose \
             kiln submit was killed are not marked lost)",
            home.display()
        );
    }
    history.reap_lost()?;
    match args.command {
        RunsCommand::List { experiment, json } => list(&history, experiment.as_deref(), json),
        RunsCommand::Show { run, json } => show(&history, &run, json),
        RunsCommand::Metrics { run, json, plot } => metrics(&history, &run, json, plot),
        RunsCommand::Logs { run, follow } => logs(&history, &run, follow),
        RunsCommand::Download { run, path, dest } => download(&history, &run, &path, &dest),
        RunsCommand::Recover { .. } => unreachable!("recovered above"),
        RunsCommand::Cancel { run } => {
            let status = submit::cancel(&history, &run)?;
            println!("run {}: {status}", history.resolve(&run)?);
            // The run may have ended on its own while the cancel was on its way.
            Ok(if status == runs::RunStatus::Canceled {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}

fn last_metrics_text(run: &RunRecord) -> String {
    run.last_metrics
        .iter()
        .filter(|(k, _)| !k.ends_with("epoch_time_s") && !k.ends_with("images_per_s"))
        .take(4)
        .map(|(k, v)| format!("{k}={v:.4}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn list(history: &RunHistory, experiment: Option<&str>, json: bool) -> Result<ExitCode> {
    let runs = history.runs(experiment)?;
    let sweep_of = history.sweep_of_trials()?;
    if json {
        let mut value = serde_json::to_value(&runs)?;
        for run in value.as_array_mut().into_iter().flatten() {
            let id = run["id"].as_str().unwrap_or_default().to_string();
            run["sweep_id"] = sweep_of
                .get(&id)
                .map_or(serde_json::Value::Null, |s| s.as_str().into());
        }
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(ExitCode::SUCCESS);
    }
    if runs.is_empty() {
        println!("no runs yet (kiln submit JOB.toml starts one)");
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = children_under_sweeps(&runs, &sweep_of)
        .into_iter()
        .map(|(r, child)| {
            vec![
                r.id.clone(),
                if child {
                    format!("  {}", r.name)
                } else {
                    r.name.clone()
                },
                r.experiment.clone(),
                r.status.to_string(),
                table::timestamp(r.started.unwrap_or(r.created)),
                r.duration.map_or("-".into(), table::duration),
                r.exit_code.map_or("-".into(), |c| c.to_string()),
                last_metrics_text(r),
            ]
        })
        .collect();
    print!(
        "{}",
        table::render(
            &[
                "id",
                "name",
                "experiment",
                "status",
                "start (UTC)",
                "duration",
                "exit",
                "last metrics"
            ],
            &rows
        )
    );
    Ok(ExitCode::SUCCESS)
}

/// Runs newest first, each sweep's trials (flagged `true`) right under it in trial order.
fn children_under_sweeps<'a>(
    runs: &'a [RunRecord],
    sweep_of: &std::collections::HashMap<String, String>,
) -> Vec<(&'a RunRecord, bool)> {
    let listed = |id: &String| runs.iter().any(|r| &r.id == id);
    let mut out = Vec::new();
    for r in runs {
        if sweep_of.get(&r.id).is_some_and(listed) {
            continue;
        }
        out.push((r, false));
        let mut trials: Vec<&RunRecord> = runs
            .iter()
            .filter(|t| sweep_of.get(&t.id) == Some(&r.id))
            .collect();
        trials.sort_by(|a, b| a.created.total_cmp(&b.created));
        out.extend(trials.into_iter().map(|t| (t, true)));
    }
    out
}

fn show(history: &RunHistory, run: &str, json: bool) -> Result<ExitCode> {
    let r = history.run(run)?;
    let artifacts = history.artifacts(&r.id)?;
    if json {
        let mut value = serde_json::to_value(&r)?;
        value["artifacts"] = serde_json::to_value(&artifacts)?;
        value["directory"] = runs::run_dir(history.home(), &r.id)
            .to_string_lossy()
            .into();
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(ExitCode::SUCCESS);
    }
    let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    println!("id           {}", r.id);
    println!("name         {}", r.name);
    println!("experiment   {}", r.experiment);
    println!("status       {}", r.status);
    if let Some(e) = &r.error {
        println!("error        {e}");
    }
    println!("created      {}", table::timestamp(r.created));
    println!("started      {}", opt(r.started.map(table::timestamp)));
    println!("ended        {}", opt(r.ended.map(table::timestamp)));
    println!("duration     {}", opt(r.duration.map(table::duration)));
    println!("exit code    {}", opt(r.exit_code.map(|c| c.to_string())));
    println!("compute      {} on {}", r.compute_target, r.host);
    println!("command      {}", opt(r.command.clone()));
    if let Some(id) = &r.scheduler_id {
        println!("slurm job    {id}");
    }
    if let Some(commit) = &r.git_commit {
        let dirty = if r.git_dirty == Some(true) {
            " (dirty)"
        } else {
            ""
        };
        println!("git          {commit}{dirty}");
    }
    println!(
        "directory    {}",
        runs::run_dir(history.home(), &r.id).display()
    );
    if !r.last_metrics.is_empty() {
        println!("last metrics");
        for (k, v) in &r.last_metrics {
            println!("  {k:<24} {v}");
        }
    }
    if !artifacts.is_empty() {
        println!("artifacts");
        for (path, size) in &artifacts {
            println!("  {path:<40} {}", runs::snapshot::human_bytes(*size));
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn metrics(history: &RunHistory, run: &str, json: bool, plot: Option<PathBuf>) -> Result<ExitCode> {
    let id = history.resolve(run)?;
    let values = history.metrics(&id)?;
    if let Some(path) = plot {
        let mut series: BTreeMap<(String, String), Vec<(f64, f64)>> = BTreeMap::new();
        for (i, m) in values.iter().enumerate() {
            let x = m.epoch.or(m.step).map_or(i as f64, |v| v as f64);
            series
                .entry((m.name.clone(), m.split.clone().unwrap_or_default()))
                .or_default()
                .push((x, m.value.unwrap_or(f64::NAN)));
        }
        let series: Vec<Series> = series
            .into_iter()
            .map(|((name, split), points)| Series {
                name,
                split,
                points,
            })
            .collect();
        draw_metrics(&path, &series)?;
        println!(
            "{} curves of run {id} drawn in {}",
            series.len(),
            path.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    if json {
        // One JSON document (an array), one value per line.
        let mut out = std::io::stdout().lock();
        writeln!(out, "[")?;
        for (i, m) in values.iter().enumerate() {
            let comma = if i + 1 < values.len() { "," } else { "" };
            writeln!(out, "{}{comma}", serde_json::to_string(m)?)?;
        }
        writeln!(out, "]")?;
        return Ok(ExitCode::SUCCESS);
    }
    let cell = |v: Option<i64>| v.map_or("-".into(), |v| v.to_string());
    let rows: Vec<Vec<String>> = values
        .iter()
        .map(|m| {
            vec![
                cell(m.rank),
                cell(m.epoch),
                cell(m.step),
                m.split
                    .clone()
                    .filter(|s| !s.is_empty())
                    .unwrap_or("-".into()),
                m.name.clone(),
                m.value.map_or("nan".into(), |v| format!("{v}")),
            ]
        })
        .collect();
    print!(
        "{}",
        table::render(&["rank", "epoch", "step", "split", "name", "value"], &rows)
    );
    Ok(ExitCode::SUCCESS)
}

fn logs(history: &RunHistory, run: &str, follow: bool) -> Result<ExitCode> {
    let id = history.resolve(run)?;
    let path = RunPaths::new(history.home(), &id).output_log();
    let mut offset = submit::print_appended(&path, 0)?;
    if !follow {
        return Ok(ExitCode::SUCCESS);
    }
    loop {
        history.reap_lost()?;
        let ended = history.run(&id)?.status.is_final();
        // Read once more after the end: the submitter finishes writing before it records it.
        offset = submit::print_appended(&path, offset)?;
        if ended {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    Ok(ExitCode::SUCCESS)
}

fn download(
    history: &RunHistory,
    run: &str,
    path: &str,
    dest: &std::path::Path,
) -> Result<ExitCode> {
    let id = history.resolve(run)?;
    let rel = inside(path)?;
    let Some(from) = resolve_in(&runs::run_dir(history.home(), &id), &rel) else {
        bail!("run {id} has no {path}");
    };
    let copied = copy_tree(&from, dest)?;
    println!("{copied} files copied from run {id} to {}", dest.display());
    Ok(ExitCode::SUCCESS)
}

/// Copies plain files and directories; symlinks inside are skipped (they may lead out of the
/// run) and existing files are never overwritten.
fn copy_tree(from: &std::path::Path, to: &std::path::Path) -> Result<usize> {
    use anyhow::Context;
    let kind = std::fs::symlink_metadata(from)
        .with_context(|| format!("cannot read {}", from.display()))?
        .file_type();
    if kind.is_symlink() {
        eprintln!("warning: skipped symbolic link {}", from.display());
        return Ok(0);
    }
    if kind.is_dir() {
        std::fs::create_dir_all(to).with_context(|| format!("cannot create {}", to.display()))?;
        let mut n = 0;
        for entry in
            std::fs::read_dir(from).with_context(|| format!("cannot read {}", from.display()))?
        {
            let entry = entry.with_context(|| format!("cannot read {}", from.display()))?;
            n += copy_tree(&entry.path(), &to.join(entry.file_name()))?;
        }
        return Ok(n);
    }
    if to.exists() {
        bail!("{} already exists; download into a new path", to.display());
    }
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    std::fs::copy(from, to)
        .with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))?;
    Ok(1)
}

fn recover(home: &Path, force: bool) -> Result<ExitCode> {
    let done = runs::recover::recover(home, force)?;
    for (from, to) in &done.moved_aside {
        println!("moved {} aside to {}", from.display(), to.display());
    }
    println!(
        "recovered {} run(s), {} metric value(s), {} sweep trial(s) and {} model version(s) into \
         {}",
        done.runs,
        done.metrics,
        done.trials,
        done.models,
        done.db.display()
    );
    if !done.inferred.is_empty() {
        println!(
            "{} run(s) kept no end record (they ended before kiln kept one, or their kiln submit \
             was killed): their status is inferred from their files, their host, command and git \
             state are unknown: {}",
            done.inferred.len(),
            done.inferred.join(", ")
        );
    }
    if done.bad_metric_lines > 0 {
        println!(
            "{} line(s) of metrics.jsonl files are not metric records and were skipped, as when \
             the runs ingested them",
            done.bad_metric_lines
        );
    }
    if !done.unrecorded_models.is_empty() {
        println!(
            "{} model version(s) kept no registration record (registered before kiln kept one): \
             their run and source path are unknown, their files hashed as they are now: {}",
            done.unrecorded_models.len(),
            done.unrecorded_models.join(", ")
        );
    }
    for skipped in &done.skipped {
        println!("skipped {skipped}");
    }
    Ok(ExitCode::SUCCESS)
}
