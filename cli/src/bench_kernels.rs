//! `kiln bench kernels`: each of kiln's fused kernels against its plain-burn reference on the
//! chosen device: median time, bytes the fused pass moves, effective GB/s, and the ratio.
//! On flex both columns run a plain-burn version (flex has no cube kernels); on wgpu and cuda
//! the fused column is the cubecl kernel. The cross-entropy reference column is the textbook
//! composition (log-softmax, gather, burn's autodiff), which is what kiln's loss replaced.

use std::process::ExitCode;
use std::time::Instant;

use anyhow::Result;
use burn::tensor::{Device, Distribution, Int, Tensor};
use kiln_engine::kernels::cross_entropy;
use kiln_engine::kernels::sgd_update::{self, is_cube_device};
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

/// Median seconds of a training loss step over logits `[n / 1000, 1000]` (ImageNet's classes):
/// forward, then backward to the logits, through `loss`.
fn time_cross_entropy(
    device: &Device,
    n: usize,
    iters: usize,
    loss: fn(Tensor<2>, Tensor<1, Int>, f64) -> Tensor<1>,
) -> Result<f64> {
    let (rows, classes) = ((n / 1000).max(1), 1000);
    let device = device.clone().autodiff();
    let logits = Tensor::<2>::random([rows, classes], Distribution::Normal(0.0, 4.0), &device);
    let targets = Tensor::<1, Int>::random([rows], Distribution::Uniform(0.0, 1000.0), &device);
    time(&device, iters, || {
        let x = logits.clone().require_grad();
        let grads = loss(x.clone(), targets.clone(), 0.1).mean().backward();
        std::hint::black_box(x.grad(&grads));
    })
}

/// One line of the table: a kernel, how many elements and bytes its fused pass moves, and the
/// two median times.
struct Row {
    kernel: &'static str,
    elements: usize,
    bytes: f64,
    fused: f64,
    plain: f64,
}

/// Runs `kiln bench kernels`.
pub fn run(device: &str, size_mb: f64, iters: usize, json: bool) -> Result<ExitCode> {
    let name = device;
    let device = device_by_name(device)?;
    let n = ((size_mb * 1048576.0 / 4.0) as usize).max(1);
    let mut rows = Vec::new();
    rows.push(Row {
        kernel: "sgd_update",
        elements: n,
        // Reads param, grad and buffer, writes param and buffer: 5 x 4 bytes.
        bytes: 5.0 * 4.0 * n as f64,
        fused: time_sgd(&device, n, iters, sgd_update::sgd_update)?,
        plain: time_sgd(&device, n, iters, sgd_update::reference::sgd_update)?,
    });
    let ce_elements = (n / 1000).max(1) * 1000;
    rows.push(Row {
        kernel: "cross_entropy",
        elements: ce_elements,
        // Forward reads the logits twice; backward reads them once and writes the gradient.
        bytes: 4.0 * 4.0 * ce_elements as f64,
        fused: time_cross_entropy(&device, n, iters, cross_entropy::cross_entropy_rows)?,
        plain: time_cross_entropy(
            &device,
            n,
            iters,
            cross_entropy::reference::cross_entropy_textbook,
        )?,
    });
    if json {
        for r in &rows {
            println!(
                "{}",
                serde_json::json!({
                    "kernel": r.kernel, "device": name, "cube": is_cube_device(&device),
                    "elements": r.elements, "bytes": r.bytes, "fused_ms": r.fused * 1e3,
                    "reference_ms": r.plain * 1e3, "fused_gb_s": r.bytes / r.fused / 1e9,
                    "reference_gb_s": r.bytes / r.plain / 1e9, "speedup": r.plain / r.fused,
                })
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    let kind = if is_cube_device(&device) {
        "cubecl kernels"
    } else {
        "no cube kernels here: both columns run the reference"
    };
    println!("device {name} ({kind}), about {n} f32 elements per kernel, median of {iters}");
    println!(
        "{:<14} {:>10} {:>10} {:>12} {:>10} {:>12} {:>12} {:>8}",
        "kernel", "elements", "MB moved", "fused ms", "GB/s", "reference ms", "ref GB/s", "speedup"
    );
    for r in &rows {
        println!(
            "{:<14} {:>10} {:>10.1} {:>12.3} {:>10.2} {:>12.3} {:>12.2} {:>7.2}x",
            r.kernel,
            r.elements,
            r.bytes / 1e6,
            r.fused * 1e3,
            r.bytes / r.fused / 1e9,
            r.plain * 1e3,
            r.bytes / r.plain / 1e9,
            r.plain / r.fused
        );
    }
    Ok(ExitCode::SUCCESS)
}
