//! `ModelRegistry`: named, versioned copies of a run's model files under
//! `$KILN_HOME/models/<name>/<version>/`, each file's SHA-256 kept in the run history and
//! checked again when the model is downloaded. Beside each version, `<version>.json` keeps
//! what the history holds of it, for `kiln runs recover`.

use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::RunsError;
use crate::job::check_name;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use serde::{Deserialize, Serialize};

use crate::history::db_error;
use crate::{RunHistory, now};

/// The model registry over a run history.
pub struct ModelRegistry<'a> {
    history: &'a mut RunHistory,
}

impl<'a> ModelRegistry<'a> {
    /// The registry kept in `history`'s `$KILN_HOME`.
    pub fn new(history: &'a mut RunHistory) -> Self {
        Self { history }
    }

    /// Copies `path` (a file or directory inside run `run`) into the registry as the next
    /// version of `name`; returns the version.
    pub fn register(
        &mut self,
        run: &str,
        name: &str,
        path: &str,
    ) -> Result<(i64, Vec<ModelFile>), RunsError> {
        check_name(name).map_err(|why| RunsError::Runs(format!("model name {why}")))?;
        let run = self.history.resolve(run)?;
        let rel = inside(path)?;
        let run_dir = super::run_dir(self.history.home(), &run);
        let source = resolve_in(&run_dir, &rel).ok_or_else(|| {
            RunsError::Runs(format!(
                "run {run} has no {path} (looked in {})",
                run_dir.display()
            ))
        })?;
        let models = self.history.home().join("models").join(name);
        std::fs::create_dir_all(&models).map_err(|e| RunsError::io(&models, e))?;
        let staging = models.join(format!(".staging-{}", super::new_run_id()));
        let mut files = Vec::new();
        let copied = copy_tree(&source, &staging, Path::new(""), &mut files);
        if let Err(e) = copied {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e);
        }
        if files.is_empty() {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(RunsError::Runs(format!(
                "{} holds no files",
                source.display()
            )));
        }
        let placed = |version: i64, record: &Registration| {
            let dest = models.join(version.to_string());
            // The history has no such version, yet a directory is there: never written over
            // (it may hold a registered model the history lost).
            if dest.exists() {
                return Err(RunsError::Runs(format!(
                    "{} already exists but the run history has no {name}:{version}; it is left \
                     as it is (move it aside to register again, or `kiln runs recover` to \
                     rebuild the history from what is on disk)",
                    dest.display()
                )));
            }
            let record_path = record.write(&models, version)?;
            std::fs::rename(&staging, &dest).map_err(|e| {
                let _ = std::fs::remove_file(&record_path);
                RunsError::io(&dest, e)
            })
        };
        let result = self
            .history
            .add_model(name, Some(&run), path, &files, placed);
        if result.is_err() {
            let _ = std::fs::remove_dir_all(&staging);
        }
        Ok((result?, files))
    }

    /// Every registered version.
    pub fn list(&self) -> Result<Vec<ModelRecord>, RunsError> {
        self.history.models()
    }

    /// The stored directory of `NAME[:VERSION]` (the latest version without one), every file
    /// checked against its SHA-256: the model `kiln serve` loads in place. Returns the name,
    /// the version and the directory.
    pub fn locate(&self, spec: &str) -> Result<(String, i64, PathBuf), RunsError> {
        let (name, version, stored, _) = self.verified(spec)?;
        Ok((name, version, stored))
    }

    /// Copies `NAME[:VERSION]` (the latest version without one) into `dest`, checking every
    /// file's SHA-256; returns the version.
    pub fn download(&self, spec: &str, dest: &Path) -> Result<i64, RunsError> {
        let (name, version, stored, files) = self.verified(spec)?;
        for file in &files {
            let to = dest.join(inside(&file.path)?);
            if to.exists() {
                return Err(RunsError::Runs(format!(
                    "{} already exists; download into an empty directory",
                    to.display()
                )));
            }
        }
        for file in &files {
            let rel = inside(&file.path)?;
            let to = dest.join(&rel);
            if let Some(parent) = to.parent() {
                std::fs::create_dir_all(parent).map_err(|e| RunsError::io(parent, e))?;
            }
            let (size, sha) = copy_hashed(&stored.join(&rel), &to)?;
            if sha != file.sha256 || size != file.size {
                let _ = std::fs::remove_file(&to);
                return Err(RunsError::Runs(format!(
                    "model {name}:{version} file {} is corrupt in the registry: sha256 {sha}, \
                     recorded {}",
                    file.path, file.sha256
                )));
            }
        }
        Ok(version)
    }

    /// Resolves `spec` to a registered version and checks every stored file before anything
    /// reads it, so a corrupt model is never served nor half-downloaded.
    fn verified(&self, spec: &str) -> Result<(String, i64, PathBuf, Vec<ModelFile>), RunsError> {
        let (name, version) = match spec.rsplit_once(':') {
            Some((n, v)) => {
                let v = v.parse::<i64>().map_err(|_| {
                    RunsError::Runs(format!("'{spec}': the version after ':' must be a number"))
                })?;
                (n, Some(v))
            }
            None => (spec, None),
        };
        check_name(name).map_err(|why| RunsError::Runs(format!("model name {why}")))?;
        let Some((version, files)) = self.history.model_files(name, version)? else {
            return Err(RunsError::Runs(match version {
                Some(v) => format!("no model {name} version {v} (see `kiln models list`)"),
                None => format!("no model named {name} (see `kiln models list`)"),
            }));
        };
        let stored = self
            .history
            .home()
            .join("models")
            .join(name)
            .join(version.to_string());
        for file in &files {
            let rel = inside(&file.path)?;
            let (size, sha) = hash_file(&stored.join(&rel))?;
            if sha != file.sha256 || size != file.size {
                return Err(RunsError::Runs(format!(
                    "model {name}:{version} file {} is corrupt in the registry: sha256 {sha}, \
                     recorded {}",
                    file.path, file.sha256
                )));
            }
        }
        Ok((name.to_string(), version, stored, files))
    }
}

/// `path` as a relative path that stays inside its root (no `..`, no absolute paths).
pub fn inside(path: &str) -> Result<PathBuf, RunsError> {
    let p = Path::new(path);
    let ok = !path.is_empty()
        && p.components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
    if !ok {
        return Err(RunsError::Runs(format!(
            "'{path}' must be a relative path inside the run (no '..', not absolute)"
        )));
    }
    Ok(p.components()
        .filter(|c| matches!(c, Component::Normal(_)))
        .collect())
}

/// `root/rel` with symlinks resolved, if it exists and stays inside `root`.
pub fn resolve_in(root: &Path, rel: &Path) -> Option<PathBuf> {
    let root = root.canonicalize().ok()?;
    let path = root.join(rel).canonicalize().ok()?;
    path.starts_with(&root).then_some(path)
}

/// Copies a file or directory tree, recording each file's path, size and SHA-256; symlinks
/// inside it are refused (they could lead out of the run, or round in a loop).
fn copy_tree(
    from: &Path,
    to: &Path,
    rel: &Path,
    files: &mut Vec<ModelFile>,
) -> Result<(), RunsError> {
    let link = std::fs::symlink_metadata(from).map_err(|e| RunsError::io(from, e))?;
    if link.file_type().is_symlink() {
        return Err(RunsError::Runs(format!(
            "{} is a symbolic link; a model holds plain files",
            from.display()
        )));
    }
    let meta = std::fs::metadata(from).map_err(|e| RunsError::io(from, e))?;
    if meta.is_dir() {
        std::fs::create_dir_all(to.join(rel)).map_err(|e| RunsError::io(to, e))?;
        let mut entries: Vec<_> = std::fs::read_dir(from)
            .map_err(|e| RunsError::io(from, e))?
            .flatten()
            .collect();
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            copy_tree(&entry.path(), to, &rel.join(entry.file_name()), files)?;
        }
        return Ok(());
    }
    let rel = if rel.as_os_str().is_empty() {
        PathBuf::from(from.file_name().unwrap_or_default())
    } else {
        rel.to_path_buf()
    };
    let dest = to.join(&rel);
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent).map_err(|e| RunsError::io(parent, e))?;
    }
    let (size, sha256) = copy_hashed(from, &dest)?;
    files.push(ModelFile {
        path: rel.to_string_lossy().into_owned(),
        size,
        sha256,
    });
    Ok(())
}

/// The size and lowercase hex SHA-256 of a file.
pub(crate) fn hash_file(path: &Path) -> Result<(u64, String), RunsError> {
    let mut input = std::fs::File::open(path).map_err(|e| RunsError::io(path, e))?;
    let mut hasher = Sha256::new();
    let size = std::io::copy(&mut input, &mut hasher).map_err(|e| RunsError::io(path, e))?;
    Ok((size, hex(&hasher.finalize())))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Copies one file, hashing as it goes; returns its size and lowercase hex SHA-256.
pub fn copy_hashed(from: &Path, to: &Path) -> Result<(u64, String), RunsError> {
    let mut input = std::fs::File::open(from).map_err(|e| RunsError::io(from, e))?;
    let mut output = std::fs::File::create(to).map_err(|e| RunsError::io(to, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = input.read(&mut buf).map_err(|e| RunsError::io(from, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        output
            .write_all(&buf[..n])
            .map_err(|e| RunsError::io(to, e))?;
        size += n as u64;
    }
    output.sync_all().map_err(|e| RunsError::io(to, e))?;
    Ok((size, hex(&hasher.finalize())))
}

/// One file of a registered model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelFile {
    /// Path inside the model, `/`-separated.
    pub path: String,
    /// Bytes.
    pub size: u64,
    /// Lowercase hex SHA-256.
    pub sha256: String,
}

/// One registered model version.
#[derive(Debug, Clone, Serialize)]
pub struct ModelRecord {
    /// The model's name.
    pub name: String,
    /// Its version, from 1.
    pub version: i64,
    /// The run it came from.
    pub run_id: Option<String>,
    /// The path inside the run it was copied from.
    pub source_path: String,
    /// Seconds since the Unix epoch.
    pub created: f64,
    /// How many files.
    pub files: usize,
    /// Bytes in all.
    pub size: u64,
}

/// What the history holds of one registered version, kept beside its directory as
/// `models/<name>/<version>.json` (a sibling, so it never mixes with the model's own files).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Registration {
    /// The run it came from.
    pub run_id: Option<String>,
    /// The path inside the run it was copied from.
    pub source_path: String,
    /// When it was registered, in seconds since the Unix epoch.
    #[serde(with = "crate::recover::exact_time")]
    pub created: f64,
    /// Its files, with the SHA-256 each had when registered.
    pub files: Vec<ModelFile>,
}

impl Registration {
    /// Where version `version`'s record is, in `models` (`models/<name>`).
    pub(crate) fn path(models: &Path, version: i64) -> PathBuf {
        models.join(format!("{version}.json"))
    }

    /// Writes the record (whole, then renamed into place); returns its path.
    fn write(&self, models: &Path, version: i64) -> Result<PathBuf, RunsError> {
        let path = Self::path(models, version);
        let partial = models.join(format!(".{version}.json.partial"));
        let json = serde_json::to_string_pretty(self).expect("a registration serialises");
        std::fs::write(&partial, json).map_err(|e| RunsError::io(&partial, e))?;
        std::fs::rename(&partial, &path).map_err(|e| RunsError::io(&path, e))?;
        Ok(path)
    }

    /// Version `version`'s record, if it has a readable one.
    pub(crate) fn read(models: &Path, version: i64) -> Option<Self> {
        let text = std::fs::read_to_string(Self::path(models, version)).ok()?;
        serde_json::from_str(&text).ok()
    }
}

/// Records version `version` of model `name` with its files, inside the caller's transaction.
fn insert_version(
    tx: &Connection,
    name: &str,
    version: i64,
    record: &Registration,
) -> Result<(), RunsError> {
    tx.execute(
        "INSERT INTO models (name, version, run_id, source_path, created)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            name,
            version,
            record.run_id,
            record.source_path,
            record.created
        ],
    )
    .map_err(db_error)?;
    for f in &record.files {
        tx.execute(
            "INSERT INTO model_files (name, version, path, size, sha256)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![name, version, f.path, f.size as i64, f.sha256],
        )
        .map_err(db_error)?;
    }
    Ok(())
}

/// The registry's tables in the run history.
impl RunHistory {
    /// The next version number of model `name`, and records it with its files, in one
    /// transaction (so two registrations never get the same version). `place(version, record)`
    /// puts the files where that version lives before the transaction commits.
    pub fn add_model(
        &mut self,
        name: &str,
        run_id: Option<&str>,
        source_path: &str,
        files: &[ModelFile],
        place: impl FnOnce(i64, &Registration) -> Result<(), RunsError>,
    ) -> Result<i64, RunsError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db_error)?;
        let version: i64 = tx
            .query_row(
                "SELECT coalesce(max(version), 0) + 1 FROM models WHERE name = ?1",
                [name],
                |r| r.get(0),
            )
            .map_err(db_error)?;
        let record = Registration {
            run_id: run_id.map(str::to_string),
            source_path: source_path.to_string(),
            created: now(),
            files: files.to_vec(),
        };
        insert_version(&tx, name, version, &record)?;
        place(version, &record)?;
        tx.commit().map_err(db_error)?;
        Ok(version)
    }

    /// Records version `version` of model `name` as `record` says, its files already in place
    /// (`kiln runs recover`).
    pub(crate) fn add_model_version(
        &mut self,
        name: &str,
        version: i64,
        record: &Registration,
    ) -> Result<(), RunsError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db_error)?;
        insert_version(&tx, name, version, record)?;
        tx.commit().map_err(db_error)
    }

    /// Registered models, newest version of each name first.
    pub fn models(&self) -> Result<Vec<ModelRecord>, RunsError> {
        let mut q = self
            .conn
            .prepare(
                "SELECT m.name, m.version, m.run_id, m.source_path, m.created,
                    count(f.path), coalesce(sum(f.size), 0)
                 FROM models m LEFT JOIN model_files f ON f.name = m.name AND f.version = m.version
                 GROUP BY m.name, m.version ORDER BY m.name, m.version DESC",
            )
            .map_err(db_error)?;
        let rows = q
            .query_map([], |r| {
                Ok(ModelRecord {
                    name: r.get(0)?,
                    version: r.get(1)?,
                    run_id: r.get(2)?,
                    source_path: r.get(3)?,
                    created: r.get(4)?,
                    files: r.get::<_, i64>(5)? as usize,
                    size: r.get::<_, i64>(6)? as u64,
                })
            })
            .map_err(db_error)?;
        rows.collect::<Result<_, _>>().map_err(db_error)
    }

    /// The files of one model version (the latest when `version` is `None`).
    pub fn model_files(
        &self,
        name: &str,
        version: Option<i64>,
    ) -> Result<Option<(i64, Vec<ModelFile>)>, RunsError> {
        let version: Option<i64> = match version {
            Some(v) => self
                .conn
                .query_row(
                    "SELECT version FROM models WHERE name = ?1 AND version = ?2",
                    params![name, v],
                    |r| r.get(0),
                )
                .optional()
                .map_err(db_error)?,
            None => self
                .conn
                .query_row(
                    "SELECT max(version) FROM models WHERE name = ?1",
                    [name],
                    |r| r.get(0),
                )
                .map_err(db_error)?,
        };
        let Some(version) = version else {
            return Ok(None);
        };
        let mut q = self
            .conn
            .prepare(
                "SELECT path, size, sha256 FROM model_files WHERE name = ?1 AND version = ?2
                 ORDER BY path",
            )
            .map_err(db_error)?;
        let files = q
            .query_map(params![name, version], |r| {
                Ok(ModelFile {
                    path: r.get(0)?,
                    size: r.get::<_, i64>(1)? as u64,
                    sha256: r.get(2)?,
                })
            })
            .map_err(db_error)?
            .collect::<Result<_, _>>()
            .map_err(db_error)?;
        Ok(Some((version, files)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_inside() {
        assert_eq!(
            inside("outputs/model").unwrap(),
            PathBuf::from("outputs/model")
        );
        assert_eq!(inside("./outputs").unwrap(), PathBuf::from("outputs"));
        for bad in ["../x", "/etc/passwd", "outputs/../../x", ""] {
            assert!(inside(bad).is_err(), "{bad}");
        }
    }
}
