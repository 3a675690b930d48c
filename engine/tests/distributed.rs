//! kiln's collectives across real processes: the test binary starts copies of itself as
//! workers (the `worker_*` tests, ignored unless launched this way), each joining a job over
//! TCP on localhost, and checks what they wrote.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::{DType, Device, Int, Tensor, TensorData};
use kiln_engine::dist::{
    GradientBuckets, ReduceOp, RingAllReduce, Solo, Transport, Wire, WorldInfo,
};
use kiln_engine::kernels::testing::{free_port, temp_dir};
use kiln_engine::models::autocast::autocast;
use kiln_engine::train::loss::cross_entropy;
use kiln_engine::train::scaler::{self, LossScaler};
use kiln_engine::train::sgd::{Sgd, SgdConfig};
use kiln_models::{Arch, Model};

const WORKER_DIR: &str = "KILN_TEST_WORKER_DIR";

/// Runs the ignored test `worker` as `n` processes of one job; each writes into `dir`.
fn run_workers(n: usize, worker: &str, dir: &Path) {
    let port = free_port().to_string();
    let children: Vec<_> = (0..n)
        .map(|rank| {
            Command::new(std::env::current_exe().expect("test binary"))
                .args([
                    worker,
                    "--exact",
                    "--ignored",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(WORKER_DIR, dir)
                .env("RANK", rank.to_string())
                .env("WORLD_SIZE", n.to_string())
                .env("MASTER_ADDR", "localhost")
                .env("MASTER_PORT", &port)
                .env("KILN_JOB_TOKEN", "test-token")
                .env("KILN_DIST_TIMEOUT", "20")
                .env("RAYON_NUM_THREADS", "1")
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("worker starts")
        })
        .collect();
    for (rank, child) in children.into_iter().enumerate() {
        let out = child.wait_with_output().expect("worker ends");
        assert!(
            out.status.success(),
            "{worker} rank {rank} of {n} failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The worker's job directory and its transport, or `None` when not launched as a worker.
fn join() -> Option<(PathBuf, RingAllReduce)> {
    let dir = PathBuf::from(std::env::var_os(WORKER_DIR)?);
    let info = WorldInfo::from_env().expect("worker environment");
    let warn: Arc<dyn Fn(&str) + Send + Sync> = Arc::new(|m: &str| eprintln!("{m}"));
    // Small chunks so that even the small sizes cross chunk boundaries.
    let ring = RingAllReduce::join(&info, warn)
        .expect("joins")
        .with_chunk_bytes(256);
    Some((dir, ring))
}

fn to_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn from_bytes(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// Integers small enough that every sum of four is exact in f32.
fn rank_values(rank: usize, len: usize) -> Vec<f32> {
    (0..len)
        .map(|i| ((i * 7919 + rank * 104_729) % 2001) as f32 - 1000.0)
        .collect()
}

fn sizes(n: usize) -> Vec<usize> {
    // 0, 1, n-1, odd, and many chunks (the chunk is 64 values).
    vec![0, 1, n - 1, 37, 1001, 100_003]
}

#[test]
#[ignore = "a worker process of allreduce_is_exact_and_identical_on_every_rank"]
fn worker_collectives() {
    let Some((dir, mut ring)) = join() else {
        return;
    };
    let (r, n) = (ring.rank(), ring.world_size());
    let mut out = Vec::new();
    for len in sizes(n) {
        let mut data = rank_values(r, len);
        ring.allreduce(&mut data, ReduceOp::Sum).expect("allreduce");
        out.extend(to_bytes(&data));
        let mut avg = rank_values(r, len);
        ring.allreduce(&mut avg, ReduceOp::Average)
            .expect("average");
        out.extend(to_bytes(&avg));
        let mut half: Vec<f32> = rank_values(r, len).iter().map(|v| v * 0.001).collect();
        ring.allreduce_with(&mut half, ReduceOp::Sum, Wire::F16)
            .expect("f16 allreduce");
        out.extend(to_bytes(&half));
    }
    let mut blob = if r == n - 1 {
        (0..10_000u32).flat_map(|i| i.to_le_bytes()).collect()
    } else {
        Vec::new()
    };
    ring.broadcast(&mut blob, n - 1).expect("broadcast");
    out.extend(&blob);
    let gathered = ring.all_gather(&vec![r as u8; r * 3]).expect("all_gather");
    for g in gathered {
        out.extend(g);
    }
    ring.barrier().expect("barrier");
    std::fs::write(dir.join(format!("rank{r}")), out).expect("write result");
    ring.finish().expect("finish");
}

#[test]
fn allreduce_is_exact_and_identical_on_every_rank() {
    for n in [2, 3, 4] {
        let dir = temp_dir(&format!("collectives{n}"));
        run_workers(n, "worker_collectives", &dir);
        let results: Vec<Vec<u8>> = (0..n)
            .map(|r| std::fs::read(dir.join(format!("rank{r}"))).expect("result"))
            .collect();
        for r in 1..n {
            assert!(
                results[r] == results[0],
                "rank {r} differs from rank 0 with {n} ranks"
            );
        }
        let mut at = 0;
        let mut take = |len: usize| {
            let piece = &results[0][at..at + len];
            at += len;
            piece.to_vec()
        };
        for len in sizes(n) {
            let per_rank: Vec<Vec<f32>> = (0..n).map(|r| rank_values(r, len)).collect();
            let exact: Vec<f32> = (0..len)
                .map(|i| per_rank.iter().map(|v| v[i]).sum())
                .collect();
            assert_eq!(
                from_bytes(&take(len * 4)),
                exact,
                "sum of {len} with {n} ranks"
            );
            let avg: Vec<f32> = exact.iter().map(|v| v / n as f32).collect();
            assert_eq!(from_bytes(&take(len * 4)), avg, "average of {len}");
            for (got, want) in from_bytes(&take(len * 4)).iter().zip(&exact) {
                let want = want * 0.001;
                // Each of n-1 hops and the result round to f16: relative 2^-11 each.
                assert!(
                    (got - want).abs() <= 4.0 * n as f32 * 4.9e-4 * want.abs().max(1.0),
                    "f16 sum {got} vs {want}"
                );
            }
        }
        let blob = take(40_000);
        assert_eq!(
            blob,
            (0..10_000u32)
                .flat_map(|i| i.to_le_bytes())
                .collect::<Vec<u8>>()
        );
        for r in 0..n {
            assert_eq!(
                take(r * 3),
                vec![r as u8; r * 3],
                "all_gather from rank {r}"
            );
        }
    }
}

const STEPS: usize = 3;
const BATCH: usize = 16;

/// A fixed batch: images and labels from a formula.
fn global_batch(device: &Device) -> (Tensor<4>, Tensor<1, Int>) {
    let x: Vec<f32> = (0..BATCH * 3 * 32 * 32)
        .map(|i| ((i * 2654435761usize) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    let y: Vec<i64> = (0..BATCH as i64).map(|i| (i * 7) % 10).collect();
    (
        Tensor::from_data(TensorData::new(x, [BATCH, 3, 32, 32]), device),
        Tensor::from_data(TensorData::new(y, [BATCH]), device),
    )
}

/// resnet18 with batch norm frozen (eval mode: running statistics, which differ per replica
/// in train mode, as in DDP), trained `STEPS` SGD steps on rows `rows` of the batch, with
/// gradients averaged over `transport`.
fn train_steps(transport: &mut dyn Transport, rows: std::ops::Range<usize>) -> Vec<f32> {
    let device = Device::flex().autodiff();
    device.seed(7);
    let mut model = Arch::Resnet18.init(10, &device).set_training(false);
    // A deliberately small bucket: the gradients travel in many buckets.
    let buckets = GradientBuckets {
        bucket_bytes: 1 << 20,
        wire: Wire::F32,
    };
    let mut sgd = Sgd::new(SgdConfig {
        momentum: 0.9,
        dampening: 0.0,
        weight_decay: 1e-4,
        nesterov: false,
    });
    let (x, y) = global_batch(&device);
    let (x, y) = (x.slice(rows.clone()), y.slice(rows));
    for _ in 0..STEPS {
        let logits = model.forward(x.clone());
        let loss = cross_entropy(logits, y.clone());
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let grads = buckets.average(transport, &model, grads).expect("average");
        model = sgd.step(model, grads, 0.05, 0.05);
    }
    flat_weights(&model)
}

fn flat_weights(model: &Model) -> Vec<f32> {
    struct Flat(Vec<f32>);
    impl ModuleVisitor for Flat {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let data = param.val().into_data().convert::<f32>();
            self.0.extend(data.iter::<f32>());
        }
    }
    let mut flat = Flat(Vec::new());
    model.visit(&mut flat);
    flat.0
}

#[test]
#[ignore = "a worker process of two_ranks_of_batch_8_end_like_one_rank_of_batch_16"]
fn worker_sgd_steps() {
    let Some((dir, mut ring)) = join() else {
        return;
    };
    let r = ring.rank();
    let half = BATCH / ring.world_size();
    let weights = train_steps(&mut ring, r * half..(r + 1) * half);
    std::fs::write(dir.join(format!("rank{r}")), to_bytes(&weights)).expect("write result");
    ring.finish().expect("finish");
}

#[test]
fn two_ranks_of_batch_8_end_like_one_rank_of_batch_16() {
    let dir = temp_dir("sgd");
    run_workers(2, "worker_sgd_steps", &dir);
    let single = train_steps(&mut Solo, 0..BATCH);
    let r0 = from_bytes(&std::fs::read(dir.join("rank0")).expect("rank 0"));
    let r1 = from_bytes(&std::fs::read(dir.join("rank1")).expect("rank 1"));
    assert!(r0 == r1, "the replicas diverged");
    assert_eq!(r0.len(), single.len());
    let initial = {
        let device = Device::flex().autodiff();
        device.seed(7);
        flat_weights(&Arch::Resnet18.init(10, &device))
    };
    // The steps move the weights far more than the tolerance, so matching is not trivial.
    let moved = single
        .iter()
        .zip(&initial)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(moved > 1e-2, "training barely moved the weights ({moved})");
    let worst = r0
        .iter()
        .zip(&single)
        .map(|(a, b)| (a - b).abs() / b.abs().max(1.0))
        .fold(0.0f32, f32::max);
    eprintln!("2 x 8 vs 1 x 16: worst relative difference {worst:e}, largest change {moved}");
    assert!(worst <= 1e-5, "2 x 8 differs from 1 x 16 by {worst}");
}

/// What an f16 run ends with: the weights, the loss scale, the steps skipped for overflow.
struct MixedRun {
    weights: Vec<f32>,
    scale: f32,
    skipped: usize,
}

/// As [`train_steps`] in the trainer's f16 mixed precision on `device`: the forward under
/// autocast, the loss scaled, gradients averaged in buckets with f16 on the wire, then
/// unscaled and checked for overflow. One step per entry of `poisoned`; a poisoned step's
/// input is multiplied by infinity, so it overflows on this rank.
fn f16_steps(
    device: &Device,
    transport: &mut dyn Transport,
    rows: std::ops::Range<usize>,
    poisoned: &[bool],
) -> MixedRun {
    let device = device.clone().autodiff();
    device.seed(7);
    let mut model = Arch::Resnet18.init(10, &device).set_training(false);
    let buckets = GradientBuckets {
        bucket_bytes: 1 << 20,
        wire: Wire::F16,
    };
    let mut sgd = Sgd::new(SgdConfig {
        momentum: 0.9,
        dampening: 0.0,
        weight_decay: 1e-4,
        nesterov: false,
    });
    let mut scaler = LossScaler::default();
    let mut skipped = 0;
    let (x, y) = global_batch(&device);
    let (x, y) = (x.slice(rows.clone()), y.slice(rows));
    for &poison in poisoned {
        let input = if poison {
            x.clone().mul_scalar(f32::INFINITY)
        } else {
            x.clone()
        };
        let logits = autocast(Some(DType::F16), || model.forward(input));
        let loss = cross_entropy(logits, y.clone());
        let grads = scaler::backward(&model, loss, Some(&scaler));
        let grads = buckets.average(transport, &model, grads).expect("average");
        match scaler::for_sgd(&model, grads, Some(&mut scaler)) {
            Some(grads) => model = sgd.step(model, grads, 0.05, 0.05),
            None => skipped += 1,
        }
    }
    MixedRun {
        weights: flat_weights(&model),
        scale: scaler.scale,
        skipped,
    }
}

/// The middle step overflows on rank 1 only.
const RANK_1_POISONED: [bool; STEPS] = [false, true, false];

#[test]
#[ignore = "a worker process of f16_ranks_skip_an_overflow_together_and_end_like_one_rank"]
fn worker_f16_steps() {
    let Some((dir, mut ring)) = join() else {
        return;
    };
    let device = kiln_engine::kernels::testing::wgpu().expect("a wgpu adapter");
    let r = ring.rank();
    let half = BATCH / ring.world_size();
    let poisoned = if r == 1 {
        RANK_1_POISONED
    } else {
        [false; STEPS]
    };
    let run = f16_steps(&device, &mut ring, r * half..(r + 1) * half, &poisoned);
    let mut out = to_bytes(&run.weights);
    out.extend(to_bytes(&[run.scale, run.skipped as f32]));
    std::fs::write(dir.join(format!("rank{r}")), out).expect("write result");
    ring.finish().expect("finish");
}

/// The distributed path in f16 mixed precision (on wgpu, the software adapter in CI): rank 1's
/// overflow reaches rank 0 through the averaged gradients, so both skip that step and halve
/// the scale, and the replicas stay identical; their two clean steps end where one rank's two
/// clean steps on the whole batch end, within f16's rounding.
#[test]
fn f16_ranks_skip_an_overflow_together_and_end_like_one_rank() {
    let Some(device) = kiln_engine::kernels::testing::wgpu() else {
        return;
    };
    let dir = temp_dir("f16");
    run_workers(2, "worker_f16_steps", &dir);
    let read = |r: usize| {
        let mut values = from_bytes(&std::fs::read(dir.join(format!("rank{r}"))).expect("rank"));
        let skipped = values.pop().expect("skipped");
        let scale = values.pop().expect("scale");
        (values, scale, skipped)
    };
    let (r0, scale0, skipped0) = read(0);
    let (r1, scale1, skipped1) = read(1);
    assert!(r0 == r1, "the f16 replicas diverged");
    assert_eq!(
        (skipped0, skipped1),
        (1.0, 1.0),
        "both ranks skip the overflowed step"
    );
    assert_eq!(
        (scale0, scale1),
        (32768.0, 32768.0),
        "both ranks halve the scale"
    );
    // One rank, the whole batch, without the poisoned step.
    let single = f16_steps(&device, &mut Solo, 0..BATCH, &[false; 2]);
    assert_eq!(single.skipped, 0);
    let initial = {
        let device = device.clone().autodiff();
        device.seed(7);
        flat_weights(&Arch::Resnet18.init(10, &device))
    };
    let moved = single
        .weights
        .iter()
        .zip(&initial)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(moved > 1e-2, "training barely moved the weights ({moved})");
    let worst = r0
        .iter()
        .zip(&single.weights)
        .map(|(a, b)| (a - b).abs() / b.abs().max(1.0))
        .fold(0.0f32, f32::max);
    eprintln!("f16, 2 x 8 vs 1 x 16: worst relative difference {worst:e}, largest change {moved}");
    assert!(worst <= 2e-3, "2 x 8 differs from 1 x 16 by {worst} in f16");
}

#[test]
#[ignore = "a worker process of a_rank_that_fails_stops_the_others_with_its_error"]
fn worker_one_rank_fails() {
    let Some(dir) = std::env::var_os(WORKER_DIR).map(PathBuf::from) else {
        return;
    };
    let info = WorldInfo::from_env().expect("worker environment");
    let warn: Arc<dyn Fn(&str) + Send + Sync> = Arc::new(|m: &str| eprintln!("{m}"));
    let r = info.rank;
    // The others may hear of rank 1's abort while the ring is still forming, or at their first
    // collective: either way they must stop with its error.
    let err = match RingAllReduce::join(&info, warn) {
        Err(e) => e.to_string(),
        Ok(mut ring) => {
            if r == 1 {
                ring.abort("out of disk space (a test)");
                return;
            }
            let mut data = vec![1.0f32; 1000];
            ring.allreduce(&mut data, ReduceOp::Sum)
                .expect_err("the allreduce cannot complete without rank 1")
                .to_string()
        }
    };
    assert_ne!(r, 1, "rank 1 failed to join: {err}");
    std::fs::write(dir.join(format!("rank{r}")), err).expect("write result");
}

#[test]
fn a_rank_that_fails_stops_the_others_with_its_error() {
    let dir = temp_dir("abort");
    run_workers(3, "worker_one_rank_fails", &dir);
    for r in [0, 2] {
        let err = std::fs::read_to_string(dir.join(format!("rank{r}"))).expect("result");
        assert!(
            err.contains("rank 1 on") && err.contains("out of disk space (a test)"),
            "rank {r}: {err}"
        );
    }
}
