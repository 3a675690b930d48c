//! `kiln bench train | allreduce | predict | kernels | data`: kiln's own throughput, as a table or `--json`. The PyTorch peers
//! in `benches/peers/` measure the same work; `benches/compare.sh` runs both.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;

use crate::check;
use burn::tensor::{Distribution, Int, Tensor};
use clap::{Args, Subcommand};
use kiln_benches::{median, peak_rss_mb};
use kiln_engine::config::{Choice, DeviceKind, Precision, parse_choice};
use kiln_engine::data::transform::{IMAGENET_MEAN, IMAGENET_STD};
use kiln_engine::data::{Augment, ImageFolder, Loader, LoaderConfig, Sampler};
use kiln_engine::dist::launcher::{self, LaunchConfig};
use kiln_engine::dist::rendezvous::Warn;
use kiln_engine::dist::{ReduceOp, RingAllReduce, Solo, Transport, Wire, WorldInfo};
use kiln_engine::kernels::{self, cpu_info};
use kiln_engine::models::autocast::autocast;
use kiln_engine::train::loss::cross_entropy;
use kiln_engine::train::scaler::{self, LossScaler};
use kiln_engine::train::sgd::{Sgd, SgdConfig};
use kiln_engine::train::threads::{compute_pool, compute_threads, default_threads};
use kiln_models::Arch;

/// Arguments of `kiln bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(subcommand)]
    command: BenchCommand,
}

#[derive(Subcommand, Debug)]
enum BenchCommand {
    /// Full training steps (forward, loss, backward, SGD) on synthetic data.
    Train(TrainBench),
    /// kiln's ring allreduce between local worker processes (it starts them itself).
    Allreduce {
        /// Worker processes.
        #[arg(long, default_value_t = 2)]
        nproc: usize,
        /// MiB of f32 per allreduce.
        #[arg(long, default_value_t = 64.0)]
        size_mb: f64,
        /// Timed allreduces (after 2 warm-up ones).
        #[arg(long, default_value_t = 10)]
        iters: usize,
        /// f16 on the wire.
        #[arg(long)]
        fp16: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Inference with a trained model directory, as `kiln predict` runs it, on random input.
    Predict {
        /// The trained model directory.
        #[arg(long)]
        model: PathBuf,
        /// Images per forward pass.
        #[arg(long, default_value_t = 8)]
        batch_size: usize,
        /// Timed passes (after 2 warm-up ones).
        #[arg(long, default_value_t = 10)]
        iters: usize,
        /// cpu, wgpu, cuda or vulkan.
        #[arg(long, default_value = "cpu", value_parser = parse_choice::<DeviceKind>)]
        device: DeviceKind,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// kiln's fused kernels against their plain-burn references on one device.
    Kernels {
        /// cpu, wgpu, cuda or vulkan.
        #[arg(long, default_value = "cpu", value_parser = parse_choice::<DeviceKind>)]
        device: DeviceKind,
        /// MiB of f32 per tensor (default: about resnet18's 11.7M parameters).
        #[arg(long, default_value_t = 44.6)]
        size_mb: f64,
        /// Timed calls (after 2 warm-up ones).
        #[arg(long, default_value_t = 20)]
        iters: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// The loader over an image folder: decode, training transform, batching.
    Data(DataBench),
}

/// Arguments of `kiln bench data`.
#[derive(Args, Debug)]
struct DataBench {
    /// An image folder (class sub-folders).
    dir: PathBuf,
    /// Image side.
    #[arg(long, default_value_t = 224)]
    image_size: u32,
    /// Images per batch.
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    /// Decode threads.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Leave the flip and the normalisation to the device, as training on a GPU does (the
    /// loader then crops and resizes only).
    #[arg(long)]
    raw: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Arguments of `kiln bench train`.
#[derive(Args, Debug)]
struct TrainBench {
    /// Architecture.
    #[arg(long, default_value = "resnet18", value_parser = parse_choice::<Arch>)]
    arch: Arch,
    /// Images per step.
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    /// Image side.
    #[arg(long, default_value_t = 64)]
    image_size: usize,
    /// Timed steps (after the warm-up steps).
    #[arg(long, default_value_t = 10)]
    steps: usize,
    /// Untimed steps first (a GPU's kernel compilation and autotuning happen in them).
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// cpu, wgpu, cuda, vulkan or auto.
    #[arg(long, default_value = "cpu", value_parser = parse_choice::<DeviceKind>)]
    device: DeviceKind,
    /// auto, f32, tf32, bf16 or f16, as `kiln train --precision`.
    #[arg(long, default_value = "auto", value_parser = parse_choice::<Precision>)]
    precision: Precision,
    /// Compute threads (default: the cores this process may use), as `kiln train --threads`.
    #[arg(long, allow_negative_numbers = true)]
    threads: Option<usize>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Runs `kiln bench`.
pub fn run(args: BenchArgs) -> Result<ExitCode> {
    match args.command {
        BenchCommand::Kernels {
            device,
            size_mb,
            iters,
            json,
        } => crate::bench_kernels::run(device, size_mb, iters, json),
        BenchCommand::Train(bench) => {
            let threads = bench.threads.unwrap_or_else(default_threads);
            check::count("--threads", threads, 1, kiln_engine::config::MAX_THREADS)?;
            // Inside the pool, as `Trainer::fit` runs.
            compute_pool(threads)?.install(|| train(&bench))
        }
        BenchCommand::Allreduce {
            nproc,
            size_mb,
            iters,
            fp16,
            json,
        } => allreduce(nproc, size_mb, iters, fp16, json),
        BenchCommand::Predict {
            model,
            batch_size,
            iters,
            device,
            json,
        } => {
            // Inside a pool, as `kiln predict` and each of `kiln serve`'s model copies run.
            compute_pool(default_threads())?
                .install(|| predict(&model, batch_size, iters, device, json))
        }
        BenchCommand::Data(bench) => data(&bench),
    }
}

/// `kiln bench train`: the trainer's SGD steps of `arch` (its autocast and loss scaling
/// included) on synthetic data, median of `steps` after `warmup` untimed ones, with the device
/// and machine they ran on and, on the CPU, the step's GFLOP/s against the GEMM peak of the
/// same threads.
fn train(bench: &TrainBench) -> Result<ExitCode> {
    let &TrainBench {
        arch,
        batch_size,
        image_size,
        steps,
        warmup,
        device,
        precision,
        json,
        ..
    } = bench;
    check::count("--batch-size", batch_size, 1, 65_536)?;
    let sizes = kiln_engine::config::IMAGE_SIZES;
    check::count(
        "--image-size",
        image_size,
        *sizes.start() as usize,
        *sizes.end() as usize,
    )?;
    check::count("--steps", steps, 1, 1_000_000)?;
    check::count("--warmup", warmup, 0, 1_000_000)?;
    let opened = kiln_engine::device::open(device)?;
    let precision = precision.on(opened.backend)?;
    let device = opened.device.autodiff();
    let on_cpu = kernels::is_flex_device(&device);
    // Measured before the model exists, on an idle pool.
    let peak = on_cpu.then(|| cpu_info::gemm_peak_gflops(2048));
    let classes = 10;
    device.seed(1);
    let mut model = arch.init(classes, &device);
    let mut sgd = Sgd::new(SgdConfig {
        momentum: 0.9,
        dampening: 0.0,
        weight_decay: 0.0,
        nesterov: false,
    });
    let x = Tensor::<4>::random(
        [batch_size, 3, image_size, image_size],
        Distribution::Normal(0.0, 1.0),
        &device,
    );
    let y = Tensor::<1, Int>::random(
        [batch_size],
        Distribution::Uniform(0.0, classes as f64),
        &device,
    );
    // The trainer's step: autocast, and f16's loss scaling.
    let mut loss_scaler = (precision == Precision::F16).then(LossScaler::default);
    let mut times = Vec::new();
    for i in 0..steps + warmup {
        let t = Instant::now();
        let logits = autocast(precision.low(), || model.forward(x.clone()));
        let loss = cross_entropy(logits, y.clone());
        let grads = scaler::backward(&model, loss.clone(), loss_scaler.as_ref());
        if let Some(grads) = scaler::for_sgd(&model, grads, loss_scaler.as_mut()) {
            model = sgd.step(model, grads, 0.001, 0.001);
        }
        let _: f32 = loss.into_scalar();
        if i >= warmup {
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    let step_ms = median(&times);
    let ips = batch_size as f64 / step_ms * 1e3;
    // A step is the forward's multiply-adds three times over (forward, input gradient, weight
    // gradient), two FLOPs each.
    let step_flops = 6.0 * arch.forward_macs(image_size, classes) as f64 * batch_size as f64;
    let gflops = step_flops / step_ms / 1e6;
    let (cpu, simd) = (cpu_info::cpu_model(), cpu_info::gemm_simd());
    let threads = compute_threads();
    if json {
        println!(
            "{}",
            serde_json::json!({
                "engine": "kiln", "device": opened.name, "precision": precision.name(),
                "arch": arch.name(), "batch_size": batch_size,
                "image_size": image_size, "median_images_per_s": ips,
                "median_step_ms": step_ms, "times_ms": times, "peak_rss_mb": peak_rss_mb(),
                "cpu": cpu, "simd": on_cpu.then_some(simd), "threads": threads,
                "gflops": gflops, "peak_gflops": peak,
                "peak_fraction": peak.map(|p| gflops / p),
            })
        );
    } else {
        match peak {
            Some(p) => println!("{cpu}, gemm {simd}, {threads} threads, GEMM peak {p:.0} GFLOP/s"),
            None => println!("{}, host {cpu}", opened.name),
        }
        println!(
            "{:<12} {:>6} {:>6} {:>12} {:>10} {:>10} {:>8} {:>10}",
            "arch", "batch", "px", "step ms", "img/s", "GFLOP/s", "of peak", "RSS MiB"
        );
        let share = peak.map_or("-".to_string(), |p| format!("{:.0}%", 100.0 * gflops / p));
        println!(
            "{:<12} {:>6} {:>6} {:>12.1} {:>10.1} {:>10.0} {:>8} {:>10.0}",
            arch.name(),
            batch_size,
            image_size,
            step_ms,
            ips,
            gflops,
            share,
            peak_rss_mb()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `kiln bench predict`: eval forward passes of a trained model directory on random input.
fn predict(
    model: &std::path::Path,
    batch_size: usize,
    iters: usize,
    device: DeviceKind,
    json: bool,
) -> Result<ExitCode> {
    check::count("--batch-size", batch_size, 1, 65_536)?;
    check::count("--iters", iters, 1, 1_000_000)?;
    let device = device.open()?;
    let (net, info) = kiln_engine::model_dir::load(model, &device)?;
    let s = info.image_size as usize;
    let x = Tensor::<4>::random(
        [batch_size, 3, s, s],
        Distribution::Normal(0.0, 1.0),
        &device,
    );
    let mut times = Vec::new();
    for i in 0..iters + 2 {
        let t = Instant::now();
        let _ = net.forward(x.clone()).into_data();
        if i >= 2 {
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    let ms = median(&times);
    let ips = batch_size as f64 / ms * 1e3;
    if json {
        println!(
            "{}",
            serde_json::json!({"engine": "kiln", "arch": info.arch, "batch_size": batch_size,
                "image_size": s, "median_ms": ms, "images_per_s": ips, "times_ms": times})
        );
    } else {
        println!(
            "{:<14} {:>6} {:>6} {:>10} {:>10}",
            "arch", "batch", "px", "ms", "img/s"
        );
        println!(
            "{:<14} {:>6} {:>6} {:>10.1} {:>10.1}",
            info.arch, batch_size, s, ms, ips
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `kiln bench data`: the loader over an image folder with the training transform, and the
/// cores it needs per 1,000 images a second (its decode threads over its rate).
fn data(bench: &DataBench) -> Result<ExitCode> {
    let &DataBench {
        image_size,
        batch_size,
        workers,
        raw,
        json,
        ..
    } = bench;
    let sizes = kiln_engine::config::IMAGE_SIZES;
    check::count(
        "--image-size",
        image_size as usize,
        *sizes.start() as usize,
        *sizes.end() as usize,
    )?;
    check::count("--batch-size", batch_size, 1, 65_536)?;
    check::count("--workers", workers, 1, 1024)?;
    let folder = ImageFolder::scan(&bench.dir)?;
    let loader = Loader::new(
        folder.samples.clone(),
        LoaderConfig {
            batch_size,
            image_size,
            augment: Some(Augment::Standard),
            seed: 1,
            workers,
            prefetch: 2,
            skip_bad_images: false,
            mean: IMAGENET_MEAN,
            std: IMAGENET_STD,
            raw,
        },
    )?;
    let sampler = Sampler {
        len: folder.len(),
        world: 1,
        rank: 0,
        shuffle: true,
        seed: 1,
    };
    let start = Instant::now();
    let mut images = 0;
    for batch in loader.batches(0, sampler.indices(0)) {
        images += batch?.len();
    }
    let secs = start.elapsed().as_secs_f64();
    let rate = images as f64 / secs;
    let cores_per_1000 = workers as f64 * 1000.0 / rate;
    if json {
        println!(
            "{}",
            serde_json::json!({"engine": "kiln", "images": images, "seconds": secs,
                "images_per_s": rate, "workers": workers, "raw": raw,
                "cores_per_1000_images_per_s": cores_per_1000, "peak_rss_mb": peak_rss_mb()})
        );
    } else {
        println!(
            "{:<8} {:>10} {:>10} {:>8} {:>16} {:>10}",
            "images", "seconds", "img/s", "workers", "cores/1000 img/s", "RSS MiB"
        );
        println!(
            "{:<8} {:>10.2} {:>10.1} {:>8} {:>16.2} {:>10.0}",
            images,
            secs,
            rate,
            workers,
            cores_per_1000,
            peak_rss_mb()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `kiln bench allreduce`: as the launcher, starts `nproc` copies of this command; as a worker
/// (`RANK` set), times allreduces and, on rank 0, prints the result.
fn allreduce(nproc: usize, size_mb: f64, iters: usize, fp16: bool, json: bool) -> Result<ExitCode> {
    check::count("--nproc", nproc, 1, launcher::MAX_WORKERS_PER_NODE)?;
    check::mib("--size-mb", size_mb, 16_384.0)?;
    check::count("--iters", iters, 1, 1_000_000)?;
    if std::env::var_os("RANK").is_none() {
        let program = std::env::current_exe()?;
        let args = std::env::args_os().skip(1).collect();
        let mut launch = LaunchConfig::local(program, args, nproc);
        // Only rank 0 prints the result: unprefixed, so `--json` is one JSON document.
        launch.prefix_output = false;
        let outcome = launcher::launch(&launch)?;
        for (rank, what) in &outcome.failures {
            eprintln!("error: worker rank {rank} {what}");
        }
        return Ok(if outcome.success() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        });
    }
    let world = WorldInfo::from_env()?;
    let warn: Warn = Arc::new(|m: &str| eprintln!("warning: {m}"));
    let mut ring: Box<dyn Transport> = if world.world_size > 1 {
        Box::new(RingAllReduce::join(&world, warn)?)
    } else {
        Box::new(Solo)
    };
    let len = (size_mb * (1 << 20) as f64 / 4.0) as usize;
    let mut data: Vec<f32> = (0..len).map(|i| (i % 1000) as f32).collect();
    let wire = if fp16 { Wire::F16 } else { Wire::F32 };
    let mut times = Vec::new();
    for i in 0..iters + 2 {
        ring.barrier()?;
        let t = Instant::now();
        ring.allreduce_with(&mut data, ReduceOp::Average, wire)?;
        if i >= 2 {
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    ring.finish()?;
    if world.rank != 0 {
        return Ok(ExitCode::SUCCESS);
    }
    let ms = median(&times);
    let n = world.world_size as f64;
    let bytes = len as f64 * 4.0;
    // nccl-tests' definitions: algorithm bandwidth, and bus bandwidth = algbw * 2(n-1)/n.
    let algbw = bytes / (ms / 1e3) / 1e9;
    let busbw = algbw * 2.0 * (n - 1.0) / n;
    if json {
        println!(
            "{}",
            serde_json::json!({
                "engine": "kiln", "ranks": world.world_size, "size_mb": size_mb, "fp16": fp16,
                "median_ms": ms, "algbw_gb_s": algbw, "busbw_gb_s": busbw, "times_ms": times,
            })
        );
    } else {
        println!(
            "{:>6} {:>10} {:>12} {:>12} {:>12}",
            "ranks", "MiB", "median ms", "algbw GB/s", "busbw GB/s"
        );
        println!(
            "{:>6} {:>10.1} {:>12.2} {:>12.2} {:>12.2}",
            world.world_size, size_mb, ms, algbw, busbw
        );
    }
    Ok(ExitCode::SUCCESS)
}
