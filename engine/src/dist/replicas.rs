//! Keeping replicas identical: rank 0's tensors (parameters, optimizer state) and values
//! (trainer state) broadcast to every rank, and per-rank sums (metrics) added up in rank
//! order, so every rank gets bitwise the same totals and takes the same decisions.

use std::collections::BTreeMap;

use burn::tensor::TensorData;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::dist::Transport;
use crate::error::EngineError;

fn corrupt(what: &str) -> EngineError {
    EngineError::Distributed(format!("malformed broadcast from rank 0: {what}"))
}

/// Named f32 tensors as bytes: count, then each name, shape and little-endian values.
pub fn encode_tensors(tensors: &BTreeMap<String, TensorData>) -> Result<Vec<u8>, EngineError> {
    let mut out = (tensors.len() as u64).to_le_bytes().to_vec();
    for (name, data) in tensors {
        let values = data
            .clone()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .map_err(|e| EngineError::Distributed(format!("tensor {name}: {e:?}")))?;
        out.extend_from_slice(&(name.len() as u64).to_le_bytes());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&(data.shape().len() as u64).to_le_bytes());
        for d in data.shape().iter() {
            out.extend_from_slice(&(*d as u64).to_le_bytes());
        }
        out.extend(values.iter().flat_map(|v| v.to_le_bytes()));
    }
    Ok(out)
}

/// Reads [`encode_tensors`]'s format front to back.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], EngineError> {
        let end = self.at.checked_add(n).ok_or_else(|| corrupt("length"))?;
        let piece = self
            .bytes
            .get(self.at..end)
            .ok_or_else(|| corrupt("truncated"))?;
        self.at = end;
        Ok(piece)
    }

    fn word(&mut self) -> Result<usize, EngineError> {
        let mut w = [0u8; 8];
        w.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(w) as usize)
    }
}

/// The inverse of [`encode_tensors`].
pub fn decode_tensors(bytes: &[u8]) -> Result<BTreeMap<String, TensorData>, EngineError> {
    let mut r = Reader { bytes, at: 0 };
    let count = r.word()?;
    let mut out = BTreeMap::new();
    for _ in 0..count {
        let len = r.word()?;
        let name = String::from_utf8(r.take(len)?.to_vec()).map_err(|_| corrupt("name"))?;
        let rank = r.word()?;
        let shape = (0..rank)
            .map(|_| r.word())
            .collect::<Result<Vec<usize>, _>>()?;
        let n = shape
            .iter()
            .try_fold(4usize, |acc, d| acc.checked_mul(*d))
            .ok_or_else(|| corrupt("shape"))?;
        let values: Vec<f32> = r
            .take(n)?
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        out.insert(name, TensorData::new(values, shape));
    }
    Ok(out)
}

/// Rank 0's `tensors` on every rank.
pub fn broadcast_tensors(
    transport: &mut dyn Transport,
    tensors: BTreeMap<String, TensorData>,
) -> Result<BTreeMap<String, TensorData>, EngineError> {
    if transport.world_size() == 1 {
        return Ok(tensors);
    }
    let mut bytes = if transport.rank() == 0 {
        encode_tensors(&tensors)?
    } else {
        Vec::new()
    };
    transport.broadcast(&mut bytes, 0)?;
    if transport.rank() == 0 {
        Ok(tensors)
    } else {
        decode_tensors(&bytes)
    }
}

/// Rank 0's `value` on every rank.
pub fn broadcast_value<T: Serialize + DeserializeOwned>(
    transport: &mut dyn Transport,
    value: T,
) -> Result<T, EngineError> {
    if transport.world_size() == 1 {
        return Ok(value);
    }
    let mut bytes = serde_json::to_vec(&value).map_err(|e| corrupt(&e.to_string()))?;
    transport.broadcast(&mut bytes, 0)?;
    serde_json::from_slice(&bytes).map_err(|e| corrupt(&e.to_string()))
}

/// Elementwise sums of every rank's `values`, added in rank order (identical on all ranks).
pub fn sum_across(transport: &mut dyn Transport, values: &[f64]) -> Result<Vec<f64>, EngineError> {
    let mine: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let all = transport.all_gather(&mine)?;
    let mut total = vec![0.0f64; values.len()];
    for (rank, bytes) in all.iter().enumerate() {
        if bytes.len() != values.len() * 8 {
            return Err(EngineError::Distributed(format!(
                "rank {rank} sent {} values, expected {}",
                bytes.len() / 8,
                values.len()
            )));
        }
        for (t, b) in total.iter_mut().zip(bytes.chunks_exact(8)) {
            *t += f64::from_le_bytes(b.try_into().unwrap_or([0; 8]));
        }
    }
    Ok(total)
}

/// Fails on every rank unless all ranks' `mine` equal rank 0's.
pub fn check_same(
    transport: &mut dyn Transport,
    what: &str,
    mine: &[u8],
) -> Result<(), EngineError> {
    let all = transport.all_gather(mine)?;
    match all.iter().position(|other| other != &all[0]) {
        None => Ok(()),
        Some(rank) => Err(EngineError::Distributed(format!(
            "rank {rank}'s {what} differs from rank 0's (different options or weights?)"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensors_round_trip() {
        let mut map = BTreeMap::new();
        map.insert(
            "a.weight".to_string(),
            TensorData::new(vec![1.5f32, -2.0, 3.25, 0.0], [2, 2]),
        );
        map.insert("b".to_string(), TensorData::new(Vec::<f32>::new(), [0]));
        map.insert("c".to_string(), TensorData::new(vec![7.0f32], [1, 1, 1, 1]));
        let back = decode_tensors(&encode_tensors(&map).unwrap()).unwrap();
        assert_eq!(back, map);
        let bytes = encode_tensors(&map).unwrap();
        assert!(decode_tensors(&bytes[..bytes.len() - 1]).is_err());
    }
}
