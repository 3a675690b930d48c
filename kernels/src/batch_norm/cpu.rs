//! Training-mode batch norm (+ ReLU) on the CPU in two passes over memory each way.
//!
//! burn composes the forward from a transpose, two means over it, a subtraction, a square and
//! the normalisation (about eight passes), and the backward from about ten more; a ReLU after
//! it is one pass forward and one backward. Here, per channel (in parallel over channels):
//! - forward: one pass for the sum and sum of squares, one pass writing
//!   `max(0, (x - mean) * gamma / std + beta)`;
//! - backward: one pass for `sum dy` and `sum dy * xhat`, one pass writing
//!   `dx = gamma / std * (dy - sum dy / M - xhat * sum(dy * xhat) / M)`, `dy` masked by the
//!   ReLU, whose mask is recomputed from `x` (`x * scale + shift > 0`, exactly as the forward
//!   computed it) rather than read from the output: two streams in each pass, not three.
//!
//! Sums run in eight f32 lanes (SIMD) over up to a few thousand values of a channel at a time,
//! then in f64.

use burn::backend::TensorMetadata;
use rayon::prelude::*;
use wide::f32x8;

use crate::flex::{FlexTensor, Shared, f32_slice, filled, from_vec, unfilled};

const WHAT: &str = "batch_norm";

/// Lanes of the sums: one SIMD vector (two SSE registers, one AVX register).
const LANES: usize = 8;

/// Values that go into the f32 lanes before they are added into the f64 totals: sums of up to
/// a few thousand values keep f32's rounding far below the tolerance of the statistics, and
/// small planes (DenseNet's and ResNet's late stages, 2x2 to 7x7 pixels) share one flush
/// instead of paying one each.
const FLUSH: usize = 4096;

/// Two running sums over a channel's planes: eight f32 lanes each, added into f64 totals every
/// [`FLUSH`] values and at the end.
///
/// The lanes are explicit SIMD vectors: written as eight scalar accumulators, the compiler
/// packed each value's two terms into one register instead and ran the loads scalar.
struct Sums {
    lanes: [f32x8; 2],
    totals: [f64; 2],
    pending: usize,
}

impl Sums {
    fn new() -> Self {
        Self {
            lanes: [f32x8::ZERO; 2],
            totals: [0.0; 2],
            pending: 0,
        }
    }

    /// Adds `d` and `d * d` for each value `d = v - shift` of a plane.
    #[inline(always)]
    fn add_shifted(&mut self, plane: &[f32], shift: f32) {
        let shift_v = f32x8::splat(shift);
        let [mut sum, mut sq] = self.lanes;
        let mut add = |v: f32x8| {
            let d = v - shift_v;
            sum += d;
            sq += d * d;
        };
        let full = plane.len() / LANES * LANES;
        for start in (0..full).step_by(LANES) {
            add(load(&plane[start..]));
        }
        if full < plane.len() {
            add(padded(&plane[full..], shift));
        }
        self.lanes = [sum, sq];
        self.counted(plane.len());
    }

    /// Adds `g` and `g * (x - mean)` for each value of a plane, where `g` is the output
    /// gradient with the ReLU's mask applied.
    #[inline(always)]
    fn add_grad(&mut self, [xs, gs]: [&[f32]; 2], mean: f32, channel: Affine, relu: bool) {
        let (mean_v, zero) = (f32x8::splat(mean), f32x8::ZERO);
        let (scale, shift) = (f32x8::splat(channel.scale), f32x8::splat(channel.shift));
        let [mut sum, mut dot] = self.lanes;
        let mut add = |x: f32x8, g: f32x8| {
            let g = if relu {
                (x * scale + shift).simd_gt(zero).select(g, zero)
            } else {
                g
            };
            sum += g;
            dot += g * (x - mean_v);
        };
        let len = xs.len();
        let full = len / LANES * LANES;
        for start in (0..full).step_by(LANES) {
            add(load(&xs[start..]), load(&gs[start..]));
        }
        if full < len {
            // A zero gradient past the plane's end adds nothing to either sum.
            add(padded(&xs[full..], mean), padded(&gs[full..], 0.0));
        }
        self.lanes = [sum, dot];
        self.counted(len);
    }

    /// Flushes the lanes into the f64 totals once [`FLUSH`] values have gone into them.
    #[inline(always)]
    fn counted(&mut self, values: usize) {
        self.pending += values;
        if self.pending >= FLUSH {
            self.flush();
        }
    }

    fn flush(&mut self) {
        for (total, lanes) in self.totals.iter_mut().zip(&mut self.lanes) {
            *total += lanes.to_array().iter().map(|&v| v as f64).sum::<f64>();
            *lanes = f32x8::ZERO;
        }
        self.pending = 0;
    }

    fn totals(mut self) -> (f64, f64) {
        self.flush();
        (self.totals[0], self.totals[1])
    }
}

/// The first [`LANES`] values of `values`.
#[inline(always)]
fn load(values: &[f32]) -> f32x8 {
    f32x8::new(values[..LANES].try_into().expect("a whole vector"))
}

/// The last few values of a plane that is not a whole number of vectors (all of a plane
/// smaller than one, as late-stage 2x2 planes), padded with `pad`.
#[inline(always)]
fn padded(rest: &[f32], pad: f32) -> f32x8 {
    let mut values = [pad; LANES];
    values[..rest.len()].copy_from_slice(rest);
    f32x8::new(values)
}

/// A channel's normalisation as `y = x * scale + shift`.
#[derive(Clone, Copy)]
struct Affine {
    scale: f32,
    shift: f32,
}

impl Affine {
    /// From the f32 mean and variance the forward returns, so that the backward recomputes the
    /// forward's ReLU mask bit for bit.
    fn new(gamma: f32, beta: f32, mean: f32, var: f32, eps: f64) -> Self {
        let scale = gamma as f64 / (var as f64 + eps).sqrt();
        let shift = beta as f64 - mean as f64 * scale;
        Self {
            scale: scale as f32,
            shift: shift as f32,
        }
    }

    /// The output gradient `g` at input `x`, zero where the ReLU's output was not positive.
    #[inline(always)]
    fn masked(self, x: f32, g: f32, relu: bool) -> f32 {
        if relu && x * self.scale + self.shift <= 0.0 {
            0.0
        } else {
            g
        }
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
            let mut sums = Sums::new();
            for b in 0..n {
                sums.add_shifted(&x[(b * c + ch) * hw..][..hw], shift0);
            }
            let (sum, sq) = sums.totals();
            let shift0 = shift0 as f64;
            let mean_shifted = sum / m;
            let var = (sq / m - mean_shifted * mean_shifted).max(0.0);
            let (mean, var) = ((shift0 + mean_shifted) as f32, var as f32);
            let Affine { scale, shift } = Affine::new(gamma[ch], beta[ch], mean, var, eps);
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
            (mean, var)
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

/// (dx, dgamma, dbeta) given the forward's input, beta (for the ReLU mask), gamma, mean and
/// biased variance, and the output gradient.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    x: FlexTensor,
    beta: FlexTensor,
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
    let beta = f32_slice(&beta, WHAT);
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
            let channel = Affine::new(gamma[ch], beta[ch], mu, var[ch], eps);
            let mut sums = Sums::new();
            for b in 0..n {
                let start = (b * c + ch) * hw;
                sums.add_grad([&x[start..][..hw], &dy[start..][..hw]], mu, channel, relu);
            }
            let (sum_dy, mut sum_dy_xhat) = sums.totals();
            sum_dy_xhat *= inv_std as f64;
            let k = gamma[ch] * inv_std;
            let a = (sum_dy / m) as f32;
            let bcoef = (sum_dy_xhat / m) as f32 * inv_std;
            for b in 0..n {
                let start = (b * c + ch) * hw;
                let (xs, gs) = (&x[start..][..hw], &dy[start..][..hw]);
                // SAFETY: as in `forward`.
                let dst = unsafe { shared.range(start, hw) };
                for ((d, &xv), &gv) in dst.iter_mut().zip(xs).zip(gs) {
                    let g = channel.masked(xv, gv, relu);
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
