//! Metrics: top-k accuracy, and `logs/metrics.jsonl`, one JSON object a line with `run`,
//! `rank`, `epoch`, `step`, `split`, `name`, `value` and `time` (seconds since the Unix epoch).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::EngineError;

/// How many of `labels` are among the `k` largest logits of their row (`logits` is
/// `[n, classes]` row-major). Ties go to the lower class index, as `torch.topk` on CPU.
pub fn correct_top_k(logits: &[f32], labels: &[i64], classes: usize, k: usize) -> usize {
    labels
        .iter()
        .enumerate()
        .filter(|&(i, &label)| {
            let row = &logits[i * classes..(i + 1) * classes];
            let target = row[label as usize];
            // NaN compares false with everything, which would rank a NaN target first.
            if row.iter().any(|v| v.is_nan()) {
                return false;
            }
            let above = row
                .iter()
                .enumerate()
                .filter(|&(j, &v)| v > target || (v == target && (j as i64) < label))
                .count();
            above < k
        })
        .count()
}

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MetricRecord {
    /// Run id (`KILN_RUN_ID`, or `local`).
    pub run: String,
    /// Rank that logged it.
    pub rank: usize,
    /// Epoch, from 1.
    pub epoch: usize,
    /// Global optimizer step.
    pub step: usize,
    /// `train` or `val`.
    pub split: String,
    /// Metric name (`loss`, `acc`, `top5`, `images_per_s`, `lr`, `epoch_time_s`).
    pub name: String,
    /// Its value.
    pub value: f64,
    /// Seconds since the Unix epoch.
    pub time: f64,
}

/// Appends metric records to a JSON-lines file.
pub struct MetricsLog {
    path: PathBuf,
    file: File,
    run: String,
    rank: usize,
}

impl MetricsLog {
    /// Opens (appending) `path`, creating its directory.
    pub fn open(path: &Path, run: &str, rank: usize) -> Result<Self, EngineError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| EngineError::io(dir, e))?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| EngineError::io(path, e))?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
            run: run.to_string(),
            rank,
        })
    }

    /// Appends one record per `(name, value)`; each line is written whole.
    pub fn log(
        &mut self,
        epoch: usize,
        step: usize,
        split: &str,
        values: &[(&str, f64)],
    ) -> Result<(), EngineError> {
        let time = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let mut text = String::new();
        for (name, value) in values {
            let record = MetricRecord {
                run: self.run.clone(),
                rank: self.rank,
                epoch,
                step,
                split: split.to_string(),
                name: name.to_string(),
                value: *value,
                time,
            };
            text.push_str(&serde_json::to_string(&record).expect("metric serialises"));
            text.push('\n');
        }
        self.file
            .write_all(text.as_bytes())
            .map_err(|e| EngineError::io(&self.path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_counts_ties_like_torch() {
        let logits = [0.1, 0.5, 0.4, 0.9, 0.1, 0.0];
        assert_eq!(correct_top_k(&logits, &[1, 1], 3, 1), 1);
        assert_eq!(correct_top_k(&logits, &[2, 1], 3, 2), 2);
        assert_eq!(
            correct_top_k(&[1.0, 1.0], &[1], 2, 1),
            0,
            "tie goes to the lower index"
        );
    }

    #[test]
    fn nan_logits_are_never_correct() {
        let logits = [f32::NAN, 0.5, 0.4, 0.9, f32::NAN, 0.0];
        assert_eq!(correct_top_k(&logits, &[0, 0], 3, 1), 0);
        assert_eq!(correct_top_k(&logits, &[1, 1], 3, 3), 0);
    }
}
