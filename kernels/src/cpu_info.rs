//! What the CPU kernels run on: the processor's name, the instruction set the `gemm` crate's
//! run-time dispatch picks for the convolutions' GEMMs, and the GEMM peak those give on the
//! current thread pool, the yardstick a training step's GFLOP/s is read against.

use std::time::Instant;

use gemm::{Parallelism, gemm};

/// The processor's model name as the OS reports it (`/proc/cpuinfo`'s first `model name`), or
/// the architecture's name where it does not say.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .filter_map(|line| line.split_once(':'))
                .find(|(key, _)| key.trim() == "model name")
                .map(|(_, name)| name.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

/// The microkernel family `gemm` dispatches to on this CPU, decided as `gemm-common`'s
/// `init_gemm_fn` decides it: `avx512f` (kiln builds gemm with its `x86-v4` feature), else
/// `fma` (AVX2 + FMA), else `scalar`; `neon` on 64-bit ARM.
pub fn gemm_simd() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            return "avx512f";
        }
        if std::arch::is_x86_feature_detected!("fma") {
            return "fma";
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        if std::arch::is_aarch64_feature_detected!("neon") {
            return "neon";
        }
    }
    "scalar"
}

/// The best GFLOP/s of a few square f32 GEMMs of side `n` on the current rayon pool, the
/// convolutions' own GEMM call: the most a step's multiply-adds can run at here. `n` = 2048
/// takes about a third of a second on two cores at 200 GFLOP/s.
pub fn gemm_peak_gflops(n: usize) -> f64 {
    let a: Vec<f32> = (0..n * n).map(|i| (i % 7) as f32 * 0.25).collect();
    let b: Vec<f32> = (0..n * n).map(|i| (i % 5) as f32 * 0.5).collect();
    let mut c = vec![0f32; n * n];
    let mut best = f64::INFINITY;
    for _ in 0..4 {
        let t = Instant::now();
        // SAFETY: the three buffers are n x n, row-major, and c does not alias a or b.
        unsafe {
            gemm(
                n,
                n,
                n,
                c.as_mut_ptr(),
                1,
                n as isize,
                false,
                a.as_ptr(),
                1,
                n as isize,
                b.as_ptr(),
                1,
                n as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                Parallelism::Rayon(0),
            );
        }
        best = best.min(t.elapsed().as_secs_f64());
    }
    std::hint::black_box(&c);
    2.0 * (n as f64).powi(3) / best / 1e9
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_machine_is_described() {
        assert!(!cpu_model().is_empty());
        assert!(["avx512f", "fma", "neon", "scalar"].contains(&gemm_simd()));
        let peak = gemm_peak_gflops(128);
        assert!(peak.is_finite() && peak > 0.0, "{peak}");
    }
}
