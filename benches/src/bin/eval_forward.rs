//! Eval-mode forward of a torchvision architecture on `flex`, against PyTorch CPU with the
//! same threads, in the same run.
//!
//! ```text
//! cargo run --release -p kiln-benches --bin eval_forward -- \
//!     --arch resnet50 --batch-size 16 --image-size 224 --rounds 3 --steps 5 \
//!     --peer-python /path/to/python
//! ```

use burn::tensor::{Device, Distribution, Tensor};
use kiln_benches::{median, peer_script, run_peer, time_ms};
use kiln_models::Arch;

struct Options {
    arch: Arch,
    batch: usize,
    size: usize,
    rounds: usize,
    steps: usize,
    peer_python: Option<String>,
}

fn parse() -> anyhow::Result<Options> {
    let mut o = Options {
        arch: Arch::Resnet50,
        batch: 16,
        size: 224,
        rounds: 3,
        steps: 5,
        peer_python: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || {
            args.next()
                .ok_or_else(|| anyhow::anyhow!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--arch" => o.arch = value()?.parse()?,
            "--batch-size" => o.batch = value()?.parse()?,
            "--image-size" => o.size = value()?.parse()?,
            "--rounds" => o.rounds = value()?.parse()?,
            "--steps" => o.steps = value()?.parse()?,
            "--peer-python" => o.peer_python = Some(value()?),
            other => anyhow::bail!("unknown option {other}"),
        }
    }
    Ok(o)
}

fn main() -> anyhow::Result<()> {
    let o = parse()?;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let device = Device::flex();
    let model = o.arch.init(1000, &device).set_training(false);
    let x = Tensor::<4>::random([o.batch, 3, o.size, o.size], Distribution::Default, &device);
    let (mut kiln, mut peer) = (Vec::new(), Vec::new());
    for round in 0..o.rounds {
        let warmup = if round == 0 { 2 } else { 1 };
        kiln.extend(time_ms(warmup, o.steps, || {
            let _ = model.forward(x.clone()).into_data();
        }));
        if let Some(python) = &o.peer_python {
            let args = [
                ("--arch", o.arch.name().to_string()),
                ("--batch-size", o.batch.to_string()),
                ("--image-size", o.size.to_string()),
                ("--threads", threads.to_string()),
                ("--steps", o.steps.to_string()),
            ]
            .into_iter()
            .flat_map(|(k, v)| [k.to_string(), v])
            .collect::<Vec<_>>();
            let result = run_peer(python, &peer_script("eval_forward.py"), &args)?;
            peer.extend(
                result["times_ms"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|v| v.as_f64()),
            );
        }
    }
    let (k, p) = (median(&kiln), median(&peer));
    println!(
        "{} eval forward, batch {}, {} px, {} threads",
        o.arch, o.batch, o.size, threads
    );
    println!("{:<10} {:>12} {:>10}", "engine", "median ms", "img/s");
    println!(
        "{:<10} {:>12.1} {:>10.1}",
        "kiln",
        k,
        o.batch as f64 / k * 1e3
    );
    if !peer.is_empty() {
        println!(
            "{:<10} {:>12.1} {:>10.1}",
            "pytorch",
            p,
            o.batch as f64 / p * 1e3
        );
        println!("kiln/pytorch time ratio: {:.2} (below 1 is faster)", k / p);
    }
    Ok(())
}
