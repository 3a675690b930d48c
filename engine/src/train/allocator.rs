//! The C allocator's settings for training.
//!
//! A training step allocates and frees the same large buffers every step (activations, im2col
//! matrices, gradients). glibc serves blocks above its mmap threshold with fresh `mmap`s and
//! hands freed heap memory back to the kernel above its trim threshold, so every step faults
//! its buffers back in page by page and the kernel zeroes each page: about 12 000 faults a
//! step for resnet18 at batch 16 and 64 px, and 11% of the step's time. Raising both
//! thresholds keeps freed blocks in the heap for the next step; peak memory is unchanged.
//!
//! Training runs on a pool thread, whose blocks come from one of glibc's per-thread arenas, a
//! chain of 64 MiB heaps. glibc unmaps such a heap as soon as it is wholly free, whatever the
//! trim threshold, and maps a new one when the next step needs it: 123 heaps mapped in three
//! densenet121 steps at 224 px. A top pad of a whole heap keeps them: 730-780 000 page faults
//! in five steps -> 620 000 (most of them the first step's), 6.3-6.6 -> 6.8-6.9 img/s, peak RSS
//! 2.2-2.4 -> 2.1 GB.

/// Keep freed memory in the process for reuse instead of returning it to the kernel. Process
/// wide; `kiln` calls it at start-up, and programs embedding the trainer may too. A no-op
/// outside glibc.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // glibc's largest mmap threshold on 64-bit targets (HEAP_MAX / 2); larger values are
        // refused. Setting either value turns off glibc's own adjustment of both.
        const MMAP_THRESHOLD: libc::c_int = 32 << 20;
        // A per-thread arena's heap (HEAP_MAX, 2 x the largest mmap threshold) is kept while
        // the pad is at least its size (glibc's `heap_trim`).
        const TOP_PAD: libc::c_int = 64 << 20;
        // SAFETY: mallopt only changes the allocator's parameters.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
            libc::mallopt(libc::M_TRIM_THRESHOLD, libc::c_int::MAX);
            libc::mallopt(libc::M_TOP_PAD, TOP_PAD);
        }
    }
}
