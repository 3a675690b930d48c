//! The run history's schema: one migration per version, applied in order inside one
//! transaction; `PRAGMA user_version` records how many have run. Add a migration, never edit one.

/// Migrations in order; `PRAGMA user_version` says how many have run.
pub(crate) const MIGRATIONS: [&str; 3] = [
    r#"
CREATE TABLE experiments (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    created REAL NOT NULL
);
CREATE TABLE runs (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    experiment_id INTEGER NOT NULL REFERENCES experiments(id),
    status TEXT NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    started REAL,
    ended REAL,
    exit_code INTEGER,
    error TEXT,
    host TEXT NOT NULL,
    submitter_pid INTEGER,
    process_group INTEGER,
    scheduler_id TEXT,
    compute_target TEXT NOT NULL,
    command TEXT,
    git_commit TEXT,
    git_dirty INTEGER,
    job TEXT NOT NULL,
    cancel_requested INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE metrics (
    run_id TEXT NOT NULL REFERENCES runs(id),
    rank INTEGER,
    epoch INTEGER,
    step INTEGER,
    split TEXT,
    name TEXT NOT NULL,
    value REAL,
    time REAL NOT NULL
);
CREATE INDEX metrics_by_run ON metrics(run_id, name);
CREATE TABLE artifacts (
    run_id TEXT NOT NULL REFERENCES runs(id),
    path TEXT NOT NULL,
    size INTEGER NOT NULL,
    PRIMARY KEY (run_id, path)
);
CREATE TABLE models (
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    run_id TEXT REFERENCES runs(id),
    source_path TEXT NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (name, version)
);
CREATE TABLE model_files (
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    path TEXT NOT NULL,
    size INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    PRIMARY KEY (name, version, path)
);
"#,
    // 2: sweeps. A sweep is a run (compute_target 'sweep') whose trials are runs of their own;
    // a resumed sweep lists the finished trials it carried over too.
    r#"
CREATE TABLE sweep_trials (
    sweep_id TEXT NOT NULL REFERENCES runs(id),
    trial INTEGER NOT NULL,
    run_id TEXT NOT NULL REFERENCES runs(id),
    params TEXT NOT NULL,
    note TEXT,
    PRIMARY KEY (sweep_id, trial)
);
CREATE INDEX sweep_trials_by_run ON sweep_trials(run_id);
"#,
    // 3: each run's last value of each metric, kept by a trigger, so listing a thousand runs
    // of ten thousand values each reads a thousand short rows, not ten million.
    r#"
CREATE TABLE last_metrics (
    run_id TEXT NOT NULL REFERENCES runs(id),
    split TEXT NOT NULL,
    name TEXT NOT NULL,
    value REAL,
    PRIMARY KEY (run_id, split, name)
);
INSERT INTO last_metrics (run_id, split, name, value)
    SELECT run_id, coalesce(split, ''), name, value FROM metrics WHERE rowid IN
        (SELECT max(rowid) FROM metrics GROUP BY run_id, coalesce(split, ''), name);
CREATE TRIGGER metrics_last AFTER INSERT ON metrics BEGIN
    INSERT INTO last_metrics (run_id, split, name, value)
        VALUES (NEW.run_id, coalesce(NEW.split, ''), NEW.name, NEW.value)
        ON CONFLICT (run_id, split, name) DO UPDATE SET value = excluded.value;
END;
"#,
];
