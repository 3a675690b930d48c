//! conv2d on the CPU as whole-batch GEMMs.
//!
//! burn's flex convolution runs one GEMM per image and per tile of at most 512 output pixels,
//! so at small spatial sizes (ResNet's last stages at 64 px have 4 to 16 pixels an image) every
//! GEMM is a narrow sliver that re-packs the whole weight matrix for a handful of columns. Here
//! the columns of all images go side by side: one im2col matrix `col [C*KH*KW, N*OH*OW]` (rows
//! `(c, ky, kx)`, columns `(image, oy, ox)`) and, per group, one GEMM with the batch's pixels as
//! its long dimension:
//!
//! - forward: `out'[Co, N*P] = W[Co, K] x col[K, N*P]`, then `out'` is transposed into NCHW;
//! - weight gradient: `dW[Co, K] = dout'[Co, N*P] x col^T` (col recomputed, not kept);
//! - input gradient: `dcol[K, N*P] = W^T x dout'`, then col2im sums it back into `dx`.
//!
//! Layers with 64 or more output pixels an image run image by image instead ([`per_image`]):
//! there one image's GEMM is wide enough on its own and works straight on NCHW.
//!
//! The GEMMs are the `gemm` crate's (AVX2/AVX-512 microkernels chosen at run time, a portable
//! fallback elsewhere); im2col, col2im and the transposes run on rayon's pool.

use std::mem::MaybeUninit;

use gemm::{Parallelism, gemm};
use rayon::prelude::*;

use crate::flex::{FlexTensor, copy, f32_slice, fill, filled, from_vec, unfilled};

mod columns;
mod narrow;
mod per_image;

use columns::{col2im, im2col};

const WHAT: &str = "conv2d";

/// Output pixels an image from which the convolution runs image by image ([`per_image`]) rather
/// than as one GEMM over the batch's pixels side by side (measured; see benches/README.md).
const PER_IMAGE_MIN_PIXELS: usize = 64;

/// Shapes and options of one convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub co: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: [usize; 2],
    pub padding: [usize; 2],
    pub dilation: [usize; 2],
    pub groups: usize,
    pub oh: usize,
    pub ow: usize,
}

impl Geometry {
    /// # Panics
    /// When the channels do not divide into the groups or the kernel does not fit.
    pub fn new(
        x: [usize; 4],
        weight: [usize; 4],
        stride: [usize; 2],
        padding: [usize; 2],
        dilation: [usize; 2],
        groups: usize,
    ) -> Self {
        let [n, c, h, w] = x;
        let [co, cg, kh, kw] = weight;
        assert!(
            groups > 0 && c % groups == 0 && co % groups == 0,
            "conv2d: channels {c} -> {co} do not divide into {groups} groups"
        );
        assert_eq!(
            cg,
            c / groups,
            "conv2d: weight expects {} input channels per group, input has {}",
            cg,
            c / groups
        );
        assert!(
            stride[0] > 0 && stride[1] > 0 && dilation[0] > 0 && dilation[1] > 0,
            "conv2d: zero stride or dilation"
        );
        let out = |size: usize, k: usize, s: usize, p: usize, d: usize| {
            let span = d * (k - 1) + 1;
            assert!(
                size + 2 * p >= span,
                "conv2d: a {k}-tap kernel does not fit {size} + 2 x {p} padding"
            );
            (size + 2 * p - span) / s + 1
        };
        Self {
            n,
            c,
            h,
            w,
            co,
            kh,
            kw,
            stride,
            padding,
            dilation,
            groups,
            oh: out(h, kh, stride[0], padding[0], dilation[0]),
            ow: out(w, kw, stride[1], padding[1], dilation[1]),
        }
    }

    /// Input channels per group.
    fn cg(&self) -> usize {
        self.c / self.groups
    }

    /// Output channels per group.
    fn cog(&self) -> usize {
        self.co / self.groups
    }

    /// Rows of one group's im2col block (= columns of its weight matrix).
    fn k(&self) -> usize {
        self.cg() * self.kh * self.kw
    }

    /// Output pixels per image.
    fn p(&self) -> usize {
        self.oh * self.ow
    }

    /// Output pixels of the batch: the GEMMs' long dimension.
    fn np(&self) -> usize {
        self.n * self.p()
    }

    /// Whether each image has pixels enough for its own GEMMs ([`per_image`]).
    fn per_image(&self) -> bool {
        self.p() >= PER_IMAGE_MIN_PIXELS
    }

    /// A 1x1, stride-1, unpadded convolution: an image `[C, H*W]` is its own im2col matrix.
    fn pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == [1, 1] && self.padding == [0, 0]
    }

    /// For a stride-1 convolution, the geometry under which the input gradient is the forward
    /// convolution of the output gradient with the flipped, transposed weight
    /// ([`flipped_weight`]) padded by `dilation * (k - 1) - padding`: one im2col of the
    /// gradient's `Co` channels instead of a `C*KH*KW`-row `dcol` summed back by col2im. `None`
    /// for strided and 1x1 convolutions, padding wider than the kernel's reach, and where the
    /// gradient has more channels than the input. DenseNet's 128 -> 32 gained 2-4% a step;
    /// ResNet's same-width 3x3 convolutions, at first measured no faster than col2im, gained 5%
    /// on resnet18 at 64 px once the GEMMs ran AVX-512 (2026-12-03) and are level at 224 px.
    fn input_grad_as_forward(&self) -> Option<Self> {
        if self.stride != [1, 1] || self.kh * self.kw == 1 || self.co > self.c {
            return None;
        }
        let reach = |k: usize, d: usize, p: usize| (d * (k - 1)).checked_sub(p);
        let padding = [
            reach(self.kh, self.dilation[0], self.padding[0])?,
            reach(self.kw, self.dilation[1], self.padding[1])?,
        ];
        let g = Self::new(
            [self.n, self.co, self.oh, self.ow],
            [self.c, self.cog(), self.kh, self.kw],
            [1, 1],
            padding,
            self.dilation,
            self.groups,
        );
        debug_assert_eq!((g.oh, g.ow), (self.h, self.w));
        Some(g)
    }

    /// The same convolution of a single image.
    fn one_image(&self) -> Self {
        Self { n: 1, ..*self }
    }

    /// The output columns `ox` whose input column `ox * s + kx * d - pad` lies in `0..w`.
    fn valid_ox(&self, kx: usize) -> (usize, usize) {
        let (s, d, pad) = (self.stride[1], self.dilation[1], self.padding[1]);
        let off = kx * d;
        // ox * s + off >= pad  <=>  ox >= ceil((pad - off) / s)
        let lo = if off >= pad {
            0
        } else {
            (pad - off).div_ceil(s)
        };
        // ox * s + off - pad <= w - 1  <=>  ox <= (w - 1 + pad - off) / s
        let hi = if self.w + pad > off {
            ((self.w - 1 + pad - off) / s + 1).min(self.ow)
        } else {
            0
        };
        (lo.min(hi), hi)
    }

    /// Input row of output row `oy` under kernel row `ky`, if inside the image.
    fn input_row(&self, oy: usize, ky: usize) -> Option<usize> {
        let y = oy * self.stride[0] + ky * self.dilation[0];
        y.checked_sub(self.padding[0]).filter(|&y| y < self.h)
    }
}

/// `t` `[a, b, p]` with its two outer axes swapped: `[b, a, p]`. Between the GEMMs' channel-major
/// `[Co, N*P]` and NCHW's `[N, Co, P]`, both ways.
fn swap_outer(t: &[f32], a: usize, b: usize, p: usize) -> Vec<f32> {
    let mut out = unfilled(t.len());
    out.par_chunks_mut(p.max(1))
        .enumerate()
        .for_each(|(i, dst)| {
            let (j, k) = (i / a, i % a);
            copy(dst, &t[(k * b + j) * p..][..p]);
        });
    // SAFETY: the chunks cover the buffer and each was copied into.
    unsafe { filled(out) }
}

/// How a GEMM runs: on rayon's pool or on the calling thread, and whether it overwrites its
/// destination or adds to it.
#[derive(Clone, Copy)]
struct Run {
    parallelism: Parallelism,
    accumulate: bool,
}

/// One GEMM on the whole pool, overwriting its destination.
const POOL: Run = Run {
    parallelism: Parallelism::Rayon(0),
    accumulate: false,
};

/// Row-major `dst[m, n] = lhs x rhs` (or `+=` with `run.accumulate`, when `dst[..m * n]` has been
/// written before), each operand given by (row stride, column stride). Without `accumulate`
/// every element of `dst[..m * n]` is written and none is read.
#[allow(clippy::too_many_arguments)]
fn matmul(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [MaybeUninit<f32>],
    lhs: &[f32],
    lhs_strides: (usize, usize),
    rhs: &[f32],
    rhs_strides: (usize, usize),
    run: Run,
) {
    if m == 0 || n == 0 || (k == 0 && run.accumulate) {
        return;
    }
    if k == 0 {
        fill(&mut dst[..m * n], 0.0);
        return;
    }
    // Bounds of what the GEMM reads and writes, checked here because it takes raw pointers.
    assert!(dst.len() >= m * n);
    assert!(lhs.len() > (m - 1) * lhs_strides.0 + (k - 1) * lhs_strides.1);
    assert!(rhs.len() > (k - 1) * rhs_strides.0 + (n - 1) * rhs_strides.1);
    // SAFETY: the pointers are valid for the extents asserted above; dst does not alias; with
    // read_dst false the GEMM writes dst without reading it, and with `accumulate` the caller
    // has written it.
    unsafe {
        gemm(
            m,
            n,
            k,
            dst.as_mut_ptr().cast::<f32>(),
            1,
            n as isize,
            run.accumulate,
            lhs.as_ptr(),
            lhs_strides.1 as isize,
            lhs_strides.0 as isize,
            rhs.as_ptr(),
            rhs_strides.1 as isize,
            rhs_strides.0 as isize,
            if run.accumulate { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            run.parallelism,
        );
    }
}

/// The convolution of `x` `[N, C, H, W]` with `weight` `[Co, C/groups, KH, KW]` (no bias).
pub fn conv2d(x: FlexTensor, weight: FlexTensor, g: &Geometry) -> FlexTensor {
    let out_shape = [g.n, g.co, g.oh, g.ow];
    if g.n * g.co * g.p() == 0 {
        return from_vec(vec![0.0; out_shape.iter().product()], &out_shape);
    }
    let x = f32_slice(&x, WHAT);
    let w = f32_slice(&weight, WHAT);
    from_vec(forward(&x, &w, g), &out_shape)
}

/// Gradient of the convolution with respect to its weight, given the output gradient.
pub fn conv2d_weight_grad(x: FlexTensor, grad: FlexTensor, g: &Geometry) -> FlexTensor {
    let w_shape = [g.co, g.cg(), g.kh, g.kw];
    let dw = if g.np() == 0 {
        vec![0.0; g.co * g.k()]
    } else {
        let x = f32_slice(&x, WHAT);
        let grad = f32_slice(&grad, WHAT);
        if g.per_image() {
            per_image::weight_grad(&x, &grad, g)
        } else {
            batched_weight_grad(&x, &grad, g)
        }
    };
    from_vec(dw, &w_shape)
}

/// Gradient of the convolution with respect to its input `[N, C, H, W]`.
pub fn conv2d_input_grad(weight: FlexTensor, grad: FlexTensor, g: &Geometry) -> FlexTensor {
    let x_shape = [g.n, g.c, g.h, g.w];
    let len = x_shape.iter().product();
    if g.np() == 0 || len == 0 {
        return from_vec(vec![0.0; len], &x_shape);
    }
    let w = f32_slice(&weight, WHAT);
    let grad = f32_slice(&grad, WHAT);
    let dx = if let Some(full) = g.input_grad_as_forward() {
        forward(&grad, &flipped_weight(&w, g), &full)
    } else if g.per_image() {
        per_image::input_grad(&w, &grad, g)
    } else {
        batched_input_grad(&w, &grad, g)
    };
    from_vec(dx, &x_shape)
}

/// `out [N, Co, OH, OW]` of `x` and `w`, image by image or batched.
fn forward(x: &[f32], w: &[f32], g: &Geometry) -> Vec<f32> {
    if g.per_image() {
        per_image::forward(x, w, g)
    } else {
        batched_forward(x, w, g)
    }
}

/// The weight of the input gradient's forward convolution ([`Geometry::input_grad_as_forward`]):
/// `w' [C, Co/groups, KH, KW]` with, within each group, input and output channels swapped and
/// the taps reversed.
fn flipped_weight(w: &[f32], g: &Geometry) -> Vec<f32> {
    let (cg, cog, taps) = (g.cg(), g.cog(), g.kh * g.kw);
    let mut flipped = unfilled(w.len());
    flipped
        .par_chunks_mut(cog * taps)
        .enumerate()
        .for_each(|(row, dst)| {
            let (group, i) = (row / cg, row % cg);
            for (o, dst) in dst.chunks_mut(taps).enumerate() {
                let src = &w[((group * cog + o) * cg + i) * taps..][..taps];
                for (d, &v) in dst.iter_mut().zip(src.iter().rev()) {
                    d.write(v);
                }
            }
        });
    // SAFETY: every (group, i, o) block of taps was written.
    unsafe { filled(flipped) }
}

/// Forward with the batch's pixels side by side: `out' = W x col`, transposed into NCHW.
fn batched_forward(x: &[f32], w: &[f32], g: &Geometry) -> Vec<f32> {
    let (k, np, cog) = (g.k(), g.np(), g.cog());
    let col = im2col_matrix(x, g);
    let mut out = unfilled(g.co * np);
    for group in 0..g.groups {
        let (dst, w, col) = (
            &mut out[group * cog * np..][..cog * np],
            &w[group * cog * k..][..cog * k],
            &col[group * k * np..][..k * np],
        );
        if np > narrow::MAX_COLUMNS || !narrow::matmul(cog, np, k, dst, w, col) {
            matmul(cog, np, k, dst, w, (k, 1), col, (np, 1), POOL);
        }
    }
    // SAFETY: the groups' GEMMs wrote every row of `out`.
    let out = unsafe { filled(out) };
    swap_outer(&out, g.co, g.n, g.p())
}

/// The whole im2col matrix `[groups * K, N * P]` of `x`.
fn im2col_matrix(x: &[f32], g: &Geometry) -> Vec<f32> {
    let mut col = unfilled(g.groups * g.k() * g.np());
    im2col(x, g, &mut col);
    // SAFETY: im2col writes every element (zeros where the kernel reads padding).
    unsafe { filled(col) }
}

/// Weight gradient with the batch's pixels side by side: `dW = dout' x col^T`.
fn batched_weight_grad(x: &[f32], grad: &[f32], g: &Geometry) -> Vec<f32> {
    let (k, np, cog) = (g.k(), g.np(), g.cog());
    let grad = swap_outer(grad, g.n, g.co, g.p());
    let col = im2col_matrix(x, g);
    let mut dw = unfilled(g.co * k);
    for group in 0..g.groups {
        matmul(
            cog,
            k,
            np,
            &mut dw[group * cog * k..][..cog * k],
            &grad[group * cog * np..],
            (np, 1),
            &col[group * k * np..],
            (1, np),
            POOL,
        );
    }
    // SAFETY: every group's rows were written by its GEMM.
    unsafe { filled(dw) }
}

/// Input gradient with the batch's pixels side by side: `dcol = W^T x dout'`, then col2im.
fn batched_input_grad(w: &[f32], grad: &[f32], g: &Geometry) -> Vec<f32> {
    let (k, np, cog) = (g.k(), g.np(), g.cog());
    let grad = swap_outer(grad, g.n, g.co, g.p());
    let mut dcol = unfilled(g.groups * k * np);
    for group in 0..g.groups {
        matmul(
            k,
            np,
            cog,
            &mut dcol[group * k * np..][..k * np],
            &w[group * cog * k..],
            (1, k),
            &grad[group * cog * np..],
            (np, 1),
            POOL,
        );
    }
    // SAFETY: every group's rows were written by its GEMM.
    let dcol = unsafe { filled(dcol) };
    if g.pointwise() {
        // Each dcol row is one channel's pixels, nothing to sum: col2im is a transpose, and
        // col2im's per-plane loops cost 5x the transpose on 4x4 and 2x2 planes.
        return swap_outer(&dcol, g.c, g.n, g.p());
    }
    let mut dx = unfilled(g.n * g.c * g.h * g.w);
    col2im(&dcol, g, &mut dx);
    // SAFETY: col2im zeroes each plane before summing into it.
    unsafe { filled(dx) }
}
