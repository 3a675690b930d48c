//! Opening the run history: read-write (created and migrated on first use), read-only (a
//! `$KILN_HOME` this process cannot write: nothing migrated, no lost run marked), or new at a
//! given path for `kiln runs recover` to fill.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, ErrorCode, OpenFlags, TransactionBehavior};

use super::{RunHistory, db_error};
use crate::error::RunsError;
use crate::schema::MIGRATIONS;

/// The run history's file under `$KILN_HOME`.
pub const DB_FILE: &str = "kiln.db";

/// A history made anew (no file, or an empty one) where run or model directories already
/// exist would read as "no runs yet" while they are on disk, and hand out version numbers
/// the registry already has: refused, naming what is there and the way out.
fn refuse_a_fresh_history_over(home: &Path, db: &Path) -> Result<(), RunsError> {
    let count = |dir: &Path| {
        std::fs::read_dir(dir).map_or(0, |entries| {
            entries
                .flatten()
                .filter(|e| e.path().is_dir() && !e.file_name().to_string_lossy().starts_with('.'))
                .count()
        })
    };
    let (runs, models) = (count(&home.join("runs")), count(&home.join("models")));
    if runs + models == 0 {
        return Ok(());
    }
    Err(RunsError::Runs(format!(
        "the run history {} is missing or empty, but {} holds {runs} run(s) and {models} \
         model(s): the history was lost; kiln will not start a new one over them (runs would \
         be forgotten and registered versions written over). `kiln runs recover` rebuilds it \
         from them",
        db.display(),
        home.display()
    )))
}

/// The error for a database SQLite cannot read.
fn damaged(db: &Path, e: &dyn std::fmt::Display) -> RunsError {
    RunsError::Runs(format!(
        "the run history {} cannot be read ({e}); the runs and models on disk are untouched: \
         `kiln runs recover` moves the file aside and rebuilds the history from them",
        db.display()
    ))
}

/// No file, or an empty one: what SQLite would start a new database in.
fn is_fresh(db: &Path) -> bool {
    !db.exists() || std::fs::metadata(db).is_ok_and(|m| m.len() == 0)
}

/// Why this process cannot write `path`, when it cannot: access(2) answers for the mode bits,
/// the owner and a read-only mount alike (and lets root write where root can). A path that
/// does not exist is no obstacle.
fn cannot_write(path: &Path) -> Option<std::io::Error> {
    let c_path = CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: access(2) on a NUL-terminated path; it reads nothing else.
    if unsafe { libc::access(c_path.as_ptr(), libc::W_OK) } == 0 {
        return None;
    }
    let e = std::io::Error::last_os_error();
    (e.kind() != std::io::ErrorKind::NotFound).then_some(e)
}

/// Why the history under `home` cannot be written here (the directory, where SQLite keeps its
/// `-wal` and `-shm` files, or the database itself), when it cannot.
fn read_only_because(home: &Path) -> Option<String> {
    let db = home.join(DB_FILE);
    cannot_write(home)
        .map(|e| format!("{}: {e}", home.display()))
        .or_else(|| cannot_write(&db).map(|e| format!("{}: {e}", db.display())))
}

fn schema_version(conn: &Connection) -> rusqlite::Result<usize> {
    conn.query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))
        .map(|v| v as usize)
}

fn too_new(db: &Path, version: usize) -> RunsError {
    RunsError::Runs(format!(
        "the run history {} has schema version {version}; this kiln knows up to {}",
        db.display(),
        MIGRATIONS.len()
    ))
}

impl RunHistory {
    /// Opens (creating and migrating) the database under `home`. A missing or empty database
    /// where runs or models are on disk is refused, as is a `home` this process cannot write
    /// (reading commands use [`RunHistory::open_to_read`]); both errors name the way out.
    pub fn open(home: &Path) -> Result<Self, RunsError> {
        if home.exists() && !home.is_dir() {
            return Err(RunsError::Runs(format!(
                "KILN_HOME {} is a file; expected a directory for the run history (set \
                 KILN_HOME to another path)",
                home.display()
            )));
        }
        std::fs::create_dir_all(home).map_err(|e| RunsError::io(home, e))?;
        let path = home.join(DB_FILE);
        if is_fresh(&path) {
            refuse_a_fresh_history_over(home, &path)?;
        }
        if let Some(why) = read_only_because(home) {
            return Err(RunsError::Runs(format!(
                "the run history {} cannot be written ({why}): `kiln runs list`, `show`, \
                 `metrics`, `logs` and `kiln models list` read it as it is; this command needs \
                 a KILN_HOME it can write",
                path.display()
            )));
        }
        Self::open_read_write(home, &path)
    }

    /// A new, empty history at `path` (which must not exist yet) over the runs and models in
    /// `home`, for `kiln runs recover` to fill before it becomes `kiln.db`. The refusal to
    /// start a history over runs on disk is what recovery answers, so it is not made here.
    pub(crate) fn open_new(home: &Path, path: &Path) -> Result<Self, RunsError> {
        if path.exists() {
            return Err(RunsError::Runs(format!(
                "{} already exists; a new history starts in a new file",
                path.display()
            )));
        }
        if let Some(why) = read_only_because(home) {
            return Err(RunsError::Runs(format!(
                "{} cannot be written ({why}): a new run history cannot be made there",
                home.display()
            )));
        }
        Self::open_read_write(home, path)
    }

    /// Opens the history under `home` to read it: as [`RunHistory::open`] does where this
    /// process can write `home` and its `kiln.db`, and read-only
    /// ([`RunHistory::open_read_only`]) where it cannot.
    pub fn open_to_read(home: &Path) -> Result<Self, RunsError> {
        if home.is_dir() && read_only_because(home).is_some() {
            Self::open_read_only(home)
        } else {
            Self::open(home)
        }
    }

    /// Opens the history under `home` without writing anything: no migration, no journal
    /// mode change, and no lost run marked ([`RunHistory::reap_lost`] does nothing), for a
    /// `$KILN_HOME` on a read-only mount or owned by someone else. A history older than this
    /// kiln (it would need migrating) is refused, naming the file, as is a missing one while
    /// runs are on disk.
    pub fn open_read_only(home: &Path) -> Result<Self, RunsError> {
        let home = std::path::absolute(home).map_err(|e| RunsError::io(home, e))?;
        let path = home.join(DB_FILE);
        if is_fresh(&path) {
            refuse_a_fresh_history_over(&home, &path)?;
            return Err(RunsError::Runs(format!(
                "there is no run history at {} yet, and none can be started where it cannot be \
                 written",
                path.display()
            )));
        }
        let (conn, version) = read_only_connection(&path)?;
        if version > MIGRATIONS.len() {
            return Err(too_new(&path, version));
        }
        if version < MIGRATIONS.len() {
            return Err(RunsError::Runs(format!(
                "the run history {} has schema version {version} and this kiln reads version \
                 {}; it cannot be migrated where it cannot be written: run any kiln command once \
                 with write access to it, or read it with the kiln that wrote it",
                path.display(),
                MIGRATIONS.len()
            )));
        }
        Ok(Self {
            conn,
            home,
            read_only: true,
        })
    }

    /// Whether this history was opened read-only.
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    fn open_read_write(home: &Path, path: &Path) -> Result<Self, RunsError> {
        let mut conn = Connection::open(path).map_err(|e| damaged(path, &e))?;
        conn.busy_timeout(Duration::from_secs(60))
            .map_err(db_error)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(|e| damaged(path, &e))?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(db_error)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(db_error)?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db_error)?;
        let version = schema_version(&tx).map_err(db_error)?;
        if version > MIGRATIONS.len() {
            return Err(too_new(path, version));
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
            tx.execute_batch(sql).map_err(db_error)?;
            tx.pragma_update(None, "user_version", (i + 1) as i64)
                .map_err(db_error)?;
        }
        tx.commit().map_err(db_error)?;
        Ok(Self {
            conn,
            home: home.to_path_buf(),
            read_only: false,
        })
    }
}

/// A read-only connection to `db` and its schema version. A WAL database is read through its
/// `-shm` index, which SQLite must be able to create beside it; where the directory refuses
/// that, the file is opened as immutable instead (then what a `-wal` left unmerged by a killed
/// writer holds is not seen: reading it needs a writable directory).
fn read_only_connection(db: &Path) -> Result<(Connection, usize), RunsError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    match open_and_read_version(db, flags) {
        Ok(opened) => Ok(opened),
        Err(e)
            if matches!(
                e.sqlite_error_code(),
                Some(ErrorCode::CannotOpen | ErrorCode::ReadOnly)
            ) =>
        {
            let uri = immutable_uri(db);
            open_and_read_version(Path::new(&uri), flags | OpenFlags::SQLITE_OPEN_URI)
                .map_err(|_| damaged(db, &e))
        }
        Err(e) => Err(damaged(db, &e)),
    }
}

/// SQLite opens lazily: reading the schema version is what shows the file can be read.
fn open_and_read_version(target: &Path, flags: OpenFlags) -> rusqlite::Result<(Connection, usize)> {
    let conn = Connection::open_with_flags(target, flags)?;
    conn.busy_timeout(Duration::from_secs(60))?;
    let version = schema_version(&conn)?;
    Ok((conn, version))
}

/// `file:PATH?immutable=1`, the path percent-encoded as SQLite's URIs want (`?`, `#` and `%`
/// in a file name would otherwise end or escape it).
pub(crate) fn immutable_uri(db: &Path) -> String {
    let mut uri = String::from("file:");
    for &b in db.as_os_str().as_bytes() {
        if b.is_ascii_alphanumeric() || b"/-._~".contains(&b) {
            uri.push(b as char);
        } else {
            uri.push_str(&format!("%{b:02X}"));
        }
    }
    uri.push_str("?immutable=1");
    uri
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::NewRun;
    use crate::{RunStatus, SubmitterLock};
    use std::path::PathBuf;

    fn home(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("kiln-open-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    /// A history under `dir` with one run marked Running by a submitter long gone.
    fn one_lost_run(dir: &Path) -> String {
        let mut history = RunHistory::open(dir).unwrap();
        let id = history
            .create_run(&NewRun {
                name: "n",
                experiment: "e",
                compute_target: "local",
                job: "{}",
            })
            .unwrap();
        history.set_status(&id, RunStatus::Running).unwrap();
        history
            .conn
            .execute("UPDATE runs SET updated = 0 WHERE id = ?1", [&id])
            .unwrap();
        id
    }

    #[test]
    fn migrates_once_and_refuses_a_newer_schema() {
        let dir = home("schema");
        let history = RunHistory::open(&dir).unwrap();
        assert_eq!(history.schema_version().unwrap(), MIGRATIONS.len());
        drop(history);
        assert_eq!(
            RunHistory::open(&dir).unwrap().schema_version().unwrap(),
            MIGRATIONS.len(),
            "reopening runs no migration twice"
        );
        let conn = Connection::open(dir.join(DB_FILE)).unwrap();
        conn.pragma_update(None, "user_version", 99i64).unwrap();
        drop(conn);
        let e = RunHistory::open(&dir).err().unwrap().to_string();
        assert!(e.contains("schema version 99"), "{e}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_read_only_open_reads_and_writes_nothing() {
        let dir = home("read-only");
        let id = one_lost_run(&dir);
        let db_before = std::fs::read(dir.join(DB_FILE)).unwrap();
        let history = RunHistory::open_read_only(&dir).unwrap();
        assert!(history.is_read_only());
        assert_eq!(history.runs(None).unwrap().len(), 1);
        assert!(
            history.reap_lost().unwrap().is_empty(),
            "a read-only history marks no run lost"
        );
        assert_eq!(history.run(&id).unwrap().status, RunStatus::Running);
        let e = history.request_cancel(&id).err().unwrap().to_string();
        assert!(e.contains("readonly"), "{e}");
        drop(history);
        assert_eq!(std::fs::read(dir.join(DB_FILE)).unwrap(), db_before);
        // No lock is held for the run: the read-write open marks it lost.
        assert!(!SubmitterLock::is_held(
            &crate::run_dir(&dir, &id).join(crate::LOCK_FILE)
        ));
        assert_eq!(RunHistory::open(&dir).unwrap().reap_lost().unwrap(), [id]);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn an_immutable_open_reads_a_path_that_needs_escaping() {
        // The fallback for a directory SQLite cannot create `-shm` in; root writes anywhere,
        // so the test opens it directly.
        let dir = home("immutable ?#%");
        let id = one_lost_run(&dir);
        let uri = immutable_uri(&dir.join(DB_FILE));
        assert!(
            uri.ends_with("immutable%20%3F%23%25/kiln.db?immutable=1"),
            "{uri}"
        );
        let conn = Connection::open_with_flags(
            &uri,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI,
        )
        .unwrap();
        let found: String = conn
            .query_row("SELECT id FROM runs", [], |r| r.get(0))
            .unwrap();
        assert_eq!(found, id);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_read_only_open_refuses_what_it_cannot_read_as_it_is() {
        let dir = home("read-only-refusals");
        one_lost_run(&dir);
        let db = dir.join(DB_FILE);
        Connection::open(&db)
            .unwrap()
            .pragma_update(None, "user_version", 2i64)
            .unwrap();
        let e = RunHistory::open_read_only(&dir).err().unwrap().to_string();
        assert!(
            e.contains("schema version 2") && e.contains(&db.display().to_string()),
            "{e}"
        );
        std::fs::write(&db, "not a database at all, but long enough to be read").unwrap();
        for suffix in ["-wal", "-shm"] {
            let _ = std::fs::remove_file(dir.join(format!("{DB_FILE}{suffix}")));
        }
        let e = RunHistory::open_read_only(&dir).err().unwrap().to_string();
        assert!(
            e.contains("cannot be read") && e.contains("kiln runs recover"),
            "{e}"
        );
        std::fs::remove_file(&db).unwrap();
        std::fs::create_dir_all(dir.join("runs/abcdefghij")).unwrap();
        let e = RunHistory::open_read_only(&dir).err().unwrap().to_string();
        assert!(
            e.contains("missing or empty") && e.contains("kiln runs recover"),
            "{e}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
