//! `kiln bench kernels`: each of kiln's fused kernels against its plain-burn reference on the
//! chosen device: median time, bytes the fused pass moves, effective GB/s, and the ratio.
//! On flex both columns run a plain-burn version (flex has no cube kernels); on wgpu and cuda
//! the fused column is the cubecl kernel. The cross-entropy reference column is the textbook
//! composition (log-softmax, gather, burn's autodiff), which is what kiln's loss replaced.

use std::process::ExitCode;
use std::time::Instant;

use anyhow::Result;
use burn::tensor::{DType, Device, Distribution, Int, Tensor};
use kiln_benches::median;
use kiln_engine::config::{Choice, DeviceKind};
use kiln_engine::data::transform::{IMAGENET_MEAN, IMAGENET_STD};
use kiln_engine::kernels::is_cube_device;
use kiln_engine::kernels::preprocess::{self, RawBatch};
use kiln_engine::kernels::sgd_update::{self, SgdParams};
use kiln_engine::kernels::{bucket, cross_entropy};

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
    Ok(median(&times))
}

/// The signature `sgd_update` and its reference share.
type SgdStep =
    fn(Tensor<1>, Tensor<1>, Option<Tensor<1>>, &SgdParams) -> (Tensor<1>, Option<Tensor<1>>);

/// Median seconds of one momentum SGD step over `n` elements. Parameter and buffer are passed
/// on, so the fused step can update them in place when it holds the only reference.
fn time_sgd(device: &Device, n: usize, iters: usize, step: SgdStep) -> Result<f64> {
    let random = || Tensor::<1>::random([n], Distribution::Normal(0.0, 1.0), device);
    let (mut p, g, mut b) = (random(), random(), Some(random()));
    let params = SgdParams {
        lr: 0.01,
        momentum: 0.9,
        dampening: 0.0,
        weight_decay: 1e-4,
        nesterov: false,
    };
    time(device, iters, || {
        let (np, nb) = step(p.clone(), g.clone(), b.take(), &params);
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

/// Median seconds of packing `n` values in 62 pieces (resnet18's parameter count) into an f16
/// bucket and unpacking it back to f32 pieces, through `pack` and `unpack`.
fn time_bucket(
    device: &Device,
    n: usize,
    iters: usize,
    pack: fn(&[Tensor<1>], DType) -> Tensor<1>,
    unpack: fn(Tensor<1>, &[usize]) -> Vec<Tensor<1>>,
) -> Result<f64> {
    let pieces = 62.min(n);
    let lens: Vec<usize> = (0..pieces)
        .map(|i| n / pieces + usize::from(i < n % pieces))
        .collect();
    let tensors: Vec<Tensor<1>> = lens
        .iter()
        .map(|&len| Tensor::<1>::random([len], Distribution::Normal(0.0, 1.0), device))
        .collect();
    time(device, iters, || {
        std::hint::black_box(unpack(pack(&tensors, DType::F16), &lens));
    })
}

/// Median seconds of preprocessing a batch of 224 x 224 images, `n` output values in all
/// (uploaded as bytes, half of them flipped), through `preprocess`.
fn time_preprocess(
    device: &Device,
    n: usize,
    iters: usize,
    preprocess: fn(&RawBatch<'_>, usize, [f32; 3], [f32; 3], &Device) -> Tensor<4>,
) -> Result<f64> {
    let (side, images) = (224, (n / (224 * 224 * 3)).max(1));
    let pixels: Vec<u8> = (0..images * side * side * 3)
        .map(|i| (i * 31 % 251) as u8)
        .collect();
    let crops = vec![(0, 0); images];
    let flips: Vec<bool> = (0..images).map(|i| i % 2 == 1).collect();
    let raw = RawBatch {
        pixels: &pixels,
        height: side,
        width: side,
        crops: &crops,
        flips: &flips,
    };
    time(device, iters, || {
        std::hint::black_box(preprocess(&raw, side, IMAGENET_MEAN, IMAGENET_STD, device));
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
pub fn run(device: DeviceKind, size_mb: f64, iters: usize, json: bool) -> Result<ExitCode> {
    crate::check::mib("--size-mb", size_mb, 16_384.0)?;
    crate::check::count("--iters", iters, 1, 1_000_000)?;
    let name = device.name();
    let device = device.open()?;
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
    rows.push(Row {
        kernel: "bucket_f16",
        elements: n,
        // Pack reads 4 and writes 2 bytes a value, unpack reads 2 and writes 4.
        bytes: 12.0 * n as f64,
        fused: time_bucket(&device, n, iters, bucket::pack, bucket::unpack)?,
        plain: time_bucket(
            &device,
            n,
            iters,
            bucket::reference::pack,
            bucket::reference::unpack,
        )?,
    });
    let pre_elements = (n / (224 * 224 * 3)).max(1) * 224 * 224 * 3;
    rows.push(Row {
        kernel: "preprocess",
        elements: pre_elements,
        // One byte uploaded and four written per value.
        bytes: 5.0 * pre_elements as f64,
        fused: time_preprocess(&device, n, iters, preprocess::preprocess)?,
        plain: time_preprocess(&device, n, iters, preprocess::reference::preprocess)?,
    });
    if json {
        // One JSON document: an array with a row per kernel.
        let rows: Vec<serde_json::Value> = rows
            .iter()
            .map(|r| {
                serde_json::json!({
                    "kernel": r.kernel, "device": name, "cube": is_cube_device(&device),
                    "elements": r.elements, "bytes": r.bytes, "fused_ms": r.fused * 1e3,
                    "reference_ms": r.plain * 1e3, "fused_gb_s": r.bytes / r.fused / 1e9,
                    "reference_gb_s": r.bytes / r.plain / 1e9, "speedup": r.plain / r.fused,
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(rows));
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
