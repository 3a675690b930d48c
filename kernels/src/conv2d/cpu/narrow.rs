//! Narrow GEMMs: `out [M, N] = W [M, K] x col [K, N]` for a handful of columns `N`, ResNet's
//! last stages at batch 1 (a 2 x 2 output against 512 x 4608 weights at 64 px).
//!
//! `gemm` vectorises along the destination's contiguous dimension, which for these is `N`: four
//! columns fill a quarter of each 16-lane register, and a batch-1 resnet18 forward at 64 px spent
//! half its time there (`x1x6` microkernel). Here each output is a dot product along `K`, where
//! the weight's rows and the columns, transposed to `colᵀ [N, K]`, are both contiguous: every lane
//! is busy whatever `N` is, and the weight is read as it lies, never packed. AVX-512 only;
//! elsewhere [`matmul`] returns `false` and the caller runs `gemm`.

use std::mem::MaybeUninit;

/// The most columns [`matmul`] takes. From 16 columns gemm's registers are full again, and with
/// 16 (batch 4 at 64 px) gemm was 5% faster.
pub(super) const MAX_COLUMNS: usize = 15;

/// Output rows per rayon task: 64 rows of a 4608-wide weight are about 1.2 MB to stream.
const ROWS_PER_TASK: usize = 64;

/// `out [m, n] = w [m, k] x col [k, n]` (row-major, `w`'s rows `k` apart) if this CPU has the
/// instructions for it; `false` (and nothing written) where it has not.
pub(super) fn matmul(
    m: usize,
    n: usize,
    k: usize,
    out: &mut [MaybeUninit<f32>],
    w: &[f32],
    col: &[f32],
) -> bool {
    assert!(n <= MAX_COLUMNS && out.len() >= m * n && w.len() >= m * k && col.len() >= k * n);
    #[cfg(target_arch = "x86_64")]
    if n > 0 && k > 0 && std::arch::is_x86_feature_detected!("avx512f") {
        use rayon::prelude::*;
        let mut colt = vec![0.0; n * k];
        for (l, values) in col[..k * n].chunks_exact(n).enumerate() {
            for (j, &v) in values.iter().enumerate() {
                colt[j * k + l] = v;
            }
        }
        out[..m * n]
            .par_chunks_mut(ROWS_PER_TASK * n)
            .enumerate()
            .for_each(|(task, out)| {
                let (first, rows) = (task * ROWS_PER_TASK, out.len() / n);
                // SAFETY: avx512f was detected above.
                unsafe { avx512::rows(rows, n, k, out, &w[first * k..][..rows * k], &colt) };
            });
        return true;
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (m, k, w, col);
    false
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;
    use std::mem::MaybeUninit;

    /// Rows and columns of a tile: 16 accumulators, with the four weight vectors and four
    /// column vectors of a step 24 of the 32 registers. Tried against 2 x 8 and 1 x 15 tiles
    /// that read the weight once for up to 8 or 15 columns: those were slower at every batch
    /// (with fewer of the weight's rows streaming at once, presumably), 1 x 15 by a third.
    const R: usize = 4;
    const C: usize = 4;

    /// Distance, in values, at which a tile's weight rows are prefetched ahead of their reads:
    /// 1 KB. The hardware streams them no faster than about 14 GB/s on one core, the whole
    /// batch-1 cost of the last stage; prefetching took a batch-1 resnet18 forward at 64 px from
    /// 6.1-6.2 ms to 4.6-5.3 (128 values: 4.8-5.5, 1024: 5.9).
    const PREFETCH: usize = 256;

    /// `out [m, n] = w [m, k] x colᵀ` in tiles of `R` rows by `C` columns, leftover rows one
    /// at a time. A tile's column blocks follow each other, so its rows come from the cache
    /// after the first.
    #[target_feature(enable = "avx512f")]
    pub(super) fn rows(
        m: usize,
        n: usize,
        k: usize,
        out: &mut [MaybeUninit<f32>],
        w: &[f32],
        colt: &[f32],
    ) {
        assert!(out.len() >= m * n && w.len() >= m * k && colt.len() >= n * k);
        let mut r = 0;
        while r < m {
            let rows = if m - r >= R { R } else { 1 };
            let w = &w[r * k..][..rows * k];
            for c in (0..n).step_by(C) {
                let x = &colt[c * k..][..(n - c).min(C) * k];
                let out = &mut out[r * n + c..];
                if rows == R {
                    Tile { w, x, k }.store::<R, C>(out, n);
                } else {
                    Tile { w, x, k }.store::<1, C>(out, n);
                }
            }
            r += rows;
        }
    }

    /// Up to `ROWS` weight rows against up to `COLS` transposed columns, each `k` long. Where the
    /// tile has fewer rows or columns than `ROWS` and `COLS`, the missing ones read the last present
    /// one again and their sums are not stored.
    struct Tile<'a> {
        w: &'a [f32],
        x: &'a [f32],
        k: usize,
    }

    impl Tile<'_> {
        /// The tile's dot products into `out` (its first row and column at `out[0]`, rows `n`
        /// apart): lane sums over 16-wide chunks of `k`, the tail masked.
        #[target_feature(enable = "avx512f")]
        fn store<const ROWS: usize, const COLS: usize>(
            &self,
            out: &mut [MaybeUninit<f32>],
            n: usize,
        ) {
            let (rows, cols) = (self.w.len() / self.k, self.x.len() / self.k);
            let k = self.k;
            let row_at = |i: usize| i.min(rows - 1) * k;
            let col_at = |j: usize| j.min(cols - 1) * k;
            let mut acc = [[_mm512_setzero_ps(); COLS]; ROWS];
            let mut xs = [_mm512_setzero_ps(); COLS];
            let mut i = 0;
            while i < k {
                let mask: __mmask16 = if k - i >= 16 {
                    u16::MAX
                } else {
                    ((1u32 << (k - i)) - 1) as u16
                };
                for (j, x) in xs.iter_mut().enumerate() {
                    let at = col_at(j) + i;
                    // SAFETY: the mask enables lanes `at..at + min(16, k - i)`, inside the
                    // column's `k` values.
                    *x = unsafe { _mm512_maskz_loadu_ps(mask, self.x.as_ptr().add(at)) };
                }
                for (r, acc) in acc.iter_mut().enumerate() {
                    let at = row_at(r) + i;
                    if i + PREFETCH < k {
                        // SAFETY: a prefetch of an address inside the row; it never faults.
                        unsafe {
                            _mm_prefetch::<_MM_HINT_T0>(self.w.as_ptr().add(at + PREFETCH).cast())
                        };
                    }
                    // SAFETY: as above, inside the row's `k` values.
                    let wv = unsafe { _mm512_maskz_loadu_ps(mask, self.w.as_ptr().add(at)) };
                    for (a, &x) in acc.iter_mut().zip(&xs) {
                        *a = _mm512_fmadd_ps(wv, x, *a);
                    }
                }
                i += 16;
            }
            for (i, acc) in acc.iter().enumerate().take(rows) {
                for (j, &a) in acc.iter().enumerate().take(cols) {
                    out[i * n + j].write(_mm512_reduce_add_ps(a));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every tile shape and tail: rows 1..=9 (whole and partial four-row tiles), columns
    /// 1..=15, `k` short of, at and past the 16-lane chunks, and a task boundary (70 rows).
    #[test]
    fn narrow_products_equal_the_plain_sums() {
        let value = |i: usize| ((i * 37 % 101) as f32 - 50.0) / 25.0;
        for (m, k) in [
            (1, 1),
            (3, 15),
            (4, 16),
            (5, 17),
            (9, 40),
            (70, 33),
            (8, 4608),
        ] {
            for n in 1..=MAX_COLUMNS {
                let w: Vec<f32> = (0..m * k).map(value).collect();
                let col: Vec<f32> = (0..k * n).map(|i| value(i + 7)).collect();
                let mut out = vec![MaybeUninit::new(f32::NAN); m * n];
                if !matmul(m, n, k, &mut out, &w, &col) {
                    eprintln!("no AVX-512 here: the narrow path is not taken");
                    return;
                }
                for i in 0..m {
                    for j in 0..n {
                        let want: f64 = (0..k)
                            .map(|l| f64::from(w[i * k + l]) * f64::from(col[l * n + j]))
                            .sum();
                        // SAFETY: written by matmul (NaN before, and the check would fail).
                        let got = f64::from(unsafe { out[i * n + j].assume_init() });
                        assert!(
                            (got - want).abs() <= 1e-4 * (1.0 + want.abs()),
                            "m {m} n {n} k {k}: out[{i}, {j}] = {got}, want {want}"
                        );
                    }
                }
            }
        }
    }
}
