//! Whether a run's `kiln submit` is alive: the lock it holds for the run's whole life, and
//! stopping what a killed submitter left behind.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

use crate::procs;

/// The file a live `kiln submit` holds locked for its run's whole life.
pub const LOCK_FILE: &str = ".submitter.lock";

/// Sends SIGTERM to the processes left in process group `pgid` that carry run `id`'s
/// `KILN_RUN_ID` (checked in `/proc`, so a recycled group id is never hit): what a killed
/// submitter's program left behind. Returns how many were signalled.
pub fn stop_orphans(pgid: i64, id: &str) -> usize {
    signal_run(id, Some(pgid), libc::SIGTERM)
}

/// Sends `signal` to every process (of group `group`, when given) that carries run `id`'s
/// `KILN_RUN_ID`, this one excepted; returns how many were signalled.
pub fn signal_run(id: &str, group: Option<i64>, signal: i32) -> usize {
    let me = std::process::id() as i32;
    procs::table()
        .into_iter()
        .filter(|p| p.pid != me && group.is_none_or(|g| i64::from(p.group) == g))
        .filter(|p| procs::of_run(p.pid, id))
        // SAFETY: signals one process of this run, identified by its environment.
        .filter(|p| unsafe { libc::kill(p.pid, signal) } == 0)
        .count()
}

/// An exclusive `flock` on a run's lock file, held while its `kiln submit` lives; the kernel
/// drops it when the process dies, however it dies.
pub struct SubmitterLock {
    _file: File,
}

impl SubmitterLock {
    /// `held`, the lock a `--detach` worker inherited, or else run `paths`' lock, taken now.
    pub(crate) fn held_or_acquire(
        held: Option<Self>,
        paths: &crate::RunPaths,
    ) -> Result<Self, crate::RunsError> {
        match held {
            Some(lock) => Ok(lock),
            None => {
                let path = paths.dir.join(LOCK_FILE);
                Self::acquire(&path).map_err(|e| crate::RunsError::io(&path, e))
            }
        }
    }

    /// Takes the lock, waiting while someone checks it.
    pub fn acquire(path: &Path) -> std::io::Result<Self> {
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)?;
        // SAFETY: flock on a file descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Self { _file: file })
    }

    /// The lock a parent `kiln submit --detach` handed over as file descriptor `fd`; it is
    /// marked close-on-exec again so the run's program never holds it.
    pub fn inherit(fd: i32) -> std::io::Result<Self> {
        use std::os::fd::FromRawFd;
        // SAFETY: fcntl on a descriptor number; fails cleanly when it is not open.
        if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: the descriptor is open (fcntl succeeded) and owned by this process alone.
        let file = unsafe { File::from_raw_fd(fd) };
        // Holding it already, this returns at once; it also proves the fd is the lock.
        // SAFETY: flock on the descriptor just adopted.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Self { _file: file })
    }

    /// The descriptor, for handing the lock to a child process.
    pub fn raw_fd(&self) -> i32 {
        self._file.as_raw_fd()
    }

    /// Whether a live process holds the lock at `path`.
    pub fn is_held(path: &Path) -> bool {
        let Ok(file) = File::options().write(true).open(path) else {
            return false;
        };
        // SAFETY: flock on a file descriptor we own; released when `file` closes.
        unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) != 0 }
    }
}
