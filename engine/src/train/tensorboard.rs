//! TensorBoard event files: `logs/events.out.tfevents.<secs>.<host>.<pid>.<n>`, readable by
//! TensorBoard and its `EventAccumulator`. Each record is TFRecord-framed: the data's length
//! (u64, little-endian), the masked CRC-32C of those 8 bytes, the data, the masked CRC-32C of
//! the data. The data is an `Event` protocol buffer (TensorFlow's `event.proto`, only the
//! fields kiln writes): `file_version = "brain.Event:2"` first, then scalars (`simple_value`),
//! text (a string tensor for the text plugin) and a `SessionLog START` where a resumed run
//! takes up again, so TensorBoard drops the steps written after the checkpoint.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use prost::Message;

use crate::error::EngineError;

/// `tensorflow.Event`.
#[derive(Clone, PartialEq, Message)]
pub struct Event {
    /// Seconds since the Unix epoch.
    #[prost(double, tag = "1")]
    pub wall_time: f64,
    /// The global step.
    #[prost(int64, tag = "2")]
    pub step: i64,
    /// The file's format version (first event only).
    #[prost(string, optional, tag = "3")]
    pub file_version: Option<String>,
    /// Values.
    #[prost(message, optional, tag = "5")]
    pub summary: Option<Summary>,
    /// A session's start (a resumed run).
    #[prost(message, optional, tag = "7")]
    pub session_log: Option<SessionLog>,
}

/// `tensorflow.Summary`.
#[derive(Clone, PartialEq, Message)]
pub struct Summary {
    /// The values.
    #[prost(message, repeated, tag = "1")]
    pub value: Vec<SummaryValue>,
}

/// `tensorflow.Summary.Value`.
#[derive(Clone, PartialEq, Message)]
pub struct SummaryValue {
    /// The chart's name (`train/loss`).
    #[prost(string, tag = "1")]
    pub tag: String,
    /// A scalar.
    #[prost(float, optional, tag = "2")]
    pub simple_value: Option<f32>,
    /// A tensor (the text plugin's strings).
    #[prost(message, optional, tag = "8")]
    pub tensor: Option<TensorProto>,
    /// Which plugin shows it.
    #[prost(message, optional, tag = "9")]
    pub metadata: Option<SummaryMetadata>,
}

/// `tensorflow.SummaryMetadata`.
#[derive(Clone, PartialEq, Message)]
pub struct SummaryMetadata {
    /// The plugin.
    #[prost(message, optional, tag = "1")]
    pub plugin_data: Option<PluginData>,
}

/// `tensorflow.SummaryMetadata.PluginData`.
#[derive(Clone, PartialEq, Message)]
pub struct PluginData {
    /// `text`.
    #[prost(string, tag = "1")]
    pub plugin_name: String,
}

/// `tensorflow.TensorProto`, strings only.
#[derive(Clone, PartialEq, Message)]
pub struct TensorProto {
    /// `DT_STRING` = 7.
    #[prost(int32, tag = "1")]
    pub dtype: i32,
    /// The shape (a scalar: no dimensions).
    #[prost(message, optional, tag = "2")]
    pub tensor_shape: Option<TensorShape>,
    /// The strings.
    #[prost(bytes = "vec", repeated, tag = "8")]
    pub string_val: Vec<Vec<u8>>,
}

/// `tensorflow.TensorShapeProto` (no dimensions: a scalar).
#[derive(Clone, PartialEq, Message)]
pub struct TensorShape {}

/// `tensorflow.SessionLog`.
#[derive(Clone, PartialEq, Message)]
pub struct SessionLog {
    /// `START` = 1.
    #[prost(int32, tag = "1")]
    pub status: i32,
}

const DT_STRING: i32 = 7;
const SESSION_START: i32 = 1;

/// TFRecord's checksum: CRC-32C (Castagnoli), rotated right by 15 bits plus a constant.
pub fn masked_crc32c(data: &[u8]) -> u32 {
    let crc = crc32c::crc32c(data);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// Distinguishes two event files one process opens in the same second.
static FILES_OPENED: AtomicUsize = AtomicUsize::new(0);

/// An open event file.
pub struct EventWriter {
    path: PathBuf,
    file: BufWriter<File>,
}

impl EventWriter {
    /// A new event file in `dir` (created), its version record written.
    pub fn create(dir: &Path) -> Result<Self, EngineError> {
        let io = |path: &Path, e: std::io::Error| EngineError::io(path, e);
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        let name = format!(
            "events.out.tfevents.{}.{}.{}.{}",
            crate::train::metrics::unix_time() as u64,
            crate::dist::wire::hostname(),
            std::process::id(),
            FILES_OPENED.fetch_add(1, Ordering::Relaxed)
        );
        let path = dir.join(name);
        let file = File::create(&path).map_err(|e| io(&path, e))?;
        let mut writer = Self {
            path,
            file: BufWriter::new(file),
        };
        writer.write(&Event {
            wall_time: crate::train::metrics::unix_time(),
            file_version: Some("brain.Event:2".into()),
            ..Event::default()
        })?;
        writer.flush()?;
        Ok(writer)
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Scalars `(tag, value)` at `step`, in one event.
    pub fn scalars(&mut self, step: i64, values: &[(String, f64)]) -> Result<(), EngineError> {
        let value = values
            .iter()
            .map(|(tag, v)| SummaryValue {
                tag: tag.clone(),
                simple_value: Some(*v as f32),
                ..SummaryValue::default()
            })
            .collect();
        self.summary(step, value)
    }

    /// `text` (markdown) under `tag`, for TensorBoard's text tab.
    pub fn text(&mut self, step: i64, tag: &str, text: &str) -> Result<(), EngineError> {
        self.summary(
            step,
            vec![SummaryValue {
                tag: tag.into(),
                tensor: Some(TensorProto {
                    dtype: DT_STRING,
                    tensor_shape: Some(TensorShape {}),
                    string_val: vec![text.as_bytes().to_vec()],
                }),
                metadata: Some(SummaryMetadata {
                    plugin_data: Some(PluginData {
                        plugin_name: "text".into(),
                    }),
                }),
                ..SummaryValue::default()
            }],
        )
    }

    /// A session starts again at `step`: TensorBoard discards what was logged after it.
    pub fn session_start(&mut self, step: i64) -> Result<(), EngineError> {
        self.write(&Event {
            wall_time: crate::train::metrics::unix_time(),
            step,
            session_log: Some(SessionLog {
                status: SESSION_START,
            }),
            ..Event::default()
        })
    }

    fn summary(&mut self, step: i64, value: Vec<SummaryValue>) -> Result<(), EngineError> {
        self.write(&Event {
            wall_time: crate::train::metrics::unix_time(),
            step,
            summary: Some(Summary { value }),
            ..Event::default()
        })
    }

    fn write(&mut self, event: &Event) -> Result<(), EngineError> {
        let data = event.encode_to_vec();
        let len = (data.len() as u64).to_le_bytes();
        let mut record = Vec::with_capacity(data.len() + 16);
        record.extend_from_slice(&len);
        record.extend_from_slice(&masked_crc32c(&len).to_le_bytes());
        record.extend_from_slice(&data);
        record.extend_from_slice(&masked_crc32c(&data).to_le_bytes());
        self.file.write_all(&record).map_err(|e| self.io(e))
    }

    /// Pushes what was written to the file (at each epoch's end).
    pub fn flush(&mut self) -> Result<(), EngineError> {
        self.file.flush().map_err(|e| self.io(e))
    }

    fn io(&self, e: std::io::Error) -> EngineError {
        EngineError::io(&self.path, e)
    }
}

/// Reads every event of the file at `path`, checking both checksums of every record.
pub fn read_events(path: &Path) -> Result<Vec<Event>, String> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let mut events = Vec::new();
    let mut at = 0;
    let u32_at = |b: &[u8], i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
    while at < bytes.len() {
        let torn = || format!("{}: a torn record at byte {at}", path.display());
        let head = bytes.get(at..at + 12).ok_or_else(torn)?;
        if masked_crc32c(&head[..8]) != u32_at(head, 8) {
            return Err(format!(
                "{}: bad length checksum at byte {at}",
                path.display()
            ));
        }
        let len = u64::from_le_bytes(head[..8].try_into().expect("8 bytes")) as usize;
        let data = bytes.get(at + 12..at + 12 + len).ok_or_else(torn)?;
        let crc = bytes.get(at + 12 + len..at + 16 + len).ok_or_else(torn)?;
        if masked_crc32c(data) != u32_at(crc, 0) {
            return Err(format!(
                "{}: bad data checksum at byte {at}",
                path.display()
            ));
        }
        events.push(Event::decode(data).map_err(|e| format!("{}: {e}", path.display()))?);
        at += 16 + len;
    }
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_is_castagnolis_and_masked_as_tensorflow_masks_it() {
        // The CRC-32C check value, and RFC 3720's (iSCSI) test vectors.
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
        assert_eq!(crc32c::crc32c(&[0u8; 32]), 0x8a91_36aa);
        assert_eq!(crc32c::crc32c(&[0xffu8; 32]), 0x62a8_ab43);
        // Not the IEEE CRC-32 of the same bytes (0xcbf43926).
        assert_ne!(crc32c::crc32c(b"123456789"), 0xcbf4_3926);
        // mask(crc) = ((crc >> 15) | (crc << 17)) + 0xa282ead8, as TensorFlow's crc32c.h.
        let crc = 0xe306_9283u32;
        let expected = crc.rotate_right(15).wrapping_add(0xa282_ead8);
        assert_eq!(masked_crc32c(b"123456789"), expected);
    }

    #[test]
    fn events_read_back_with_their_checksums() {
        let dir = std::env::temp_dir().join(format!("kiln-tfevents-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut w = EventWriter::create(&dir).unwrap();
        w.scalars(3, &[("train/loss".into(), 0.25), ("val/acc".into(), 0.5)])
            .unwrap();
        w.text(0, "hparams", "| lr | 0.1 |").unwrap();
        w.session_start(2).unwrap();
        w.flush().unwrap();
        let name = w.path().file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.starts_with("events.out.tfevents."), "{name}");
        let events = read_events(w.path()).unwrap();
        assert_eq!(events.len(), 4);
        assert_eq!(events[0].file_version.as_deref(), Some("brain.Event:2"));
        let s = events[1].summary.as_ref().unwrap();
        assert_eq!((events[1].step, s.value[0].simple_value), (3, Some(0.25)));
        assert_eq!(s.value[1].tag, "val/acc");
        assert_eq!(
            events[3].session_log.as_ref().unwrap().status,
            SESSION_START
        );
        // A flipped byte is caught.
        let mut bytes = std::fs::read(w.path()).unwrap();
        let last = bytes.len() - 6;
        bytes[last] ^= 1;
        std::fs::write(w.path(), bytes).unwrap();
        assert!(read_events(w.path()).unwrap_err().contains("checksum"));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
