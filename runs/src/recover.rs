//! `kiln runs recover`: the run history rebuilt from what is on disk, for when `kiln.db` was
//! lost, emptied or damaged. The new history is built in a file of its own and becomes
//! `kiln.db` only once complete; the old file is moved aside, never deleted.
//!
//! A run directory gives its row from the end record [`RunHistory::finish`] leaves in it
//! ([`END_RECORD`]: the row as the run ended, its artifacts and, for a sweep, its trials). A run
//! without one (it ended before kiln kept them, or its `kiln submit` was killed) gives what its
//! `job.json` and its files' times say, its end inferred from its files (`recover/run_files.rs`).
//! Metrics come from `logs/metrics.jsonl`, read as they were ingested. A registry version gives
//! its files and, from the record registration leaves beside it ([`Registration`]), its run and
//! hashes.

use std::collections::HashSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::error::RunsError;
use crate::history::{DB_FILE, RunHistory, db_error};
use crate::home::RunPaths;
use crate::job::check_name;
use crate::registry::{ModelFile, Registration, hash_file};
use crate::{LOCK_FILE, SubmitterLock, now, run_dir};

pub(crate) mod exact_time;
mod run_files;

pub(crate) use run_files::keep_end_record;
use run_files::{modified, read_metrics, read_run};

/// The end record in a run's directory: the run as the history held it when it ended.
pub const END_RECORD: &str = "run.json";

/// What a rebuilt history holds, and what could not be known.
#[derive(Debug, Clone, Default)]
pub struct Recovered {
    /// The old `kiln.db` and its `-wal` and `-shm`, each with where it was moved.
    pub moved_aside: Vec<(PathBuf, PathBuf)>,
    /// The rebuilt history.
    pub db: PathBuf,
    /// Runs recovered.
    pub runs: usize,
    /// Runs without an end record: their end inferred from their files; their host, command
    /// line and git state unknown.
    pub inferred: Vec<String>,
    /// Metric values recovered.
    pub metrics: usize,
    /// Lines of `metrics.jsonl` files that are not metric records, skipped as when ingested.
    pub bad_metric_lines: usize,
    /// Sweep trials linked to their sweeps.
    pub trials: usize,
    /// Model versions recovered.
    pub models: usize,
    /// Model versions (`name:version`) without a registration record: their run and source
    /// path unknown, their files hashed as they are now.
    pub unrecorded_models: Vec<String>,
    /// Directories under `runs/` or `models/` that hold no run or model, and why.
    pub skipped: Vec<String>,
}

/// Rebuilds the run history under `home` from its run and model directories: the new history
/// is built beside the old one, then the old `kiln.db` (damaged, empty or sound) and its
/// `-wal` and `-shm` are moved aside and the new one takes its name. Refused while a run's
/// `kiln submit` still holds its lock: it would go on writing to the old history; and refused
/// over a sound history unless `force` (what only the history knew of runs without an end
/// record, their host, command and git state, would be lost from the live history).
pub fn recover(home: &Path, force: bool) -> Result<Recovered, RunsError> {
    if !home.is_dir() {
        return Err(RunsError::Runs(format!(
            "KILN_HOME {} is not a directory; there is nothing to recover",
            home.display()
        )));
    }
    let run_ids = subdirectories(&home.join("runs"));
    refuse_while_live(home, &run_ids)?;
    let db = home.join(DB_FILE);
    if !force && let Some(runs) = sound(&db) {
        return Err(RunsError::Runs(format!(
            "the run history {} is sound ({runs} run(s)); recovering would rebuild it from disk \
             and lose what only it holds of runs without {END_RECORD}: pass --force to rebuild \
             it anyway (the file is moved aside, not deleted)",
            db.display()
        )));
    }
    let building = with_suffix(&db, ".recovering");
    // What an interrupted recovery left behind.
    for suffix in ["-wal", "-shm", ""] {
        let path = with_suffix(&building, suffix);
        if path.exists() {
            std::fs::remove_file(&path).map_err(|e| RunsError::io(&path, e))?;
        }
    }
    let mut history = RunHistory::open_new(home, &building)?;
    let mut out = Recovered {
        db: db.clone(),
        ..Recovered::default()
    };
    let recovered_runs = recover_runs(&mut history, home, &run_ids, &mut out)?;
    recover_models(&mut history, home, &recovered_runs, &mut out)?;
    // Merges the write-ahead log into the file, so the file alone is the whole history.
    history
        .conn
        .pragma_update(None, "journal_mode", "DELETE")
        .map_err(db_error)?;
    drop(history);
    out.moved_aside = move_aside(&db)?;
    std::fs::rename(&building, &db).map_err(|e| RunsError::io(&db, e))?;
    Ok(out)
}

/// The number of runs in the history at `db`, if it opens, passes SQLite's quick check and
/// holds a runs table; `None` when it is missing, empty or damaged.
fn sound(db: &Path) -> Option<i64> {
    if std::fs::metadata(db).map_or(true, |m| m.len() == 0) {
        return None;
    }
    // Immutable: looking creates no `-shm` and reads no `-wal` beside a damaged file.
    let conn = rusqlite::Connection::open_with_flags(
        crate::history::open::immutable_uri(db),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY
            | rusqlite::OpenFlags::SQLITE_OPEN_URI
            | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .ok()?;
    let check: String = conn
        .query_row("PRAGMA quick_check", [], |r| r.get(0))
        .ok()?;
    if check != "ok" {
        return None;
    }
    conn.query_row("SELECT count(*) FROM runs", [], |r| r.get(0))
        .ok()
}

fn refuse_while_live(home: &Path, run_ids: &[String]) -> Result<(), RunsError> {
    let live: Vec<&str> = run_ids
        .iter()
        .filter(|id| SubmitterLock::is_held(&run_dir(home, id).join(LOCK_FILE)))
        .map(String::as_str)
        .collect();
    if live.is_empty() {
        return Ok(());
    }
    Err(RunsError::Runs(format!(
        "run(s) {} are still going (their kiln submit holds {LOCK_FILE}): recover once they \
         have ended, so that they record how",
        live.join(", ")
    )))
}

/// Moves `kiln.db`, `-wal` and `-shm` to `kiln.db.damaged-<unix seconds>` (and that name's
/// `-wal` and `-shm`, so SQLite opens them together), the `-wal` first: left behind, it would
/// be read into the new history. Returns each move.
fn move_aside(db: &Path) -> Result<Vec<(PathBuf, PathBuf)>, RunsError> {
    let suffixes = ["-wal", "-shm", ""];
    let present: Vec<&str> = suffixes
        .into_iter()
        .filter(|s| with_suffix(db, s).exists())
        .collect();
    if present.is_empty() {
        return Ok(Vec::new());
    }
    let secs = now() as u64;
    let aside = (0..)
        .map(|n| match n {
            0 => with_suffix(db, &format!(".damaged-{secs}")),
            n => with_suffix(db, &format!(".damaged-{secs}.{n}")),
        })
        .find(|a| suffixes.iter().all(|s| !with_suffix(a, s).exists()))
        .expect("a free name");
    let mut moved = Vec::new();
    for suffix in present {
        let (from, to) = (with_suffix(db, suffix), with_suffix(&aside, suffix));
        std::fs::rename(&from, &to).map_err(|e| RunsError::io(&from, e))?;
        moved.push((from, to));
    }
    Ok(moved)
}

/// Recovers every run directory; returns the ids recovered.
fn recover_runs(
    history: &mut RunHistory,
    home: &Path,
    run_ids: &[String],
    out: &mut Recovered,
) -> Result<HashSet<String>, RunsError> {
    let mut found = Vec::new();
    for id in run_ids {
        let paths = RunPaths::new(home, id);
        if !id.chars().all(|c| c.is_ascii_alphanumeric()) {
            out.skipped
                .push(format!("{}: not a run id", paths.dir.display()));
            continue;
        }
        match read_run(&paths) {
            Some((record, inferred)) => {
                if inferred {
                    out.inferred.push(id.clone());
                }
                found.push((id.clone(), record));
            }
            None => out.skipped.push(format!(
                "{}: no {END_RECORD}, job.json, logs or outputs",
                paths.dir.display()
            )),
        }
    }
    // Oldest first, so each experiment is created when its first run was.
    found.sort_by(|a, b| a.1.created.total_cmp(&b.1.created));
    for (id, record) in &found {
        history.insert_run(id, record)?;
        let (metrics, bad_lines) = read_metrics(&RunPaths::new(home, id));
        out.metrics += history.add_metrics(id, &metrics)?;
        out.bad_metric_lines += bad_lines;
        history.set_artifacts(id, &record.artifacts)?;
    }
    let recovered: HashSet<String> = found.iter().map(|(id, _)| id.clone()).collect();
    for (sweep, record) in &found {
        for t in record
            .trials
            .iter()
            .filter(|t| recovered.contains(&t.run_id))
        {
            history.add_trial(sweep, t.trial, &t.run_id, &t.params)?;
            if let Some(note) = &t.note {
                history.set_trial_note(sweep, t.trial, note)?;
            }
            out.trials += 1;
        }
    }
    out.runs = found.len();
    Ok(recovered)
}

/// Recovers every version under `models/<name>/<version>/`; a recorded run that was not
/// recovered is dropped from its version (the history links only runs it holds).
fn recover_models(
    history: &mut RunHistory,
    home: &Path,
    runs: &HashSet<String>,
    out: &mut Recovered,
) -> Result<(), RunsError> {
    let root = home.join("models");
    for name in subdirectories(&root) {
        let models = root.join(&name);
        if let Err(why) = check_name(&name) {
            out.skipped
                .push(format!("{}: model name {why}", models.display()));
            continue;
        }
        for entry in subdirectories(&models) {
            let Some(version) = entry
                .parse::<i64>()
                .ok()
                .filter(|v| *v > 0 && v.to_string() == entry)
            else {
                out.skipped
                    .push(format!("{}: not a version", models.join(&entry).display()));
                continue;
            };
            let mut record = match Registration::read(&models, version) {
                Some(record) => record,
                None => {
                    out.unrecorded_models.push(format!("{name}:{version}"));
                    unrecorded(&models.join(&entry))?
                }
            };
            record.run_id = record.run_id.filter(|id| runs.contains(id));
            history.add_model_version(&name, version, &record)?;
            out.models += 1;
        }
    }
    Ok(())
}

/// A version without a registration record (registered before kiln kept them): its files
/// hashed as they are now, its run and source path unknown.
fn unrecorded(dir: &Path) -> Result<Registration, RunsError> {
    let mut files = Vec::new();
    hash_tree(dir, Path::new(""), &mut files)?;
    Ok(Registration {
        run_id: None,
        source_path: "unknown".to_string(),
        created: modified(dir).unwrap_or_else(now),
        files,
    })
}

/// Every plain file under `root/rel` with its size and SHA-256, paths relative to `root`
/// (symbolic links are left out: a registered model holds plain files).
fn hash_tree(root: &Path, rel: &Path, files: &mut Vec<ModelFile>) -> Result<(), RunsError> {
    let dir = root.join(rel);
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .map_err(|e| RunsError::io(&dir, e))?
        .flatten()
        .collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let rel = rel.join(entry.file_name());
        match entry.file_type() {
            Ok(t) if t.is_dir() => hash_tree(root, &rel, files)?,
            Ok(t) if t.is_file() => {
                let (size, sha256) = hash_file(&root.join(&rel))?;
                files.push(ModelFile {
                    path: rel.to_string_lossy().into_owned(),
                    size,
                    sha256,
                });
            }
            _ => {}
        }
    }
    Ok(())
}

/// The names of `dir`'s subdirectories, sorted, leaving out hidden ones (a registration's
/// staging directory) and names that are not UTF-8 (no run id or model name is).
fn subdirectories(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|name| !name.starts_with('.'))
        .collect();
    names.sort();
    names
}

/// `path` with `suffix` appended to its file name (`kiln.db` + `-wal`).
fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = OsString::from(path.as_os_str());
    name.push(suffix);
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RunStatus;
    use crate::history::NewRun;
    use crate::job::JobSpec;
    use crate::registry::ModelRegistry;
    use crate::submit::artifacts;
    use kiln_engine::model_dir::INFO_FILE;

    fn home(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("kiln-recover-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn write(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    /// A run as `kiln submit` leaves it: a directory with `job.json` and `logs/`.
    fn run_on_disk(history: &mut RunHistory, job: &JobSpec) -> RunPaths {
        let id = history
            .create_run(&NewRun {
                name: &job.name,
                experiment: &job.experiment,
                compute_target: "local",
                job: &serde_json::to_string(job).unwrap(),
            })
            .unwrap();
        let paths = RunPaths::new(history.home(), &id);
        write(
            &paths.dir.join("job.json"),
            &serde_json::to_string_pretty(job).unwrap(),
        );
        write(&paths.output_log(), "hello\n");
        paths
    }

    #[test]
    fn runs_and_models_come_back_exact_where_recorded_and_inferred_where_not() {
        let dir = home("mixed");
        let mut history = RunHistory::open(&dir).unwrap();
        let job = JobSpec::parse(
            "name = \"a\"\nexperiment = \"e\"\n",
            Path::new("/tmp/job.toml"),
        )
        .unwrap();
        // Ended with an end record, two metric values and a line that is not one.
        let kept = run_on_disk(&mut history, &job);
        write(
            &kept.metrics_file(),
            "{\"name\":\"loss\",\"value\":0.5,\"time\":1.0}\nnot json\n{\"name\":\"loss\",\"value\":0.25,\"time\":2.0}\n",
        );
        write(&kept.outputs.join("model/w.bin"), "weights");
        let (metrics, _) = read_metrics(&kept);
        history.add_metrics(&kept.id, &metrics).unwrap();
        history.set_artifacts(&kept.id, &artifacts(&kept)).unwrap();
        history.set_running(&kept.id, "run.sh", None, None).unwrap();
        history
            .finish(&kept.id, RunStatus::Completed, Some(0), None)
            .unwrap();
        assert!(kept.dir.join(END_RECORD).is_file());
        // Without end records: a Slurm job's exit code, a trained model, nothing at all.
        let slurm = run_on_disk(&mut history, &job);
        write(&slurm.logs.join("exit_code"), "3\n");
        let trained = run_on_disk(&mut history, &job);
        write(&trained.outputs.join("model").join(INFO_FILE), "{}");
        let unknown = run_on_disk(&mut history, &job);
        ModelRegistry::new(&mut history)
            .register(&kept.id, "m", "outputs/model")
            .unwrap();
        write(&dir.join("models/old/1/w.bin"), "weights");
        let before_run = serde_json::to_value(history.run(&kept.id).unwrap()).unwrap();
        let before_model = history.models().unwrap()[0].clone();
        drop(history);
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(with_suffix(&dir.join(DB_FILE), suffix));
        }

        let done = recover(&dir, false).unwrap();
        assert!(done.moved_aside.is_empty(), "{:?}", done.moved_aside);
        // Over the sound history it just made, recovery wants --force.
        let e = recover(&dir, false).unwrap_err().to_string();
        assert!(
            e.contains("is sound (4 run(s))") && e.contains("--force"),
            "{e}"
        );
        assert!(dir.join(DB_FILE).is_file());
        assert_eq!((done.runs, done.metrics, done.bad_metric_lines), (4, 2, 1));
        let mut inferred = done.inferred.clone();
        inferred.sort();
        let mut expected = vec![slurm.id.clone(), trained.id.clone(), unknown.id.clone()];
        expected.sort();
        assert_eq!(inferred, expected);
        assert_eq!(
            (done.models, done.unrecorded_models),
            (2, vec!["old:1".to_string()])
        );

        let history = RunHistory::open(&dir).unwrap();
        let after_run = serde_json::to_value(history.run(&kept.id).unwrap()).unwrap();
        assert_eq!(after_run, before_run, "a recorded run comes back as it was");
        let models = history.models().unwrap();
        let m = models.iter().find(|m| m.name == "m").unwrap();
        assert_eq!(
            (&m.run_id, &m.source_path, m.created, m.files, m.size),
            (
                &before_model.run_id,
                &before_model.source_path,
                before_model.created,
                before_model.files,
                before_model.size
            )
        );
        let old = models.iter().find(|m| m.name == "old").unwrap();
        assert_eq!((old.run_id.as_deref(), old.files, old.size), (None, 1, 7));
        let end = |id: &str| {
            let r = history.run(id).unwrap();
            (r.name, r.experiment, r.status, r.exit_code, r.error)
        };
        let (name, experiment, status, code, error) = end(slurm.id.as_str());
        assert_eq!((name.as_str(), experiment.as_str()), ("a", "e"));
        assert_eq!((status, code), (RunStatus::Failed, Some(3)));
        assert!(error.unwrap().contains("exited with code 3"));
        assert_eq!(
            end(trained.id.as_str()).2,
            RunStatus::Completed,
            "kiln's trainer writes its model last"
        );
        let (_, _, status, code, error) = end(unknown.id.as_str());
        assert_eq!((status, code), (RunStatus::Failed, None));
        assert!(error.unwrap().contains("final status unknown"));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_damaged_history_is_moved_aside_with_its_wal_and_never_read() {
        let dir = home("damaged");
        let mut history = RunHistory::open(&dir).unwrap();
        let job = JobSpec::parse("name = \"a\"\n", Path::new("/tmp/job.toml")).unwrap();
        let paths = run_on_disk(&mut history, &job);
        history
            .finish(&paths.id, RunStatus::Failed, Some(1), Some("boom"))
            .unwrap();
        drop(history);
        let garbage = b"not a database at all, but long enough to be read".to_vec();
        std::fs::write(dir.join(DB_FILE), &garbage).unwrap();
        std::fs::write(dir.join("kiln.db-wal"), "a stale log").unwrap();
        let _ = std::fs::remove_file(dir.join("kiln.db-shm"));
        let done = recover(&dir, false).unwrap();
        assert_eq!(done.moved_aside.len(), 2, "{:?}", done.moved_aside);
        let (_, aside) = done
            .moved_aside
            .iter()
            .find(|(from, _)| from.ends_with(DB_FILE))
            .unwrap();
        assert!(
            aside
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("kiln.db.damaged-")
        );
        assert_eq!(std::fs::read(aside).unwrap(), garbage);
        assert!(with_suffix(aside, "-wal").is_file());
        assert!(!dir.join("kiln.db-wal").exists());
        let run = RunHistory::open(&dir).unwrap().run(&paths.id).unwrap();
        assert_eq!(
            (run.status, run.exit_code, run.error.as_deref()),
            (RunStatus::Failed, Some(1), Some("boom"))
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
