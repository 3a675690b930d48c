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
//! Sums run in eight f32 lanes (SIMD) over up to a few thousand values of a channel at a time,
//! then in f64.

use burn::backend::TensorMetadata;
use rayon::prelude::*;

use crate::flex::{FlexTensor, Shared, f32_slice, filled, from_vec, unfilled};

const WHAT: &str = "batch_norm";

/// Lanes of the per-plane sums: independent f32 accumulators the compiler turns into one SIMD
/// register each.
const LANES: usize = 8;

/// Values that go into the f32 lanes before they are added into the f64 totals: sums of up to
/// a few thousand values keep f32's rounding far below the tolerance of the statistics, and
/// small planes (DenseNet's and ResNet's late stages, 2x2 to 7x7 pixels) share one flush
/// instead of paying one each.
const FLUSH: usize = 4096;

/// Two running sums over a channel's planes: eight f32 lanes each (SIMD), added into f64 totals
/// every [`FLUSH`] values and at the end.
#[derive(Default)]
struct Sums {
    lanes: [[f32; LANES]; 2],
    totals: [f64; 2],
    pending: usize,
}

impl Sums {
    /// Adds `f(i)` for `i` in `0..len` to the sums, where `f` gives the two terms of value `i`.
    #[inline(always)]
    fn add(&mut self, len: usize, f: impl Fn(usize) -> (f32, f32)) {
        let full = len / LANES * LANES;
        for start in (0..full).step_by(LANES) {
            for j in 0..LANES {
                let (a, b) = f(start + j);
                self.lanes[0][j] += a;
                self.lanes[1][j] += b;
            }
        }
        for i in full..len {
            let (a, b) = f(i);
            self.totals[0] += a as f64;
            self.totals[1] += b as f64;
        }
        self.pending += full;
        if self.pending >= FLUSH {
            self.flush();
        }
    }

    fn flush(&mut self) {
        for (total, lanes) in self.totals.iter_mut().zip(&mut self.lanes) {
            *total += lanes.iter().map(|&v| v as f64).sum::<f64>();
            *lanes = [0.0; LANES];
        }
        self.pending = 0;
    }

    fn totals(mut self) -> (f64, f64) {
        self.flush();
        (self.totals[0], self.totals[1])
    }
}

/// The output gradient `g` with the ReLU's mask applied: zero where the output `y` is not
/// positive.
#[inline(always)]
fn masked(y: f32, g: f32, relu: bool) -> f32 {
    if relu && y <= 0.0 { 0.0 } else { g }
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
    let x = f32_slice(&x, WHAT);
    let gamma = f32_slice(&gamma, WHAT);
    let beta = f32_slice(&beta, WHAT);
    let m = (n * hw) as f64;
    let mut out = unfilled(x.len());
    let shared = Shared::new(&mut out);
    let stats: Vec<(f32, f32)> = (0..c)
        .into_par_iter()
        .map(|ch| {
            // Sums of values shifted by the channel's first value, so a large mean next to a
            // small spread does not cancel the variance away: f32 lanes within a plane, f64
            // across planes.
            let shift0 = x[ch * hw];
            let mut sums = Sums::default();
            for b in 0..n {
                let plane = &x[(b * c + ch) * hw..][..hw];
                sums.add(hw, |i| {
                    let d = plane[i] - shift0;
                    (d, d * d)
                });
            }
            let (sum, sq) = sums.totals();
            let shift0 = shift0 as f64;
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
                        d.write((v * scale + shift).max(0.0));
                    }
                } else {
                    for (d, &v) in dst.iter_mut().zip(src) {
                        d.write(v * scale + shift);
                    }
                }
            }
            (mean as f32, var as f32)
        })
        .collect();
    let (mean, var): (Vec<f32>, Vec<f32>) = stats.into_iter().unzip();
    // SAFETY: the channels' tasks wrote every (image, channel) plane.
    let out = unsafe { filled(out) };
    (
        from_vec(out, &shape),
        from_vec(mean, &[c]),
        from_vec(var, &[c]),
    )
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
    let x = f32_slice(&x, WHAT);
    let out = f32_slice(&output, WHAT);
    let gamma = f32_slice(&gamma, WHAT);
    let mean = f32_slice(&mean, WHAT);
    let var = f32_slice(&var, WHAT);
    let dy = f32_slice(&grad, WHAT);
    let m = (n * hw) as f64;
    let mut dx = unfilled(x.len());
    let shared = Shared::new(&mut dx);
    let sums: Vec<(f32, f32)> = (0..c)
        .into_par_iter()
        .map(|ch| {
            let mu = mean[ch];
            let inv_std = (1.0 / (var[ch] as f64 + eps).sqrt()) as f32;
            let mut sums = Sums::default();
            for b in 0..n {
                let start = (b * c + ch) * hw;
                let (xs, ys, gs) = (&x[start..][..hw], &out[start..][..hw], &dy[start..][..hw]);
                sums.add(hw, |i| {
                    let g = masked(ys[i], gs[i], relu);
                    (g, g * (xs[i] - mu))
                });
            }
            let (sum_dy, mut sum_dy_xhat) = sums.totals();
            sum_dy_xhat *= inv_std as f64;
            let k = gamma[ch] * inv_std;
            let a = (sum_dy / m) as f32;
            let bcoef = (sum_dy_xhat / m) as f32 * inv_std;
            for b in 0..n {
                let start = (b * c + ch) * hw;
                let (xs, ys, gs) = (&x[start..][..hw], &out[start..][..hw], &dy[start..][..hw]);
                // SAFETY: as in `forward`.
                let dst = unsafe { shared.range(start, hw) };
                for (((d, &xv), &yv), &gv) in dst.iter_mut().zip(xs).zip(ys).zip(gs) {
                    let g = masked(yv, gv, relu);
                    // xhat * sum(dy * xhat) / M == (x - mean) * inv_std^2 * sum(dy (x - mean)) / M
                    d.write(k * (g - a - (xv - mu) * bcoef));
                }
            }
            (sum_dy_xhat as f32, sum_dy as f32)
        })
        .collect();
    let (dgamma, dbeta): (Vec<f32>, Vec<f32>) = sums.into_iter().unzip();
    // SAFETY: as for the forward's output.
    let dx = unsafe { filled(dx) };
    (
        from_vec(dx, &shape),
        from_vec(dgamma, &[c]),
        from_vec(dbeta, &[c]),
    )
}
