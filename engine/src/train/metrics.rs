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

/// A metric value in JSON: a number when finite, `"inf"` or `"-inf"` for the infinities (JSON
/// has no literal for them, and a diverged loss is worth seeing as such), `null` for NaN.
/// Reading also takes `"nan"`, `"Infinity"` and `"-Infinity"`.
pub mod json_value {
    use serde::{Deserialize, Deserializer, Serializer};

    /// What a metrics line may hold.
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Stored {
        Number(f64),
        Text(String),
    }

    fn read<E: serde::de::Error>(stored: Option<Stored>) -> Result<Option<f64>, E> {
        match stored {
            None => Ok(None),
            Some(Stored::Number(v)) => Ok(Some(v)),
            Some(Stored::Text(t)) => match t.to_ascii_lowercase().as_str() {
                "inf" | "+inf" | "infinity" | "+infinity" => Ok(Some(f64::INFINITY)),
                "-inf" | "-infinity" => Ok(Some(f64::NEG_INFINITY)),
                "nan" => Ok(None),
                _ => Err(E::custom(format!(
                    "'{t}' is not a metric value; expected a number, \"inf\", \"-inf\" or null"
                ))),
            },
        }
    }

    /// Serialises an optional value (`None` and NaN as `null`).
    pub fn serialize_option<S: Serializer>(v: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) if v.is_finite() => s.serialize_f64(*v),
            Some(v) if v.is_infinite() => s.serialize_str(if *v > 0.0 { "inf" } else { "-inf" }),
            _ => s.serialize_none(),
        }
    }

    /// Serialises a value (NaN as `null`).
    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        serialize_option(&Some(*v), s)
    }

    /// Reads an optional value.
    pub fn deserialize_option<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
        read(Option::<Stored>::deserialize(d)?)
    }

    /// Reads a value (`null` as NaN).
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        Ok(read(Option::<Stored>::deserialize(d)?)?.unwrap_or(f64::NAN))
    }
}

/// Seconds since the Unix epoch.
pub fn unix_time() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
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
    /// Its value (see [`json_value`] for the infinities).
    #[serde(with = "json_value")]
    pub value: f64,
    /// Seconds since the Unix epoch.
    pub time: f64,
}

/// How a [`MetricsLog`] treats what its file already holds, at its first write (a run that
/// fails before its first epoch leaves no file behind).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// A new run: the file starts empty.
    Fresh,
    /// A resumed run: records of epochs after this one (written after its checkpoint) are
    /// dropped, so no epoch appears twice.
    KeepUntil(usize),
    /// The file belongs to a run others write to as well (`kiln submit`'s `logs/`): append.
    Append,
}

/// Appends metric records to a JSON-lines file.
pub struct MetricsLog {
    path: PathBuf,
    file: Option<File>,
    start: Start,
    run: String,
    rank: usize,
}

impl MetricsLog {
    /// A log into `path`, opened (and its directory created) at the first write, as `start`
    /// says.
    pub fn open(path: &Path, run: &str, rank: usize, start: Start) -> Self {
        Self {
            path: path.to_path_buf(),
            file: None,
            start,
            run: run.to_string(),
            rank,
        }
    }

    fn file(&mut self) -> Result<&mut File, EngineError> {
        if self.file.is_none() {
            let path = &self.path;
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| EngineError::io(dir, e))?;
            }
            let mut options = OpenOptions::new();
            match self.start {
                Start::Fresh => options.write(true).create(true).truncate(true),
                Start::Append => options.append(true).create(true),
                Start::KeepUntil(epoch) => {
                    keep_until(path, epoch)?;
                    options.append(true).create(true)
                }
            };
            let file = options.open(path).map_err(|e| EngineError::io(path, e))?;
            self.file = Some(file);
        }
        Ok(self.file.as_mut().expect("opened above"))
    }

    /// Appends one record per `(name, value)`; each line is written whole.
    pub fn log(
        &mut self,
        epoch: usize,
        step: usize,
        split: &str,
        values: &[(&str, f64)],
    ) -> Result<(), EngineError> {
        let time = unix_time();
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
        let path = self.path.clone();
        self.file()?
            .write_all(text.as_bytes())
            .map_err(|e| EngineError::io(&path, e))
    }
}

/// Rewrites `path` without the records of epochs after `epoch` (lines that are not records
/// are kept); through a temporary file, so a crash leaves the old file or the new one.
fn keep_until(path: &Path, epoch: usize) -> Result<(), EngineError> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    let kept: String = text
        .lines()
        .filter(|line| {
            serde_json::from_str::<serde_json::Value>(line)
                .ok()
                .and_then(|v| v["epoch"].as_u64())
                .is_none_or(|e| e as usize <= epoch)
        })
        .flat_map(|line| [line, "\n"])
        .collect();
    let tmp = path.with_extension("jsonl.tmp");
    std::fs::write(&tmp, kept).map_err(|e| EngineError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| EngineError::io(path, e))
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
