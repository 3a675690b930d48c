//! Data-parallel training across processes and machines, with Horovod's semantics, on every
//! burn backend: the collectives are kiln's own, over TCP.
//!
//! - [`env`]: a worker's rank, world size and rank 0's address from the environment (kiln or
//!   torchrun, Open MPI, Slurm).
//! - [`wire`]: the bytes on the sockets, the hello and the constant-time token check.
//! - [`rendezvous`]: forming the job at rank 0, the ring connections, heartbeats and aborts.
//! - [`ring`]: [`RingAllReduce`], allreduce/broadcast/all-gather/barrier over the ring.
//! - [`buckets`]: gradients fused into buckets and averaged between backward and the step.
//! - [`replicas`]: rank 0's parameters and optimizer state broadcast; metrics summed.
//! - [`launcher`]: `--nproc-per-node`: starting local workers and watching them.

pub mod buckets;
pub mod env;
pub mod launcher;
pub mod rendezvous;
pub mod replicas;
pub mod ring;
pub mod wire;

pub use buckets::{DEFAULT_BUCKET_BYTES, GradientBuckets};
pub use env::WorldInfo;
pub use ring::RingAllReduce;

use crate::error::EngineError;

/// How an allreduce combines the ranks' values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReduceOp {
    /// The sum.
    Sum,
    /// The sum divided by the world size.
    Average,
}

/// The number format on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Wire {
    /// Full precision.
    #[default]
    F32,
    /// Half the bytes; values are rounded to f16 (Horovod's fp16 compression).
    F16,
}

impl Wire {
    /// Bytes per value.
    pub fn bytes(self) -> usize {
        match self {
            Wire::F32 => 4,
            Wire::F16 => 2,
        }
    }
}

/// The collectives training needs. [`RingAllReduce`] is kiln's TCP ring; a transport over NCCL
/// or shared memory would implement the same trait. Every rank must call the same collectives
/// in the same order.
pub trait Transport: Send {
    /// This rank.
    fn rank(&self) -> usize;
    /// Number of ranks.
    fn world_size(&self) -> usize;
    /// Combines `data` across ranks in place, with `wire` on the wire; every rank ends with
    /// bitwise the same values.
    fn allreduce_with(
        &mut self,
        data: &mut [f32],
        op: ReduceOp,
        wire: Wire,
    ) -> Result<(), EngineError>;
    /// Replaces `data` on every rank by `root`'s.
    fn broadcast(&mut self, data: &mut Vec<u8>, root: usize) -> Result<(), EngineError>;
    /// Every rank's `data`, by rank.
    fn all_gather(&mut self, data: &[u8]) -> Result<Vec<Vec<u8>>, EngineError>;

    /// [`Transport::allreduce_with`] in full precision.
    fn allreduce(&mut self, data: &mut [f32], op: ReduceOp) -> Result<(), EngineError> {
        self.allreduce_with(data, op, Wire::F32)
    }

    /// Returns once every rank has called it.
    fn barrier(&mut self) -> Result<(), EngineError> {
        self.all_gather(&[]).map(|_| ())
    }

    /// Ends this rank's part cleanly, after a barrier: a transport dropped without it stops
    /// the job on every rank.
    fn finish(&mut self) -> Result<(), EngineError> {
        Ok(())
    }

    /// Stops the job on every rank with `reason` (this rank failed on its own).
    fn abort(&mut self, _reason: &str) {}
}

/// The transport of a job of one: every collective is the identity.
#[derive(Debug, Default)]
pub struct Solo;

impl Transport for Solo {
    fn rank(&self) -> usize {
        0
    }
    fn world_size(&self) -> usize {
        1
    }
    fn allreduce_with(&mut self, _: &mut [f32], _: ReduceOp, _: Wire) -> Result<(), EngineError> {
        Ok(())
    }
    fn broadcast(&mut self, _: &mut Vec<u8>, _: usize) -> Result<(), EngineError> {
        Ok(())
    }
    fn all_gather(&mut self, data: &[u8]) -> Result<Vec<Vec<u8>>, EngineError> {
        Ok(vec![data.to_vec()])
    }
}
