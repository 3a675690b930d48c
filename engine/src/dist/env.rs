//! Where this worker stands in the job, read from the environment as DESIGN.md's distributed
//! contract says: kiln's launcher or torchrun (`RANK`, `WORLD_SIZE`, ...), then Open MPI
//! (`OMPI_COMM_WORLD_*`), then Slurm (`SLURM_*`); the first family present wins.

use std::time::Duration;

use crate::env;
use crate::error::EngineError;

/// Port rank 0 listens on when `MASTER_PORT` is unset (torchrun's default).
pub const DEFAULT_PORT: u16 = 29500;

/// Seconds a dead or silent peer is given before the job stops (`KILN_DIST_TIMEOUT`).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// One worker's place in the job and how to reach rank 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorldInfo {
    /// This worker's rank, from 0.
    pub rank: usize,
    /// Number of workers.
    pub world_size: usize,
    /// Rank among the workers on this machine.
    pub local_rank: usize,
    /// Workers on this machine.
    pub local_world_size: usize,
    /// Rank 0's host.
    pub master_addr: String,
    /// Rank 0's rendezvous port.
    pub master_port: u16,
    /// The secret every connection must present (`KILN_JOB_TOKEN`).
    pub token: String,
    /// How long a silent peer is waited for.
    pub timeout: Duration,
    /// Which variables the place came from: `kiln`, `mpi`, `slurm` or `none`.
    pub source: &'static str,
}

impl WorldInfo {
    /// A job of one: no peers.
    pub fn single() -> Self {
        Self {
            rank: 0,
            world_size: 1,
            local_rank: 0,
            local_world_size: 1,
            master_addr: "127.0.0.1".into(),
            master_port: DEFAULT_PORT,
            token: String::new(),
            timeout: DEFAULT_TIMEOUT,
            source: "none",
        }
    }

    /// Reads the process environment.
    pub fn from_env() -> Result<Self, EngineError> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// Reads variables through `var` (tests pass a map).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self, EngineError> {
        let mut info = Self::single();
        let Some((source, [rank, size, local, local_size])) = FAMILIES
            .into_iter()
            .find(|(_, names)| var(names[0]).is_some() && var(names[1]).is_some())
        else {
            return Ok(info);
        };
        let number = |name: &str| -> Result<Option<usize>, EngineError> {
            match var(name) {
                None => Ok(None),
                Some(v) => v
                    .trim()
                    .parse()
                    .map(Some)
                    .map_err(|_| bad_variable(format!("{name}={v}"), "a non-negative integer")),
            }
        };
        info.source = source;
        info.rank = number(rank)?.unwrap_or(0);
        info.world_size = number(size)?.unwrap_or(1);
        info.local_rank = number(local)?.unwrap_or(0);
        // Slurm writes `2(x3)` for uneven layouts; only the plain number is used.
        info.local_world_size = var(local_size)
            .and_then(|v| v.split(['(', ',']).next()?.trim().parse().ok())
            .unwrap_or(1);
        if info.world_size == 0 || info.rank >= info.world_size {
            return Err(bad_variable(
                format!("{rank}={} {size}={}", info.rank, info.world_size),
                "a rank below a world size of at least 1",
            ));
        }
        info.master_addr = var("MASTER_ADDR")
            .or_else(|| var("SLURM_LAUNCH_NODE_IPADDR"))
            .unwrap_or_else(|| "127.0.0.1".into());
        if let Some(port) = var("MASTER_PORT") {
            info.master_port = port
                .trim()
                .parse()
                .map_err(|_| bad_variable(format!("MASTER_PORT={port}"), "a TCP port number"))?;
        }
        if let Some(secs) = var(env::DIST_TIMEOUT) {
            info.timeout = timeout(&secs)?;
        }
        // mpirun and srun start every worker with the same job id, which serves as the
        // token when the user set none; kiln's launcher always sets one.
        info.token = var(env::JOB_TOKEN)
            .or_else(|| var("OMPI_MCA_ess_base_jobid").map(|id| format!("ompi-{id}")))
            .or_else(|| var("SLURM_JOB_ID").map(|id| format!("slurm-{id}")))
            .unwrap_or_default();
        if info.world_size > 1 && info.token.is_empty() {
            return Err(bad_variable(
                format!("{} unset", env::JOB_TOKEN),
                "the same secret in every worker's KILN_JOB_TOKEN",
            ));
        }
        Ok(info)
    }
}

/// The variable families that place a worker, first match wins: kiln's launcher or torchrun,
/// Open MPI, Slurm. Each: rank, world size, local rank, local world size.
const FAMILIES: [(&str, [&str; 4]); 3] = [
    (
        "kiln",
        ["RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"],
    ),
    (
        "mpi",
        [
            "OMPI_COMM_WORLD_RANK",
            "OMPI_COMM_WORLD_SIZE",
            "OMPI_COMM_WORLD_LOCAL_RANK",
            "OMPI_COMM_WORLD_LOCAL_SIZE",
        ],
    ),
    (
        "slurm",
        [
            "SLURM_PROCID",
            "SLURM_NTASKS",
            "SLURM_LOCALID",
            "SLURM_NTASKS_PER_NODE",
        ],
    ),
];

fn bad_variable(value: String, expected: &str) -> EngineError {
    EngineError::BadOption {
        option: "environment",
        value,
        expected: expected.into(),
    }
}

/// `KILN_DIST_TIMEOUT`'s seconds: more than 0, at most a day.
fn timeout(secs: &str) -> Result<Duration, EngineError> {
    let what = || format!("{}={secs}", env::DIST_TIMEOUT);
    let value: f64 = secs
        .trim()
        .parse()
        .ok()
        .filter(|s: &f64| *s > 0.0)
        .ok_or_else(|| bad_variable(what(), "seconds, more than 0"))?;
    Duration::try_from_secs_f64(value)
        .ok()
        .filter(|d| *d <= Duration::from_secs(24 * 3600))
        .ok_or_else(|| bad_variable(what(), "seconds, at most a day"))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn world(vars: &[(&str, &str)]) -> Result<WorldInfo, EngineError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        WorldInfo::from_vars(|k| map.get(k).cloned())
    }

    #[test]
    fn nothing_set_is_a_job_of_one() {
        let w = world(&[]).unwrap();
        assert_eq!((w.rank, w.world_size, w.source), (0, 1, "none"));
    }

    #[test]
    fn kiln_variables_win_over_mpi_and_slurm() {
        let w = world(&[
            ("RANK", "2"),
            ("WORLD_SIZE", "4"),
            ("LOCAL_RANK", "0"),
            ("MASTER_ADDR", "10.0.0.1"),
            ("MASTER_PORT", "1234"),
            ("KILN_JOB_TOKEN", "s3cret"),
            ("OMPI_COMM_WORLD_RANK", "1"),
            ("OMPI_COMM_WORLD_SIZE", "2"),
            ("SLURM_PROCID", "3"),
            ("SLURM_NTASKS", "8"),
        ])
        .unwrap();
        assert_eq!((w.rank, w.world_size, w.local_rank), (2, 4, 0));
        assert_eq!((w.master_addr.as_str(), w.master_port), ("10.0.0.1", 1234));
        assert_eq!((w.token.as_str(), w.source), ("s3cret", "kiln"));
    }

    #[test]
    fn open_mpi_then_slurm() {
        let w = world(&[
            ("OMPI_COMM_WORLD_RANK", "1"),
            ("OMPI_COMM_WORLD_SIZE", "2"),
            ("OMPI_COMM_WORLD_LOCAL_RANK", "1"),
            ("OMPI_COMM_WORLD_LOCAL_SIZE", "2"),
            ("OMPI_MCA_ess_base_jobid", "77"),
            ("SLURM_PROCID", "3"),
            ("SLURM_NTASKS", "8"),
        ])
        .unwrap();
        assert_eq!(
            (w.rank, w.world_size, w.local_rank, w.local_world_size),
            (1, 2, 1, 2)
        );
        assert_eq!((w.token.as_str(), w.source), ("ompi-77", "mpi"));
        let w = world(&[
            ("SLURM_PROCID", "3"),
            ("SLURM_NTASKS", "8"),
            ("SLURM_LOCALID", "1"),
            ("SLURM_NTASKS_PER_NODE", "4(x2)"),
            ("SLURM_JOB_ID", "9"),
            ("SLURM_LAUNCH_NODE_IPADDR", "10.1.1.1"),
        ])
        .unwrap();
        assert_eq!(
            (w.rank, w.world_size, w.local_rank, w.local_world_size),
            (3, 8, 1, 4)
        );
        assert_eq!((w.master_addr.as_str(), w.source), ("10.1.1.1", "slurm"));
    }

    #[test]
    fn bad_values_are_named() {
        let e = world(&[("RANK", "5"), ("WORLD_SIZE", "2"), ("KILN_JOB_TOKEN", "t")]);
        assert!(e.unwrap_err().to_string().contains("RANK=5"));
        let e = world(&[("RANK", "x"), ("WORLD_SIZE", "2")]);
        assert!(e.unwrap_err().to_string().contains("RANK=x"));
        let e = world(&[("RANK", "0"), ("WORLD_SIZE", "2")]);
        assert!(e.unwrap_err().to_string().contains("KILN_JOB_TOKEN"));
    }
}
