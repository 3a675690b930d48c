//! The convolution one image at a time, for layers with many output pixels an image.
//!
//! With `P` pixels an image large enough to fill the GEMM's tiles, each image's GEMM works
//! straight on NCHW: `out[b] [Co, P] = W x col_b`, `dW += dout[b] x col_b^T` and
//! `dcol_b = W^T x dout[b]`, so the batched path's transposes between `[Co, N*P]` and NCHW go,
//! one image's im2col block (a few MB) stays in cache between being written and read instead
//! of a whole-batch matrix of up to 100+ MB, and a 1x1 stride-1 unpadded convolution needs no
//! im2col at all (the image is its own column matrix). The batch is cut into one run of
//! images per rayon thread, each run's GEMMs on its own thread.

use std::mem::MaybeUninit;

use gemm::Parallelism;
use rayon::prelude::*;

use super::columns::{Shift, col2im_plane, im2col_row};
use super::{Geometry, Run, matmul};
use crate::flex::{filled, unfilled, written};

/// Images per run, and how each run's GEMMs are parallelised: one run per thread when the
/// batch has at least as many images as the pool has threads, else one run whose GEMMs use
/// the whole pool.
fn runs(n: usize) -> (usize, Parallelism) {
    let threads = rayon::current_num_threads().max(1);
    if n >= threads && threads > 1 {
        (n.div_ceil(threads), Parallelism::None)
    } else {
        (n.max(1), Parallelism::Rayon(0))
    }
}

/// An im2col buffer for one image, empty when the convolution needs none.
fn column_buffer(g: &Geometry) -> Vec<MaybeUninit<f32>> {
    if g.pointwise() {
        Vec::new()
    } else {
        unfilled(g.groups * g.k() * g.p())
    }
}

/// Image `x` (`[C, H, W]`) as its column matrix `[groups * K, P]`: the image itself for a
/// pointwise convolution, else its im2col written into `buffer`. `one` is the geometry at n 1.
fn columns<'a>(x: &'a [f32], one: &Geometry, buffer: &'a mut [MaybeUninit<f32>]) -> &'a [f32] {
    if one.pointwise() {
        return x;
    }
    let (taps, hw) = (one.kh * one.kw, one.h * one.w);
    let shifts: Option<Vec<Shift>> = (0..taps)
        .map(|t| Shift::new(one, t / one.kw, t % one.kw))
        .collect();
    match shifts {
        Some(shifts) => {
            for (row, out) in buffer.chunks_mut(one.p()).enumerate() {
                shifts[row % taps].apply(&x[row / taps * hw..][..hw], out);
            }
        }
        None => {
            for (row, out) in buffer.chunks_mut(one.p()).enumerate() {
                im2col_row(x, one, row, out);
            }
        }
    }
    // SAFETY: `Shift::apply` and `im2col_row` each write every element of their row.
    unsafe { written(buffer) }
}

/// `out [N, Co, OH, OW]`.
pub(super) fn forward(x: &[f32], w: &[f32], g: &Geometry) -> Vec<f32> {
    let one = g.one_image();
    let (k, p, cog) = (g.k(), g.p(), g.cog());
    let (x_len, out_len) = (g.c * g.h * g.w, g.co * p);
    let (images, parallelism) = runs(g.n);
    let run = Run {
        parallelism,
        accumulate: false,
    };
    let mut out = unfilled(g.n * out_len);
    out.par_chunks_mut(images * out_len)
        .zip(x.par_chunks(images * x_len))
        .for_each(|(out, x)| {
            let mut buffer = column_buffer(g);
            for (out, x) in out.chunks_mut(out_len).zip(x.chunks(x_len)) {
                let col = columns(x, &one, &mut buffer);
                for group in 0..g.groups {
                    matmul(
                        cog,
                        p,
                        k,
                        &mut out[group * cog * p..][..cog * p],
                        &w[group * cog * k..],
                        (k, 1),
                        &col[group * k * p..],
                        (p, 1),
                        run,
                    );
                }
            }
        });
    // SAFETY: every image's groups were written by their GEMMs.
    unsafe { filled(out) }
}

/// `dW [Co, C/groups, KH, KW]`: each run sums its images' gradients, then the runs are summed.
pub(super) fn weight_grad(x: &[f32], grad: &[f32], g: &Geometry) -> Vec<f32> {
    let one = g.one_image();
    let (k, p, cog) = (g.k(), g.p(), g.cog());
    let (x_len, out_len) = (g.c * g.h * g.w, g.co * p);
    let (images, parallelism) = runs(g.n);
    let mut parts: Vec<Vec<f32>> = grad
        .par_chunks(images * out_len)
        .zip(x.par_chunks(images * x_len))
        .map(|(grad, x)| {
            let mut buffer = column_buffer(g);
            let mut dw = unfilled(g.co * k);
            for (i, (grad, x)) in grad.chunks(out_len).zip(x.chunks(x_len)).enumerate() {
                let col = columns(x, &one, &mut buffer);
                let run = Run {
                    parallelism,
                    accumulate: i > 0,
                };
                for group in 0..g.groups {
                    matmul(
                        cog,
                        k,
                        p,
                        &mut dw[group * cog * k..][..cog * k],
                        &grad[group * cog * p..],
                        (p, 1),
                        &col[group * k * p..],
                        (1, p),
                        run,
                    );
                }
            }
            // SAFETY: the run's first image wrote every group's rows; the others added.
            unsafe { filled(dw) }
        })
        .collect();
    let mut dw = parts.swap_remove(0);
    for part in &parts {
        dw.par_chunks_mut(1 << 14)
            .zip(part.par_chunks(1 << 14))
            .for_each(|(d, s)| d.iter_mut().zip(s).for_each(|(d, s)| *d += s));
    }
    dw
}

/// `dx [N, C, H, W]`: per image `dcol = W^T x dout[b]`, then col2im (for a pointwise
/// convolution the GEMM writes `dx[b]` directly).
pub(super) fn input_grad(w: &[f32], grad: &[f32], g: &Geometry) -> Vec<f32> {
    let one = g.one_image();
    let (k, p, cog) = (g.k(), g.p(), g.cog());
    let (x_len, out_len, hw) = (g.c * g.h * g.w, g.co * p, g.h * g.w);
    let (images, parallelism) = runs(g.n);
    let run = Run {
        parallelism,
        accumulate: false,
    };
    let mut dx = unfilled(g.n * x_len);
    dx.par_chunks_mut(images * x_len)
        .zip(grad.par_chunks(images * out_len))
        .for_each(|(dx, grad)| {
            let mut buffer = column_buffer(g);
            for (dx, grad) in dx.chunks_mut(x_len).zip(grad.chunks(out_len)) {
                let pointwise = g.pointwise();
                let dcol = if pointwise { &mut *dx } else { &mut buffer[..] };
                for group in 0..g.groups {
                    matmul(
                        k,
                        p,
                        cog,
                        &mut dcol[group * k * p..][..k * p],
                        &w[group * cog * k..],
                        (1, k),
                        &grad[group * cog * p..],
                        (p, 1),
                        run,
                    );
                }
                if !pointwise {
                    // SAFETY: every group's rows were written by its GEMM.
                    let dcol = unsafe { written(&mut buffer) };
                    for (c, plane) in dx.chunks_mut(hw).enumerate() {
                        col2im_plane(dcol, &one, c, plane);
                    }
                }
            }
        });
    // SAFETY: each image was written by its GEMMs (pointwise) or by col2im, which zeroes each
    // plane before summing into it.
    unsafe { filled(dx) }
}
