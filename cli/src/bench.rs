//! `kiln bench train | data`: kiln's own throughput, as a table or `--json`. The PyTorch peers
//! in `benches/peers/` measure the same work; `benches/compare.sh` runs both.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Result;
use burn::optim::GradientsParams;
use burn::tensor::{Distribution, Int, Tensor};
use clap::{Args, Subcommand};
use kiln_engine::data::transform::{IMAGENET_MEAN, IMAGENET_STD};
use kiln_engine::data::{Augment, ImageFolder, Loader, LoaderConfig, Sampler};
use kiln_engine::train::loss::cross_entropy;
use kiln_engine::train::sgd::{Sgd, SgdConfig};
use kiln_engine::train::trainer::device_by_name;
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
    Train {
        /// Architecture.
        #[arg(long, default_value = "resnet18")]
        arch: String,
        /// Images per step.
        #[arg(long, default_value_t = 16)]
        batch_size: usize,
        /// Image side.
        #[arg(long, default_value_t = 64)]
        image_size: usize,
        /// Timed steps (after 2 warm-up steps).
        #[arg(long, default_value_t = 10)]
        steps: usize,
        /// cpu, wgpu or cuda.
        #[arg(long, default_value = "cpu")]
        device: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// The loader over an image folder: decode, training transform, batching.
    Data {
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
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Peak resident memory of this process, in MiB (Linux), or 0.
fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|kb| kb.parse::<f64>().ok())
            })
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Runs `kiln bench`.
pub fn run(args: BenchArgs) -> Result<ExitCode> {
    match args.command {
        BenchCommand::Train {
            arch,
            batch_size,
            image_size,
            steps,
            device,
            json,
        } => {
            let arch: Arch = arch.parse()?;
            let device = device_by_name(&device)?.autodiff();
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
            let mut times = Vec::new();
            for i in 0..steps + 2 {
                let t = Instant::now();
                let loss = cross_entropy(model.forward(x.clone()), y.clone());
                let grads = GradientsParams::from_grads(loss.backward(), &model);
                model = sgd.step(model, grads, 0.001, 0.001);
                let _: f32 = loss.into_scalar();
                if i >= 2 {
                    times.push(t.elapsed().as_secs_f64() * 1e3);
                }
            }
            let step_ms = median(times.clone());
            let ips = batch_size as f64 / step_ms * 1e3;
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "engine": "kiln", "arch": arch.name(), "batch_size": batch_size,
                        "image_size": image_size, "median_images_per_s": ips,
                        "median_step_ms": step_ms, "times_ms": times, "peak_rss_mb": peak_rss_mb(),
                    })
                );
            } else {
                println!(
                    "{:<12} {:>6} {:>6} {:>12} {:>10} {:>10}",
                    "arch", "batch", "px", "step ms", "img/s", "RSS MiB"
                );
                println!(
                    "{:<12} {:>6} {:>6} {:>12.1} {:>10.1} {:>10.0}",
                    arch.name(),
                    batch_size,
                    image_size,
                    step_ms,
                    ips,
                    peak_rss_mb()
                );
            }
        }
        BenchCommand::Data {
            dir,
            image_size,
            batch_size,
            workers,
            json,
        } => {
            let folder = ImageFolder::scan(&dir)?;
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
            if json {
                println!(
                    "{}",
                    serde_json::json!({"engine": "kiln", "images": images, "seconds": secs,
                        "images_per_s": images as f64 / secs, "peak_rss_mb": peak_rss_mb()})
                );
            } else {
                println!(
                    "{:<8} {:>10} {:>10} {:>10}",
                    "images", "seconds", "img/s", "RSS MiB"
                );
                println!(
                    "{:<8} {:>10.2} {:>10.1} {:>10.0}",
                    images,
                    secs,
                    images as f64 / secs,
                    peak_rss_mb()
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
