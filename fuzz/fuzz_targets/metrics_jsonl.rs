//! metrics.jsonl ingestion as `kiln submit` and `kiln runs recover` do it: the file read line
//! by line (bad lines counted and skipped), the records stored in the run history, and read
//! back as they were written.
#![no_main]

use std::sync::Mutex;
use std::sync::OnceLock;

use kiln_runs::history::NewRun;
use kiln_runs::ingest::MetricsTail;
use kiln_runs::{Metric, RunHistory};
use libfuzzer_sys::fuzz_target;

fn history() -> &'static Mutex<RunHistory> {
    static HISTORY: OnceLock<Mutex<RunHistory>> = OnceLock::new();
    HISTORY.get_or_init(|| {
        let home = kiln_fuzz::scratch().join("home");
        Mutex::new(RunHistory::open(&home).expect("a run history"))
    })
}

fuzz_target!(|data: &[u8]| {
    let path = kiln_fuzz::scratch_file("metrics.jsonl", data);
    let mut tail = MetricsTail::new(path);
    let mut metrics = tail.poll();
    metrics.extend(tail.finish());
    let mut history = history().lock().unwrap();
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
