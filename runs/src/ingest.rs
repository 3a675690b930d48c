//! Metrics from any program: lines appended to `$KILN_LOGS/metrics.jsonl` (the trainer's
//! records, or `kiln log-metric`'s) read as they arrive, whole lines only.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use kiln_engine::dist::WorldInfo;
use kiln_engine::env::{self, RunContext};

use crate::error::RunsError;
use crate::history::Metric;

/// Reads complete lines appended to a metrics file since the last poll.
pub struct MetricsTail {
    path: PathBuf,
    offset: u64,
    partial: Vec<u8>,
    bad_lines: usize,
}

impl MetricsTail {
    /// A reader of `path` from its start (the file need not exist yet).
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            offset: 0,
            partial: Vec::new(),
            bad_lines: 0,
        }
    }

    /// Lines read so far that were not metric records (skipped).
    pub fn bad_lines(&self) -> usize {
        self.bad_lines
    }

    /// The records in the complete lines appended since the last poll.
    pub fn poll(&mut self) -> Vec<Metric> {
        let Ok(mut file) = File::open(&self.path) else {
            return Vec::new();
        };
        if file.seek(SeekFrom::Start(self.offset)).is_err() {
            return Vec::new();
        }
        let mut bytes = std::mem::take(&mut self.partial);
        let before = bytes.len();
        if file.read_to_end(&mut bytes).is_err() {
            self.partial = bytes;
            return Vec::new();
        }
        self.offset += (bytes.len() - before) as u64;
        let complete = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        self.partial = bytes.split_off(complete);
        self.parse(&bytes)
    }

    /// A last line without its newline still counts once the program has ended.
    pub fn finish(&mut self) -> Vec<Metric> {
        let rest = std::mem::take(&mut self.partial);
        self.parse(&rest)
    }

    fn parse(&mut self, bytes: &[u8]) -> Vec<Metric> {
        let mut out = Vec::new();
        for line in bytes.split(|b| *b == b'\n') {
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            match serde_json::from_slice::<Metric>(line) {
                Ok(m) => out.push(m),
                Err(_) => self.bad_lines += 1,
            }
        }
        out
    }
}

/// Appends one metric to `$KILN_LOGS/metrics.jsonl` in a single write, so concurrent writers
/// never interleave within a line (`kiln log-metric`).
pub fn log_metric(name: &str, value: f64, step: Option<i64>) -> Result<PathBuf, RunsError> {
    let logs = RunContext::from_env().logs.ok_or_else(|| {
        RunsError::Runs(format!(
            "{} is not set: kiln log-metric records into a run started by kiln submit",
            env::LOGS
        ))
    })?;
    if name.is_empty() {
        return Err(RunsError::Runs("a metric needs a name".into()));
    }
    let path = logs.join("metrics.jsonl");
    let metric = Metric {
        rank: WorldInfo::from_env()
            .ok()
            .filter(|w| w.source != "none")
            .map(|w| w.rank as i64),
        epoch: None,
        step,
        split: None,
        name: name.to_string(),
        value: (!value.is_nan()).then_some(value),
        time: Some(super::now()),
    };
    append_metric(&path, &metric)?;
    Ok(path)
}

/// Appends `metric` to the metrics file at `path` as one line, in a single write.
pub(crate) fn append_metric(path: &Path, metric: &Metric) -> Result<(), RunsError> {
    let mut line = serde_json::to_string(metric).expect("a metric serialises");
    line.push('\n');
    let mut file = File::options()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| RunsError::io(path, e))?;
    file.write_all(line.as_bytes())
        .map_err(|e| RunsError::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_tail_keeps_partial_lines_for_later() {
        let dir = std::env::temp_dir().join(format!("kiln-tail-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("metrics.jsonl");
        std::fs::write(&path, "{\"name\":\"a\",\"value\":1}\n{\"name\":\"b\",").unwrap();
        let mut tail = MetricsTail::new(path.clone());
        let first = tail.poll();
        assert_eq!(first.len(), 1);
        let mut f = File::options().append(true).open(&path).unwrap();
        f.write_all(b"\"value\":2,\"step\":7}\nnot json\n{\"name\":\"c\",\"value\":null}")
            .unwrap();
        let second = tail.poll();
        assert_eq!(second.len(), 1);
        assert_eq!((second[0].name.as_str(), second[0].step), ("b", Some(7)));
        assert_eq!(tail.bad_lines(), 1);
        let last = tail.finish();
        assert_eq!(last[0].name, "c");
        assert_eq!(last[0].value, None);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
