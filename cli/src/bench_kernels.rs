//! `kiln bench kernels`: each of kiln's fused kernels against its plain-burn reference on the
//! chosen device: median time, bytes the fused pass moves, effective GB/s, and the ratio.
//! On flex both columns run the reference (flex has no cube kernels); on wgpu and cuda the
//! fused column is the cubecl kernel.

use std::process::ExitCode;
use std::time::Instant;

use anyhow::Result;
use burn::tensor::{Device, Distribution, Tensor};
use kiln_engine::kernels::sgd_update::{self, is_cube_device, reference};
use kiln_engine::train::trainer::device_by_name;

use crate::bench::median;

/// Median seconds of `iters` calls of `step` (after 2 warm-up calls), each synchronised.
fn time(device: &Device, iters: usize, mut step: impl FnMut()) -> Result<f64> {
    let mut times = Vec::with_capacity(iters);
    for i in 0..iters + 2 {
        let t = Instant::now();
        step();
        device
            .sync()
            .map_err(|e| anyhow::anyhow!("device sync: {e:?}"))?;
        if i >= 2 {
            times.push(t.elapsed().as_secs_f64());
        }
    }
    Ok(median(times))
}

/// The signature `sgd_update` and its reference share.
type SgdStep = fn(
    Tensor<1>,
    Tensor<1>,
    Option<Tensor<1>>,
    f64,
    f64,
    f64,
    f64,
    bool,
    bool,
) -> (Tensor<1>, Option<Tensor<1>>);

/// Median seconds of one momentum SGD step over `n` elements. Parameter and buffer are passed
/// on, so the fused step can update them in place when it holds the only reference.
fn time_sgd(device: &Device, n: usize, iters: usize, step: SgdStep) -> Result<f64> {
    let random = || Tensor::<1>::random([n], Distribution::Normal(0.0, 1.0), device);
    let (mut p, g, mut b) = (random(), random(), Some(random()));
    time(device, iters, || {
        let (np, nb) = step(
            p.clone(),
            g.clone(),
            b.take(),
            0.01,
            0.9,
            0.0,
            1e-4,
            false,
            false,
        );
        (p, b) = (np, nb);
    })
}

/// Runs `kiln bench kernels`.
pub fn run(device: &str, size_mb: f64, iters: usize, json: bool) -> Result<ExitCode> {
    let name = device;
    let device = device_by_name(device)?;
    let n = ((size_mb * 1048576.0 / 4.0) as usize).max(1);
    let fused = time_sgd(&device, n, iters, sgd_update::sgd_update)?;
    let plain = time_sgd(&device, n, iters, reference::sgd_update)?;
    // The fused pass reads param, grad and buffer and writes param and buffer: 5 x 4 bytes.
    let bytes = 5.0 * 4.0 * n as f64;
    let rows = [("sgd_update", fused, plain)];
    if json {
        for (kernel, fused, plain) in rows {
            println!(
                "{}",
                serde_json::json!({
                    "kernel": kernel, "device": name, "cube": is_cube_device(&device),
                    "elements": n, "bytes": bytes, "fused_ms": fused * 1e3,
                    "reference_ms": plain * 1e3, "fused_gb_s": bytes / fused / 1e9,
                    "reference_gb_s": bytes / plain / 1e9, "speedup": plain / fused,
                })
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    let kind = if is_cube_device(&device) {
        "cubecl kernel"
    } else {
        "no cube kernels here: both run the reference"
    };
    println!("device {name} ({kind}), {n} f32 elements, median of {iters}");
    println!(
        "{:<12} {:>10} {:>12} {:>10} {:>12} {:>12} {:>8}",
        "kernel", "MB moved", "fused ms", "GB/s", "reference ms", "ref GB/s", "speedup"
    );
    for (kernel, fused, plain) in rows {
        println!(
            "{kernel:<12} {:>10.1} {:>12.3} {:>10.2} {:>12.3} {:>12.2} {:>7.2}x",
            bytes / 1e6,
            fused * 1e3,
            bytes / fused / 1e9,
            plain * 1e3,
            bytes / plain / 1e9,
            plain / fused
        );
    }
    Ok(ExitCode::SUCCESS)
}
