//! Horovod's tensor fusion: after backward, the gradients of every trainable parameter (in
//! module order, the same on every rank) are packed into buckets of about `bucket_bytes`,
//! each bucket is averaged across ranks in one allreduce, and the averages are written back
//! before the optimizer step.

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::{DType, Tensor, TensorData};
use kiln_kernels::bucket::{pack, unpack};
use kiln_models::Model;

use crate::dist::{ReduceOp, Transport, Wire};
use crate::error::EngineError;

/// Horovod's default fusion buffer.
pub const DEFAULT_BUCKET_BYTES: usize = 64 << 20;

/// How gradients are averaged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GradientBuckets {
    /// Largest bucket, in bytes of f32 (a single larger tensor gets a bucket of its own).
    pub bucket_bytes: usize,
    /// Wire format of the allreduce.
    pub wire: Wire,
}

impl Default for GradientBuckets {
    fn default() -> Self {
        Self {
            bucket_bytes: DEFAULT_BUCKET_BYTES,
            wire: Wire::F32,
        }
    }
}

/// Trainable parameters' gradients, flattened, in module order; a parameter without a
/// gradient this step (an empty batch) contributes zeros so every rank packs the same layout.
struct Gather<'a> {
    grads: &'a mut GradientsParams,
    flat: Vec<(ParamId, Tensor<1>)>,
}

impl ModuleVisitor for Gather<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let value = param.val();
        if !value.is_require_grad() {
            return;
        }
        let n = value.shape().num_elements();
        let grad = match self.grads.remove::<D>(param.id) {
            Some(g) => g.reshape([n]),
            None => value.inner().zeros_like().reshape([n]),
        };
        self.flat.push((param.id, grad));
    }
}

/// Writes the averaged gradients back in their parameters' shapes.
struct Scatter {
    grads: GradientsParams,
    flat: std::vec::IntoIter<(ParamId, Tensor<1>)>,
}

impl ModuleVisitor for Scatter {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let value = param.val();
        if !value.is_require_grad() {
            return;
        }
        if let Some((id, flat)) = self.flat.next() {
            self.grads.register::<D>(id, flat.reshape(value.shape()));
        }
    }
}

/// Element counts of the trainable parameters, in module order.
struct Layout(Vec<u8>);

impl ModuleVisitor for Layout {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let value = param.val();
        if value.is_require_grad() {
            let n = value.shape().num_elements() as u64;
            self.0.extend_from_slice(&n.to_le_bytes());
        }
    }
}

impl GradientBuckets {
    /// What every rank's buckets are packed from (the trainable parameters' sizes in module
    /// order); ranks must agree on it before the first step.
    pub fn layout(&self, model: &Model) -> Vec<u8> {
        let mut layout = Layout(Vec::new());
        model.visit(&mut layout);
        layout.0
    }

    /// Averages `grads` across the ranks of `transport`.
    pub fn average(
        &self,
        transport: &mut dyn Transport,
        model: &Model,
        mut grads: GradientsParams,
    ) -> Result<GradientsParams, EngineError> {
        if transport.world_size() == 1 {
            return Ok(grads);
        }
        let mut gather = Gather {
            grads: &mut grads,
            flat: Vec::new(),
        };
        model.visit(&mut gather);
        let flat = gather.flat;
        let mut averaged = Vec::with_capacity(flat.len());
        let mut start = 0;
        while start < flat.len() {
            let mut end = start;
            let mut bytes = 0;
            while end < flat.len()
                && (end == start || bytes + flat[end].1.dims()[0] * 4 <= self.bucket_bytes)
            {
                bytes += flat[end].1.dims()[0] * 4;
                end += 1;
            }
            let bucket = &flat[start..end];
            let device = bucket[0].1.device();
            let lens: Vec<usize> = bucket.iter().map(|(_, t)| t.dims()[0]).collect();
            let pieces: Vec<Tensor<1>> = bucket.iter().map(|(_, t)| t.clone()).collect();
            // Packed on the device (one kernel pass on cube devices), already rounded to f16
            // for an f16 wire: half the bytes come back, and the transport's own rounding
            // of these values is then exact.
            let dtype = match self.wire {
                Wire::F32 => DType::F32,
                Wire::F16 => DType::F16,
            };
            let mut values = pack(&pieces, dtype)
                .into_data()
                .convert::<f32>()
                .try_into_vec::<f32>()
                .map_err(|e| EngineError::Distributed(format!("gradient bucket: {e:?}")))?;
            transport.allreduce_with(&mut values, ReduceOp::Average, self.wire)?;
            let total = values.len();
            let packed = Tensor::<1>::from_data(TensorData::new(values, [total]), &device);
            for ((id, _), piece) in bucket.iter().zip(unpack(packed, &lens)) {
                averaged.push((*id, piece));
            }
            start = end;
        }
        let mut scatter = Scatter {
            grads,
            flat: averaged.into_iter(),
        };
        model.visit(&mut scatter);
        Ok(scatter.grads)
    }
}
