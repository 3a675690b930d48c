//! Training-mode batch norm (+ ReLU) on the CPU in two passes over memory each way.
//!
//! burn composes the forward from a transpose, two means over it, a subtraction, a square and
//! the normalisation (about eight passes), and the backward from about ten more; a ReLU after
//! it is one pass forward and one backward. Here, per channel (in parallel over channels):
//! - forward: one pass for the sum and sum of squares, one pass writing
//!   `max(0, (x - mean) * gamma / std + beta)`;
//! - backward: one pass for `sum dy` and `sum dy * xhat` (dy masked by the ReLU's output), one
//!   pass writing `dx = gamma / std * (dy - sum dy / M - xhat * sum(dy * xhat) / M)`.
//!
//! Sums are accumulated in f64.

use burn::backend::tensor::FloatTensor;
use burn::backend::{Flex, TensorMetadata};
use burn::tensor::{DType, Shape, TensorData};
use rayon::prelude::*;

type FlexTensor = FloatTensor<Flex>;

fn f32_slice(t: &FlexTensor) -> std::borrow::Cow<'_, [f32]> {
    assert_eq!(
        t.dtype(),
        DType::F32,
        "batch_norm: kiln's CPU kernel is f32"
    );
    match t.as_slice::<f32>() {
        Some(s) if t.is_contiguous() => std::borrow::Cow::Borrowed(s),
        _ => std::borrow::Cow::Owned(
            t.to_contiguous()
                .as_slice::<f32>()
                .expect("contiguous")
                .to_vec(),
        ),
    }
}

fn tensor(values: Vec<f32>, shape: &[usize]) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, Shape::from(shape.to_vec())))
}

/// A pointer that rayon tasks writing disjoint ranges may share.
#[derive(Clone, Copy)]
struct Shared(*mut f32);
// SAFETY: every task writes only its own channel's ranges (see the callers).
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

impl Shared {
    /// # Safety
    /// `start..start + len` is inside the buffer and no other task touches it.
    unsafe fn range(self, start: usize, len: usize) -> &'static mut [f32] {
        unsafe { std::slice::from_raw_parts_mut(self.0.add(start), len) }
    }
}

/// `[N, C, ...]` as (images, channels, values per image and channel).
fn layout(shape: &[usize]) -> (usize, usize, usize) {
    assert!(shape.len() >= 2, "batch_norm: input is [N, C, ...]");
    (shape[0], shape[1], shape[2..].iter().product())
}

/// (output, mean, biased variance).
pub fn forward(
    x: FlexTensor,
    gamma: FlexTensor,
    beta: FlexTensor,
    eps: f64,
    relu: bool,
) -> (FlexTensor, FlexTensor, FlexTensor) {
    let shape = x.shape().to_vec();
    let (n, c, hw) = layout(&shape);
    let x = f32_slice(&x);
    let gamma = f32_slice(&gamma);
    let beta = f32_slice(&beta);
    let m = (n * hw) as f64;
    let mut out = vec![0.0f32; x.len()];
    let shared = Shared(out.as_mut_ptr());
    let stats: Vec<(f32, f32)> = (0..c)
        .into_par_iter()
        .map(|ch| {
            // Sums in f64 of values shifted by the channel's first value, so a large mean next
            // to a small spread does not cancel the variance away.
            let shift0 = x[ch * hw] as f64;
            let (mut sum, mut sq) = (0.0f64, 0.0f64);
            for b in 0..n {
                for &v in &x[(b * c + ch) * hw..][..hw] {
                    let d = v as f64 - shift0;
                    sum += d;
                    sq += d * d;
                }
            }
            let mean_shifted = sum / m;
            let var = (sq / m - mean_shifted * mean_shifted).max(0.0);
            let mean = shift0 + mean_shifted;
            let scale = gamma[ch] as f64 / (var + eps).sqrt();
            let shift = beta[ch] as f64 - mean * scale;
            let (scale, shift) = (scale as f32, shift as f32);
            for b in 0..n {
                let start = (b * c + ch) * hw;
                let src = &x[start..][..hw];
                // SAFETY: (image, channel) blocks are disjoint and this task owns channel `ch`.
                let dst = unsafe { shared.range(start, hw) };
                if relu {
                    for (d, &v) in dst.iter_mut().zip(src) {
                        *d = (v * scale + shift).max(0.0);
                    }
                } else {
                    for (d, &v) in dst.iter_mut().zip(src) {
                        *d = v * scale + shift;
                    }
                }
            }
            (mean as f32, var as f32)
        })
        .collect();
    let (mean, var): (Vec<f32>, Vec<f32>) = stats.into_iter().unzip();
    (tensor(out, &shape), tensor(mean, &[c]), tensor(var, &[c]))
}

/// (dx, dgamma, dbeta) given the forward's input, output (for the ReLU mask), gamma, mean and
/// biased variance, and the output gradient.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    x: FlexTensor,
    output: FlexTensor,
    gamma: FlexTensor,
    mean: FlexTensor,
    var: FlexTensor,
    grad: FlexTensor,
    eps: f64,
    relu: bool,
) -> (FlexTensor, FlexTensor, FlexTensor) {
    let shape = x.shape().to_vec();
    let (n, c, hw) = layout(&shape);
    let x = f32_slice(&x);
    let out = f32_slice(&output);
    let gamma = f32_slice(&gamma);
    let mean = f32_slice(&mean);
    let var = f32_slice(&var);
    let dy = f32_slice(&grad);
    let m = (n * hw) as f64;
    let mut dx = vec![0.0f32; x.len()];
    let shared = Shared(dx.as_mut_ptr());
    let sums: Vec<(f32, f32)> = (0..c)
        .into_par_iter()
        .map(|ch| {
            let mu = mean[ch];
            let inv_std = (1.0 / (var[ch] as f64 + eps).sqrt()) as f32;
            let (mut sum_dy, mut sum_dy_xhat) = (0.0f64, 0.0f64);
            for b in 0..n {
                let start = (b * c + ch) * hw;
                let (xs, ys, gs) = (&x[start..][..hw], &out[start..][..hw], &dy[start..][..hw]);
                for i in 0..hw {
                    let g = if relu && ys[i] <= 0.0 {
                        0.0
                    } else {
                        gs[i] as f64
                    };
                    sum_dy += g;
                    sum_dy_xhat += g * (xs[i] - mu) as f64;
                }
            }
            sum_dy_xhat *= inv_std as f64;
            let k = gamma[ch] * inv_std;
            let a = (sum_dy / m) as f32;
            let bcoef = (sum_dy_xhat / m) as f32 * inv_std;
            for b in 0..n {
                let start = (b * c + ch) * hw;
                let (xs, ys, gs) = (&x[start..][..hw], &out[start..][..hw], &dy[start..][..hw]);
                // SAFETY: as in `forward`.
                let dst = unsafe { shared.range(start, hw) };
                for i in 0..hw {
                    let g = if relu && ys[i] <= 0.0 { 0.0 } else { gs[i] };
                    // xhat * sum(dy * xhat) / M == (x - mean) * inv_std^2 * sum(dy (x - mean)) / M
                    dst[i] = k * (g - a - (xs[i] - mu) * bcoef);
                }
            }
            (sum_dy_xhat as f32, sum_dy as f32)
        })
        .collect();
    let (dgamma, dbeta): (Vec<f32>, Vec<f32>) = sums.into_iter().unzip();
    (
        tensor(dx, &shape),
        tensor(dgamma, &[c]),
        tensor(dbeta, &[c]),
    )
}
