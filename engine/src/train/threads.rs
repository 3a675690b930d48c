//! The compute threads of a training process: one rayon pool that the convolutions' GEMMs and
//! every other CPU op share, of `--threads` threads, or the machine's available cores shared
//! fairly among the training processes on it.
//!
//! Training runs *inside* that pool (`install`), so the loop itself is one of the pool's threads
//! and each parallel op starts where it is called. Called from outside a pool, every op hands
//! its work to rayon's threads and sleeps until they finish: two context switches per op, which
//! cost densenet121 (hundreds of small ops a step) 12% of its CPU step at 64 px.

use crate::error::EngineError;

/// The cores this process may use: its CPU affinity mask and cgroup quota, as the standard
/// library reads them (not the machine's total).
pub fn available_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The compute threads when none are asked for: `RAYON_NUM_THREADS` if set (rayon's own
/// rule), else the cores this process may use.
pub fn default_threads() -> usize {
    std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|n| n.trim().parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(available_cores)
}

/// The threads each of `workers` training processes on one machine gets when none is asked
/// for: the available cores divided among them, at least one.
pub fn threads_per_worker(workers: usize) -> usize {
    (available_cores() / workers.max(1)).max(1)
}

/// The compute threads a worker sharing its machine with `local_workers - 1` others should
/// take when `--threads` is not given, or `None` where rayon's default pool is already right:
/// one process alone on its machine, or `RAYON_NUM_THREADS` set (kiln's launcher and
/// `kiln submit` set it; `mpirun` and `srun` do not, so their workers would each take every
/// core).
pub fn shared_threads(local_workers: usize) -> Option<usize> {
    let set = std::env::var_os("RAYON_NUM_THREADS").is_some();
    (local_workers > 1 && !set).then(|| threads_per_worker(local_workers))
}

/// The threads of the pool this code runs in (rayon's default pool outside any other).
pub fn compute_threads() -> usize {
    rayon::current_num_threads()
}

/// A pool of `threads` compute threads; run work in it with `install`, and rayon's parallel
/// iterators and the GEMMs inside use it.
pub fn compute_pool(threads: usize) -> Result<rayon::ThreadPool, EngineError> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("kiln-compute-{i}"))
        .build()
        .map_err(|e| EngineError::BadOption {
            option: "threads",
            value: threads.to_string(),
            expected: format!("a thread count the system allows ({e})"),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cores_are_shared_among_a_machines_workers() {
        let cores = available_cores();
        assert_eq!(threads_per_worker(1), cores);
        assert_eq!(threads_per_worker(cores), 1);
        assert_eq!(threads_per_worker(cores * 4), 1);
        assert_eq!(threads_per_worker(0), cores);
        assert!(default_threads() >= 1);
    }

    #[test]
    fn a_pool_runs_its_work_on_its_own_threads() {
        let pool = compute_pool(3).unwrap();
        assert_eq!(pool.install(rayon::current_num_threads), 3);
        let name = pool.install(|| std::thread::current().name().map(str::to_string));
        assert!(name.is_some_and(|n| n.starts_with("kiln-compute-")));
    }
}
