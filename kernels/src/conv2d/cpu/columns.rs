//! im2col and col2im: an image's (or the batch's) pixels as the columns of the convolution's
//! GEMM and back. Rows `(c, ky, kx)`, columns `(image, oy, ox)`; a row is copied from its input
//! plane by a shift when the convolution keeps the width ([`Shift`]), gathered through a table
//! for small images, else copied output row by output row.

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::Geometry;
use crate::flex::{copy, fill, zeroed};

/// `col [C*KH*KW, N*P]`: rows `(c, ky, kx)` over all channels, columns `(image, oy, ox)`.
pub(super) fn im2col(x: &[f32], g: &Geometry, col: &mut [MaybeUninit<f32>]) {
    if g.p() < GATHER_MAX_PIXELS && !g.pointwise() {
        return im2col_gather(x, g, col);
    }
    col.par_chunks_mut(g.np())
        .enumerate()
        .for_each(|(row, out)| im2col_row(x, g, row, out));
}

/// Images with fewer output pixels than this are im2col'd by [`im2col_gather`]: their rows are
/// too short (DenseNet's 4x4 and 2x2 stages: 16 and 4 values) for a copy and zero fills per
/// row to pay (measured: 3x3 convolutions' im2col at 4x4 and 2x2 pixels 2x and 3.4x faster).
const GATHER_MAX_PIXELS: usize = 64;

/// im2col by a table of where each `(tap, pixel)` reads in its plane, worked out once: each
/// channel's planes are copied next to a zero that padding reads, then every tap's values are
/// gathered from there. Each rayon task writes one channel's `KH*KW` rows.
fn im2col_gather(x: &[f32], g: &Geometry, col: &mut [MaybeUninit<f32>]) {
    let (p, np, hw, taps) = (g.p(), g.np(), g.h * g.w, g.kh * g.kw);
    let table = gather_table(g);
    col.par_chunks_mut(taps * np)
        .enumerate()
        .for_each(|(c, rows)| {
            let mut plane = vec![0.0; hw + 1];
            for b in 0..g.n {
                plane[..hw].copy_from_slice(&x[(b * g.c + c) * hw..][..hw]);
                for (tap, reads) in table.chunks_exact(p).enumerate() {
                    let dst = &mut rows[tap * np + b * p..][..p];
                    for (d, &i) in dst.iter_mut().zip(reads) {
                        d.write(plane[i as usize]);
                    }
                }
            }
        });
}

/// For each tap `(ky, kx)` and output pixel `(oy, ox)`, the index in its input plane that it
/// reads, or `H*W` (the zero after the plane) where it reads padding.
fn gather_table(g: &Geometry) -> Vec<u32> {
    let hw = g.h * g.w;
    let mut table = Vec::with_capacity(g.kh * g.kw * g.p());
    for ky in 0..g.kh {
        for kx in 0..g.kw {
            let (lo, hi) = g.valid_ox(kx);
            for oy in 0..g.oh {
                let iy = g.input_row(oy, ky);
                table.extend((0..g.ow).map(|ox| match iy {
                    Some(iy) if (lo..hi).contains(&ox) => {
                        (iy * g.w + ox * g.stride[1] + kx * g.dilation[1] - g.padding[1]) as u32
                    }
                    _ => hw as u32,
                }));
            }
        }
    }
    table
}

/// Row `(c, ky, kx)` of the im2col matrix: `out [N*P]`.
pub(super) fn im2col_row(x: &[f32], g: &Geometry, row: usize, out: &mut [MaybeUninit<f32>]) {
    let (p, hw) = (g.p(), g.h * g.w);
    let (sx, dx, px) = (g.stride[1], g.dilation[1], g.padding[1]);
    let c = row / (g.kh * g.kw);
    let ky = row / g.kw % g.kh;
    let kx = row % g.kw;
    if let Some(shift) = Shift::new(g, ky, kx) {
        for (b, dst) in out.chunks_exact_mut(p).enumerate() {
            shift.apply(&x[(b * g.c + c) * hw..][..hw], dst);
        }
        return;
    }
    let (lo, hi) = g.valid_ox(kx);
    for b in 0..g.n {
        let plane = &x[(b * g.c + c) * hw..][..hw];
        for oy in 0..g.oh {
            let dst = &mut out[b * p + oy * g.ow..][..g.ow];
            let Some(iy) = g.input_row(oy, ky) else {
                fill(dst, 0.0);
                continue;
            };
            let src = &plane[iy * g.w..][..g.w];
            fill(&mut dst[..lo], 0.0);
            fill(&mut dst[hi..], 0.0);
            if lo == hi {
                // This tap column reads only padding.
            } else if sx == 1 {
                let start = lo + kx * dx - px;
                copy(&mut dst[lo..hi], &src[start..start + (hi - lo)]);
            } else {
                for (ox, v) in dst[lo..hi].iter_mut().enumerate() {
                    v.write(src[(ox + lo) * sx + kx * dx - px]);
                }
            }
        }
    }
}

/// An im2col row's tap `(ky, kx)` when the output rows are as wide as the input's (stride 1,
/// "same" padding across): then the row is the input plane shifted by a constant offset, so the
/// valid output rows are one contiguous copy, after which the columns that wrapped around into
/// the neighbouring input row (`ox` outside `lo..hi`) and the rows outside the image are zeroed.
/// Worked out once per tap, applied to every plane.
pub(super) struct Shift {
    /// Output values `start..stop` are `plane[i + offset]`; the rest of the image's part is zero.
    start: usize,
    stop: usize,
    offset: isize,
    /// Output values of the rows inside the image, whose columns outside `lo..hi` wrapped.
    rows: std::ops::Range<usize>,
    w: usize,
    lo: usize,
    hi: usize,
}

impl Shift {
    /// `None` when the convolution is strided or its output rows are not as wide as the input's.
    pub(super) fn new(g: &Geometry, ky: usize, kx: usize) -> Option<Self> {
        if g.stride != [1, 1] || g.ow != g.w {
            return None;
        }
        let (w, hw) = (g.w, g.h * g.w);
        let (row_shift, col_shift) = (ky * g.dilation[0], kx * g.dilation[1]);
        // Output rows whose input row `oy + row_shift - padding` lies in `0..h`.
        let first = g.padding[0].saturating_sub(row_shift).min(g.oh);
        let end = (g.h + g.padding[0])
            .saturating_sub(row_shift)
            .min(g.oh)
            .max(first);
        // dst[i] = plane[i + offset] over the valid rows, clipped to the plane (what the
        // clipping leaves out lies in columns outside `lo..hi`, zero either way).
        let offset =
            (row_shift * w + col_shift) as isize - (g.padding[0] * w + g.padding[1]) as isize;
        let start = ((first * w) as isize).max(-offset);
        let stop = ((end * w) as isize).min(hw as isize - offset);
        let (start, stop) = if start < stop {
            (start as usize, stop as usize)
        } else {
            (first * w, first * w)
        };
        let (lo, hi) = g.valid_ox(kx);
        Some(Self {
            start,
            stop,
            offset,
            rows: first * w..end * w,
            w,
            lo,
            hi,
        })
    }

    /// One image's part of the row, `dst [P]`, from its channel's `plane`.
    pub(super) fn apply(&self, plane: &[f32], dst: &mut [MaybeUninit<f32>]) {
        let (start, stop) = (self.start, self.stop);
        fill(&mut dst[..start], 0.0);
        if start < stop {
            let src = (start as isize + self.offset) as usize;
            copy(&mut dst[start..stop], &plane[src..src + (stop - start)]);
        }
        fill(&mut dst[stop..], 0.0);
        for row in dst[self.rows.clone()].chunks_exact_mut(self.w) {
            for v in &mut row[..self.lo] {
                v.write(0.0);
            }
            for v in &mut row[self.hi..] {
                v.write(0.0);
            }
        }
    }
}

/// `dx [N, C, H, W] = sum over (ky, kx)` of the matching `dcol` rows (col2im).
pub(super) fn col2im(dcol: &[f32], g: &Geometry, dx: &mut [MaybeUninit<f32>]) {
    dx.par_chunks_mut(g.h * g.w)
        .enumerate()
        .for_each(|(plane_index, plane)| col2im_plane(dcol, g, plane_index, plane));
}

/// Plane `(image, c)` of col2im: zeroed, then every `dcol` row of channel `c` summed in.
pub(super) fn col2im_plane(
    dcol: &[f32],
    g: &Geometry,
    plane_index: usize,
    plane: &mut [MaybeUninit<f32>],
) {
    let (p, np) = (g.p(), g.np());
    let (sx, dxl, px) = (g.stride[1], g.dilation[1], g.padding[1]);
    let (b, c) = (plane_index / g.c, plane_index % g.c);
    let plane = zeroed(plane);
    for ky in 0..g.kh {
        for kx in 0..g.kw {
            let row = (c * g.kh + ky) * g.kw + kx;
            let src = &dcol[row * np + b * p..][..p];
            let (lo, hi) = g.valid_ox(kx);
            for oy in 0..g.oh {
                let Some(iy) = g.input_row(oy, ky) else {
                    continue;
                };
                let dst = &mut plane[iy * g.w..][..g.w];
                let s = &src[oy * g.ow..][..g.ow];
                if lo == hi {
                    // This tap column reads only padding.
                } else if sx == 1 {
                    let start = lo + kx * dxl - px;
                    for (d, v) in dst[start..start + (hi - lo)].iter_mut().zip(&s[lo..hi]) {
                        *d += v;
                    }
                } else {
                    for ox in lo..hi {
                        dst[ox * sx + kx * dxl - px] += s[ox];
                    }
                }
            }
        }
    }
}
