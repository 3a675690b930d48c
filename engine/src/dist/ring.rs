//! [`RingAllReduce`]: the collectives over a ring of TCP connections. Allreduce is the
//! bandwidth-optimal ring (reduce-scatter, then all-gather: each rank sends 2(n-1)/n of the
//! data); every segment travels in chunks, and a sender thread writes while the calling thread
//! receives and reduces, so sending, receiving and reducing overlap.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender, channel, sync_channel};
use std::thread::JoinHandle;

use crate::dist::env::WorldInfo;
use crate::dist::rendezvous::{self, Group, Health, Warn};
use crate::dist::{ReduceOp, Transport, Wire};
use crate::error::EngineError;
use half::slice::HalfFloatSliceExt;

/// Bytes per chunk on the wire (the unit of pipelining).
pub const DEFAULT_CHUNK_BYTES: usize = 1 << 20;

/// kiln's own collectives, on every backend: the data is in host memory as it goes round.
pub struct RingAllReduce {
    rank: usize,
    world_size: usize,
    hosts: Vec<String>,
    prev: TcpStream,
    sender: Option<(Sender<Vec<u8>>, JoinHandle<()>)>,
    /// Buffers the sender has written, back for reuse (fresh megabyte buffers cost page faults).
    spent: Receiver<Vec<u8>>,
    health: Arc<Health>,
    chunk_bytes: usize,
    scratch: Vec<u8>,
    codec: Codec,
    finished: bool,
}

impl RingAllReduce {
    /// Joins the job `info` describes (rendezvous at rank 0, then the ring).
    pub fn join(info: &WorldInfo, warn: Warn) -> Result<Self, EngineError> {
        Ok(Self::from_group(rendezvous::join(info, warn)?))
    }

    /// The collectives over an already formed group.
    pub fn from_group(group: Group) -> Self {
        let (tx, rx) = channel::<Vec<u8>>();
        // A few buffers are enough to keep the pipeline fed; the rest are freed.
        let (spent_tx, spent) = sync_channel::<Vec<u8>>(8);
        let mut next = group.next;
        let health = group.health.clone();
        let next_rank = (group.rank + 1) % group.world_size;
        let next_host = group.hosts[next_rank].clone();
        let writer = std::thread::spawn(move || {
            for buf in rx {
                if let Err(e) = next.write_all(&buf) {
                    health.fail_unless_told(format!("lost rank {next_rank} on {next_host}: {e}"));
                    return;
                }
                let _ = spent_tx.try_send(buf);
            }
            let _ = next.flush();
        });
        Self {
            rank: group.rank,
            world_size: group.world_size,
            hosts: group.hosts,
            prev: group.prev,
            sender: Some((tx, writer)),
            spent,
            health: group.health,
            chunk_bytes: DEFAULT_CHUNK_BYTES,
            scratch: Vec::new(),
            codec: Codec::default(),
            finished: false,
        }
    }

    /// Sets the pipelining chunk size (bytes, at least 4).
    pub fn with_chunk_bytes(mut self, bytes: usize) -> Self {
        self.chunk_bytes = bytes.max(4);
        self
    }

    /// Every rank's host, by rank.
    pub fn hosts(&self) -> &[String] {
        &self.hosts
    }

    /// A buffer to fill for [`RingAllReduce::send`], reused when one is free.
    fn buffer(&self) -> Vec<u8> {
        let mut buf = self.spent.try_recv().unwrap_or_default();
        buf.clear();
        buf
    }

    /// `values` in `wire` format, queued for the next rank.
    fn send_values(&mut self, values: &[f32], wire: Wire) -> Result<(), EngineError> {
        let mut buf = self.buffer();
        self.codec.encode(values, wire, &mut buf);
        self.send(buf)
    }

    fn send(&self, buf: Vec<u8>) -> Result<(), EngineError> {
        match &self.sender {
            Some((tx, _)) if tx.send(buf).is_ok() => Ok(()),
            _ => Err(self.lost("the sender stopped")),
        }
    }

    /// The error for a broken ring: the job's recorded failure if one arrives soon, else the
    /// previous rank, reported to the others.
    fn lost(&self, what: &str) -> EngineError {
        let prev = (self.rank + self.world_size - 1) % self.world_size;
        let reason = format!("lost rank {prev} on {}: {what}", self.hosts[prev]);
        self.health.fail_unless_told(reason);
        EngineError::Distributed(self.health.failure().unwrap_or_default())
    }

    fn check(&self) -> Result<(), EngineError> {
        match self.health.failure() {
            Some(reason) => Err(EngineError::Distributed(reason)),
            None => Ok(()),
        }
    }

    fn recv_exact(&mut self, len: usize) -> Result<(), EngineError> {
        self.scratch.resize(len, 0);
        if let Err(e) = self.prev.read_exact(&mut self.scratch) {
            return Err(self.lost(&e.to_string()));
        }
        Ok(())
    }

    fn recv_len(&mut self) -> Result<usize, EngineError> {
        self.recv_exact(8)?;
        let mut word = [0u8; 8];
        word.copy_from_slice(&self.scratch);
        Ok(u64::from_le_bytes(word) as usize)
    }

    fn flush(&mut self) {
        if let Some((tx, writer)) = self.sender.take() {
            drop(tx);
            let _ = writer.join();
        }
    }
}

impl Drop for RingAllReduce {
    /// Leaving without [`Transport::finish`] (an error or a panic on this rank) stops the job:
    /// the others would otherwise wait for this rank's data for ever.
    fn drop(&mut self) {
        if !self.finished {
            let me = format!("rank {} on {}", self.rank, self.hosts[self.rank]);
            self.health
                .fail(format!("{me} left the job before it ended"));
        }
        self.flush();
    }
}

/// Conversions between f32 values and wire bytes, with reused scratch space; f16 goes through
/// `half`'s slice conversions, which use the CPU's F16C instructions when it has them.
#[derive(Default)]
struct Codec {
    halves: Vec<half::f16>,
    floats: Vec<f32>,
}

impl Codec {
    fn encode(&mut self, values: &[f32], wire: Wire, out: &mut Vec<u8>) {
        // Fixed-size writes into a sized buffer: the compiler vectorises these loops.
        out.resize(values.len() * wire.bytes(), 0);
        match wire {
            Wire::F32 => {
                for (o, v) in out.chunks_exact_mut(4).zip(values) {
                    o.copy_from_slice(&v.to_le_bytes());
                }
            }
            Wire::F16 => {
                self.halves.resize(values.len(), half::f16::ZERO);
                self.halves.convert_from_f32_slice(values);
                for (o, h) in out.chunks_exact_mut(2).zip(&self.halves) {
                    o.copy_from_slice(&h.to_le_bytes());
                }
            }
        }
    }

    /// `out[i] = v` (`add` false) or `out[i] += v` for each value in `bytes`.
    fn apply(&mut self, out: &mut [f32], bytes: &[u8], wire: Wire, add: bool) {
        let values: &[f32] = match wire {
            Wire::F32 => {
                self.floats.clear();
                self.floats.extend(
                    bytes
                        .chunks_exact(4)
                        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
                );
                &self.floats
            }
            Wire::F16 => {
                self.halves.clear();
                self.halves.extend(
                    bytes
                        .chunks_exact(2)
                        .map(|b| half::f16::from_le_bytes([b[0], b[1]])),
                );
                self.floats.resize(self.halves.len(), 0.0);
                self.halves.convert_to_f32_slice(&mut self.floats);
                &self.floats
            }
        };
        if add {
            out.iter_mut().zip(values).for_each(|(o, v)| *o += v);
        } else {
            out.copy_from_slice(&values[..out.len()]);
        }
    }

    /// Rounds `values` to f16 precision in place.
    fn round_to_f16(&mut self, values: &mut [f32]) {
        self.halves.resize(values.len(), half::f16::ZERO);
        self.halves.convert_from_f32_slice(values);
        self.halves.convert_to_f32_slice(values);
    }
}

impl Transport for RingAllReduce {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world_size
    }

    fn allreduce_with(
        &mut self,
        data: &mut [f32],
        op: ReduceOp,
        wire: Wire,
    ) -> Result<(), EngineError> {
        let (n, r) = (self.world_size, self.rank);
        if n == 1 {
            return Ok(());
        }
        self.check()?;
        let len = data.len();
        let segment = |i: usize| (i * len / n)..((i + 1) * len / n);
        let chunk = (self.chunk_bytes / wire.bytes()).max(1);
        let steps = 2 * (n - 1);
        let first = segment(r);
        for start in first.clone().step_by(chunk) {
            self.send_values(&data[start..(start + chunk).min(first.end)], wire)?;
        }
        for step in 0..steps {
            // Reduce-scatter: receive segment r-1-step and add; after n-1 steps this rank holds
            // segment r+1 summed. All-gather: receive the finished segments and copy.
            let reducing = step < n - 1;
            let seg = if reducing {
                (r + n - 1 - step) % n
            } else {
                (r + n - (step - (n - 1))) % n
            };
            let range = segment(seg);
            for start in range.clone().step_by(chunk) {
                let end = (start + chunk).min(range.end);
                self.recv_exact((end - start) * wire.bytes())?;
                self.codec
                    .apply(&mut data[start..end], &self.scratch, wire, reducing);
                if step == n - 2 && wire == Wire::F16 {
                    // The owner keeps what the others will decode, so all ranks end identical.
                    self.codec.round_to_f16(&mut data[start..end]);
                }
                if step + 1 < steps {
                    self.send_values(&data[start..end], wire)?;
                }
            }
        }
        if op == ReduceOp::Average {
            let n = n as f32;
            data.iter_mut().for_each(|v| *v /= n);
        }
        Ok(())
    }

    fn broadcast(&mut self, data: &mut Vec<u8>, root: usize) -> Result<(), EngineError> {
        let n = self.world_size;
        if n == 1 {
            return Ok(());
        }
        self.check()?;
        let forward = (self.rank + 1) % n != root;
        if self.rank == root {
            self.send((data.len() as u64).to_le_bytes().to_vec())?;
            for piece in data.chunks(self.chunk_bytes) {
                let mut buf = self.buffer();
                buf.extend_from_slice(piece);
                self.send(buf)?;
            }
            return Ok(());
        }
        let len = self.recv_len()?;
        if forward {
            self.send((len as u64).to_le_bytes().to_vec())?;
        }
        data.clear();
        data.reserve(len);
        let mut start = 0;
        while start < len {
            let end = (start + self.chunk_bytes).min(len);
            self.recv_exact(end - start)?;
            data.extend_from_slice(&self.scratch);
            if forward {
                let mut buf = self.buffer();
                buf.extend_from_slice(&self.scratch);
                self.send(buf)?;
            }
            start = end;
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<(), EngineError> {
        self.barrier()?;
        self.flush();
        self.finished = true;
        self.health.close();
        Ok(())
    }

    fn abort(&mut self, reason: &str) {
        let me = format!("rank {} on {}", self.rank, self.hosts[self.rank]);
        self.health.fail(format!("{me} failed: {reason}"));
        self.finished = true;
    }

    fn all_gather(&mut self, data: &[u8]) -> Result<Vec<Vec<u8>>, EngineError> {
        let (n, r) = (self.world_size, self.rank);
        let mut out = vec![Vec::new(); n];
        out[r] = data.to_vec();
        if n == 1 {
            return Ok(out);
        }
        self.check()?;
        for step in 0..n - 1 {
            let send = (r + n - step) % n;
            let mut frame = (out[send].len() as u64).to_le_bytes().to_vec();
            frame.extend_from_slice(&out[send]);
            self.send(frame)?;
            let len = self.recv_len()?;
            self.recv_exact(len)?;
            out[(r + n - step - 1) % n] = std::mem::take(&mut self.scratch);
        }
        Ok(out)
    }
}
