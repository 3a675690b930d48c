//! Dynamic batching: requests queue their images as jobs; each model worker (one copy of the
//! model, on its own thread) takes the first job waiting, gathers more until the batch holds
//! `max_batch_size` images or `max_batch_delay` has passed since the first, runs one forward
//! pass and hands each job its rows of logits. A job larger than the batch limit runs alone, in
//! slices of the limit; a job that would overfill a batch starts that worker's next one.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kiln_engine::config::DeviceKind;
use kiln_engine::infer::Scorer;
use kiln_engine::train::threads::available_cores;
use tokio::sync::oneshot;

use crate::metrics::Metrics;

/// Images waiting to be scored, and where their logits go.
pub struct Job {
    /// `n` inputs end to end, NCHW.
    pub inputs: Vec<f32>,
    /// How many images.
    pub n: usize,
    /// Receives `[n, classes]` logits, or why the forward pass failed.
    pub reply: oneshot::Sender<Result<Vec<f32>, String>>,
}

/// How the workers batch.
#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    /// Most images in one forward pass.
    pub max_batch_size: usize,
    /// Longest a batch waits for more after its first job.
    pub max_batch_delay: Duration,
}

/// The queue and the model workers behind it.
pub struct Batcher {
    queue: Mutex<Option<Sender<Job>>>,
    workers: Mutex<Vec<JoinHandle<()>>>,
}

impl Batcher {
    /// Starts `workers` threads, each loading the model directory `dir` onto `device` and
    /// warming it up (a forward pass at batch 1 and at the limit). `loaded` receives one
    /// message per worker: the time it took, or why it could not load.
    pub fn start(
        dir: PathBuf,
        device: DeviceKind,
        workers: usize,
        limits: BatchLimits,
        metrics: Arc<Metrics>,
        loaded: Sender<Result<Duration, String>>,
    ) -> Self {
        let (queue, jobs) = mpsc::channel::<Job>();
        let jobs = Arc::new(Mutex::new(jobs));
        // The cores are split between the copies: each runs on its own rayon pool (which the
        // CPU kernels' GEMMs use too), so two copies never fight over the same threads.
        let threads = (available_cores() / workers).max(1);
        let handles = (0..workers)
            .map(|i| {
                let (dir, jobs, metrics, loaded) =
                    (dir.clone(), jobs.clone(), metrics.clone(), loaded.clone());
                std::thread::Builder::new()
                    .name(format!("kiln-serve-model-{i}"))
                    .spawn(move || {
                        let pool = rayon::ThreadPoolBuilder::new()
                            .num_threads(threads)
                            .thread_name(move |t| format!("kiln-serve-model-{i}-{t}"))
                            .build();
                        match pool {
                            Ok(pool) => pool.install(|| {
                                let started = Instant::now();
                                let scorer = match load(&dir, device, limits.max_batch_size) {
                                    Ok(scorer) => scorer,
                                    Err(why) => {
                                        let _ = loaded.send(Err(why));
                                        return;
                                    }
                                };
                                let _ = loaded.send(Ok(started.elapsed()));
                                drop(loaded);
                                work(&scorer, &jobs, limits, &metrics);
                            }),
                            Err(e) => {
                                let why = format!("cannot start {threads} threads: {e}");
                                let _ = loaded.send(Err(why));
                            }
                        }
                    })
                    .expect("a thread starts")
            })
            .collect();
        Self {
            queue: Mutex::new(Some(queue)),
            workers: Mutex::new(handles),
        }
    }

    /// Queues `job`; false once the batcher is closed.
    pub fn submit(&self, job: Job) -> bool {
        let queue = self.queue.lock().expect("queue lock");
        queue.as_ref().is_some_and(|q| q.send(job).is_ok())
    }

    /// Lets the workers finish the jobs queued and end; waits for them.
    pub fn close(&self) {
        self.queue.lock().expect("queue lock").take();
        let handles = std::mem::take(&mut *self.workers.lock().expect("workers lock"));
        for handle in handles {
            let _ = handle.join();
        }
    }
}

fn load(dir: &std::path::Path, device: DeviceKind, max: usize) -> Result<Scorer, String> {
    let loaded = catch_unwind(AssertUnwindSafe(|| {
        let device = device.open().map_err(|e| e.to_string())?;
        Scorer::load(dir, &device).map_err(|e| e.to_string())
    }));
    let scorer = loaded.map_err(|_| "loading the model panicked (a kiln bug)".to_string())??;
    let len = scorer.input_len();
    for n in [1, max] {
        catch_unwind(AssertUnwindSafe(|| scorer.logits(vec![0.0; n * len], n)))
            .map_err(|_| format!("the model failed its warm-up pass at batch {n}"))?;
    }
    Ok(scorer)
}

fn work(scorer: &Scorer, jobs: &Mutex<Receiver<Job>>, limits: BatchLimits, metrics: &Metrics) {
    let mut carried: Option<Job> = None;
    loop {
        let batch = match carried.take() {
            // A job left over from the last batch never waits for the queue: while another
            // worker holds it (waiting for a first job), this one runs alone.
            Some(job) => match jobs.try_lock() {
                Ok(queue) => gather(job, &queue, limits, &mut carried),
                Err(_) => vec![job],
            },
            None => {
                let queue = jobs.lock().expect("jobs lock");
                let Ok(first) = queue.recv() else { return };
                gather(first, &queue, limits, &mut carried)
            }
        };
        run(scorer, batch, limits.max_batch_size, metrics);
    }
}

/// The first job and those that join it within the delay, up to the batch limit.
fn gather(
    first: Job,
    jobs: &Receiver<Job>,
    limits: BatchLimits,
    carried: &mut Option<Job>,
) -> Vec<Job> {
    let deadline = Instant::now() + limits.max_batch_delay;
    let mut total = first.n;
    let mut batch = vec![first];
    while total < limits.max_batch_size {
        let wait = deadline.saturating_duration_since(Instant::now());
        let next = if wait.is_zero() {
            jobs.try_recv().map_err(|_| RecvTimeoutError::Timeout)
        } else {
            jobs.recv_timeout(wait)
        };
        let Ok(job) = next else { break };
        if total + job.n > limits.max_batch_size {
            *carried = Some(job);
            break;
        }
        total += job.n;
        batch.push(job);
    }
    batch
}

fn run(scorer: &Scorer, batch: Vec<Job>, max: usize, metrics: &Metrics) {
    // A job whose request has gone (timed out, client gone) is not scored.
    let batch: Vec<Job> = batch.into_iter().filter(|j| !j.reply.is_closed()).collect();
    if batch.is_empty() {
        return;
    }
    let total: usize = batch.iter().map(|j| j.n).sum();
    let len = scorer.input_len();
    let mut inputs = Vec::with_capacity(total * len);
    let mut replies = Vec::with_capacity(batch.len());
    for job in batch {
        inputs.extend_from_slice(&job.inputs);
        replies.push((job.n, job.reply));
    }
    let scored = catch_unwind(AssertUnwindSafe(|| {
        let mut logits = Vec::with_capacity(total * scorer.classes());
        for slice in inputs.chunks(max * len) {
            let n = slice.len() / len;
            metrics.batch(n);
            logits.extend(scorer.logits(slice.to_vec(), n));
        }
        logits
    }));
    match scored {
        Ok(logits) => {
            let mut rows = logits.chunks(scorer.classes());
            for (n, reply) in replies {
                let mine: Vec<f32> = rows.by_ref().take(n).flatten().copied().collect();
                let _ = reply.send(Ok(mine));
            }
        }
        Err(_) => {
            for (_, reply) in replies {
                let _ = reply.send(Err("the model's forward pass failed (a kiln bug)".into()));
            }
        }
    }
}
