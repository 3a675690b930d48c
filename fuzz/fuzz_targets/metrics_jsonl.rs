//! metrics.jsonl ingestion as `kiln submit` and `kiln runs recover` do it: the file read line
//! by line (bad lines counted and skipped), the records stored in the run history, and read
//! back as they were written.
#![no_main]

use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

use kiln_runs::history::NewRun;
use kiln_runs::ingest::MetricsTail;
use kiln_runs::{Metric, RunHistory};
use libfuzzer_sys::fuzz_target;

/// Runs a history holds before the next one is started, so a long run does not grow it without
/// bound in the scratch folder (which is in memory).
const RUNS_PER_HISTORY: usize = 10_000;

/// The history the records go to: the `generation`th, holding `runs` runs.
struct Store {
    history: RunHistory,
    generation: usize,
    runs: usize,
}

fn home(generation: usize) -> PathBuf {
    kiln_fuzz::scratch().join(format!("home-{generation}"))
}

fn store() -> &'static Mutex<Store> {
    static STORE: OnceLock<Mutex<Store>> = OnceLock::new();
    STORE.get_or_init(|| {
        Mutex::new(Store {
            history: RunHistory::open(&home(0)).expect("a run history"),
            generation: 0,
            runs: 0,
        })
    })
}

fuzz_target!(|data: &[u8]| {
    let path = kiln_fuzz::scratch_file("metrics.jsonl", data);
    let mut tail = MetricsTail::new(path);
    let mut metrics = tail.poll();
    metrics.extend(tail.finish());
    let mut store = store().lock().unwrap();
    if store.runs == RUNS_PER_HISTORY {
        let old = home(store.generation);
        store.generation += 1;
        // The old history is closed (dropped) before its folder is removed.
        store.history = RunHistory::open(&home(store.generation)).expect("a run history");
        store.runs = 0;
        std::fs::remove_dir_all(old).expect("the old history removed");
    }
    store.runs += 1;
    let history = &mut store.history;
    let id = history
        .create_run(&NewRun {
            name: "fuzz",
            experiment: "fuzz",
            compute_target: "local",
            job: "{}",
        })
        .unwrap();
    let added = history
        .add_metrics(&id, &metrics)
        .expect("parsed metrics are stored");
    assert_eq!(added, metrics.len());
    let stored = history.metrics(&id).unwrap();
    assert_eq!(stored.len(), metrics.len());
    for (read, written) in stored.iter().zip(&metrics) {
        assert_eq!(read.name, written.name);
        assert_eq!(read.split, written.split);
        assert_eq!(
            (read.rank, read.epoch, read.step),
            (written.rank, written.epoch, written.step)
        );
        assert!(
            same_value(read, written),
            "{read:?} was stored as {written:?}"
        );
    }
});

fn same_value(read: &Metric, written: &Metric) -> bool {
    match (read.value, written.value) {
        (None, None) => true,
        (None, Some(w)) => w.is_nan(),
        (Some(r), Some(w)) => r == w || (r.is_nan() && w.is_nan()),
        (Some(_), None) => false,
    }
}
