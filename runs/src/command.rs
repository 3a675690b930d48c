//! The command line a job runs as. One process for a one-worker local job; kiln's launcher
//! (`kiln train --nproc-per-node`, `kiln launch`) for a local ring job; `mpirun` (with a
//! hostfile from `hosts`) for `compute_target = "mpi"` or `distributed_backend = "mpi"`; and an
//! `sbatch` script running `srun` for `compute_target = "slurm"`.

use std::path::{Path, PathBuf};

use kiln_engine::dist::env::DEFAULT_PORT;
use kiln_engine::dist::launcher;
use kiln_engine::env;
use kiln_engine::train::threads::threads_per_worker;

use crate::error::RunsError;
use crate::home::RunPaths;
use crate::job::{ComputeTarget, DistributedBackend, JobSpec};

/// How a run is started.
#[derive(Debug, Clone, PartialEq)]
pub enum Launch {
    /// A process on this machine (itself perhaps a launcher or `mpirun`).
    Process {
        /// The program.
        program: PathBuf,
        /// Its arguments.
        args: Vec<String>,
        /// Variables added to the environment.
        env: Vec<(String, String)>,
    },
    /// An `sbatch` script, written to the run directory and submitted.
    Slurm {
        /// The script's text.
        script: String,
    },
}

impl Launch {
    /// The command line, shell-quoted, for the run history.
    pub fn display(&self) -> String {
        match self {
            Launch::Process { program, args, .. } => {
                let mut words = vec![quote(&program.to_string_lossy())];
                words.extend(args.iter().map(|a| quote(a)));
                words.join(" ")
            }
            Launch::Slurm { .. } => "sbatch --parsable job.sbatch".into(),
        }
    }
}

/// The program and arguments of one worker: the entry script, or kiln's trainer.
fn worker(
    job: &JobSpec,
    paths: &RunPaths,
    kiln: &Path,
) -> Result<(PathBuf, Vec<String>), RunsError> {
    let mut args = Vec::new();
    let program = match &job.entry_script {
        None => {
            args.extend(["train".to_string(), "--job".to_string()]);
            args.push(paths.train_job().to_string_lossy().into_owned());
            kiln.to_path_buf()
        }
        Some(script) => {
            let path = paths.snapshot.join(script);
            let executable = std::fs::metadata(&path).is_ok_and(|m| {
                use std::os::unix::fs::PermissionsExt;
                m.permissions().mode() & 0o111 != 0
            });
            let interpreter = match script.extension().and_then(|e| e.to_str()) {
                _ if executable => None,
                Some("sh") => Some("bash"),
                Some("py") => Some("python3"),
                _ => {
                    return Err(RunsError::Runs(format!(
                        "entry_script {} is not executable (chmod +x it, or use a .sh or .py \
                         script)",
                        script.display()
                    )));
                }
            };
            match interpreter {
                Some(i) => {
                    args.push(path.to_string_lossy().into_owned());
                    PathBuf::from(i)
                }
                None => path,
            }
        }
    };
    args.extend(job.script_args());
    Ok((program, args))
}

/// The variables every process of the run sees.
pub fn run_env(job: &JobSpec, paths: &RunPaths) -> Vec<(String, String)> {
    let s = |p: &Path| p.to_string_lossy().into_owned();
    let mut env = vec![
        (env::RUN_ID.to_string(), paths.id.clone()),
        (env::OUTPUTS.to_string(), s(&paths.outputs)),
        (env::LOGS.to_string(), s(&paths.logs)),
        (env::HOME.to_string(), s(&paths.home)),
    ];
    env.extend(job.environment.iter().cloned());
    env
}

/// How `job` is started, given the kiln executable (for built-in training and `kiln launch`).
pub fn plan(job: &JobSpec, paths: &RunPaths, kiln: &Path) -> Result<Launch, RunsError> {
    let (program, mut args) = worker(job, paths, kiln)?;
    let mut env = run_env(job, paths);
    let world = job.world_size();
    let ppn = job.process_count_per_node;
    let use_mpirun = job.compute_target == ComputeTarget::Mpi
        || (job.compute_target == ComputeTarget::Local
            && job.distributed_backend == DistributedBackend::Mpi
            && world > 1);
    match job.compute_target {
        ComputeTarget::Slurm => {
            let script = sbatch_script(job, paths, &program, &args, &env);
            Ok(Launch::Slurm { script })
        }
        _ if use_mpirun => {
            let mut mpi = vec!["-np".to_string(), world.to_string()];
            if job.hosts.is_empty() {
                mpi.push("--oversubscribe".into());
            } else {
                mpi.extend([
                    "--hostfile".into(),
                    paths.dir.join("hostfile").to_string_lossy().into(),
                ]);
                mpi.extend(["--map-by".into(), format!("ppr:{ppn}:node")]);
            }
            let master = job
                .hosts
                .first()
                .cloned()
                .unwrap_or_else(|| "127.0.0.1".into());
            env.push(("MASTER_ADDR".into(), master));
            env.push(("MASTER_PORT".into(), free_port().to_string()));
            env.push((env::JOB_TOKEN.into(), random_token()));
            if job.hosts.is_empty() && ppn > 1 && !env.iter().any(|(k, _)| k == "RAYON_NUM_THREADS")
            {
                env.push((
                    "RAYON_NUM_THREADS".into(),
                    threads_per_worker(ppn).to_string(),
                ));
            }
            for (key, _) in &env {
                mpi.extend(["-x".to_string(), key.clone()]);
            }
            mpi.push(program.to_string_lossy().into_owned());
            mpi.extend(args);
            Ok(Launch::Process {
                program: PathBuf::from("mpirun"),
                args: mpi,
                env,
            })
        }
        _ if world > 1 && job.entry_script.is_none() => {
            args.extend(["--nproc-per-node".to_string(), ppn.to_string()]);
            Ok(Launch::Process { program, args, env })
        }
        _ if world > 1 => {
            let mut launch = vec![
                "launch".to_string(),
                "--nproc-per-node".to_string(),
                ppn.to_string(),
                "--".to_string(),
                program.to_string_lossy().into_owned(),
            ];
            launch.extend(args);
            Ok(Launch::Process {
                program: kiln.to_path_buf(),
                args: launch,
                env,
            })
        }
        _ => Ok(Launch::Process { program, args, env }),
    }
}

/// The `mpirun` hostfile: one line per host with its slots.
pub fn hostfile(job: &JobSpec) -> String {
    job.hosts
        .iter()
        .take(job.node_count)
        .map(|h| format!("{h} slots={}\n", job.process_count_per_node))
        .collect()
}

/// The Slurm batch script: one task per worker, rank 0's node as the rendezvous, and the exit
/// code left in `logs/exit_code` for `kiln submit` to collect.
fn sbatch_script(
    job: &JobSpec,
    paths: &RunPaths,
    program: &Path,
    args: &[String],
    env: &[(String, String)],
) -> String {
    let q = |p: &Path| quote(&p.to_string_lossy());
    let mut s = String::from("#!/bin/bash\n");
    s += &format!(
        "#SBATCH --job-name={}\n",
        quote(&format!("kiln-{}", job.name))
    );
    s += &format!("#SBATCH --nodes={}\n", job.node_count);
    s += &format!("#SBATCH --ntasks-per-node={}\n", job.process_count_per_node);
    s += &format!("#SBATCH --chdir={}\n", q(&paths.snapshot));
    s += &format!("#SBATCH --output={}\n", q(&paths.output_log()));
    if job.use_gpu {
        s += &format!("#SBATCH --gpus-per-node={}\n", job.process_count_per_node);
    }
    if !job.hosts.is_empty() {
        s += &format!("#SBATCH --nodelist={}\n", job.hosts.join(","));
    }
    s += "\n";
    for (k, v) in env {
        s += &format!("export {k}={}\n", quote(v));
    }
    s += "export MASTER_ADDR=$(scontrol show hostnames \"$SLURM_JOB_NODELIST\" | head -n 1)\n";
    s += &format!(
        "export MASTER_PORT={}\n",
        20000 + rand::random::<u16>() % 20000
    );
    s += &format!("export KILN_JOB_TOKEN={}\n", random_token());
    let mut words = vec![q(program)];
    words.extend(args.iter().map(|a| quote(a)));
    s += &format!("srun {}\n", words.join(" "));
    s += "code=$?\n";
    let exit_file = paths.logs.join("exit_code");
    s += &format!(
        "echo $code > {tmp} && mv {tmp} {file}\nexit $code\n",
        tmp = q(&paths.logs.join("exit_code.tmp")),
        file = q(&exit_file)
    );
    s
}

/// Single-quotes `word` for a POSIX shell when it needs it.
pub fn quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

fn free_port() -> u16 {
    launcher::free_port().unwrap_or(DEFAULT_PORT)
}

fn random_token() -> String {
    format!(
        "{:016x}{:016x}",
        rand::random::<u64>(),
        rand::random::<u64>()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(text: &str) -> JobSpec {
        JobSpec::parse(text, Path::new("/tmp/job.toml")).unwrap()
    }

    fn paths() -> RunPaths {
        RunPaths::new(Path::new("/home/u/.kiln"), "abc123")
    }

    #[test]
    fn built_in_training_reads_the_run_train_table() {
        let l = plan(
            &job("[train]\nepochs = 1\n"),
            &paths(),
            Path::new("/bin/kiln"),
        )
        .unwrap();
        assert_eq!(
            l.display(),
            "/bin/kiln train --job /home/u/.kiln/runs/abc123/train.toml"
        );
        let l = plan(
            &job("process_count_per_node = 2\n"),
            &paths(),
            Path::new("/bin/kiln"),
        )
        .unwrap();
        assert!(
            l.display().ends_with("train.toml --nproc-per-node 2"),
            "{}",
            l.display()
        );
    }

    #[test]
    fn mpi_uses_a_hostfile_and_exports_the_run() {
        let j = job(
            "compute_target = \"mpi\"\nnode_count = 2\nprocess_count_per_node = 3\nhosts = [\"a\", \"b\"]\n[environment]\nX = 1\n",
        );
        assert_eq!(hostfile(&j), "a slots=3\nb slots=3\n");
        let Launch::Process { program, args, env } = plan(&j, &paths(), Path::new("/k")).unwrap()
        else {
            panic!("mpirun is a process");
        };
        assert_eq!(program, PathBuf::from("mpirun"));
        let line = args.join(" ");
        assert!(
            line.starts_with(
                "-np 6 --hostfile /home/u/.kiln/runs/abc123/hostfile --map-by ppr:3:node"
            ),
            "{line}"
        );
        for var in [
            "KILN_RUN_ID",
            "KILN_OUTPUTS",
            "KILN_LOGS",
            "X",
            "MASTER_ADDR",
            "KILN_JOB_TOKEN",
        ] {
            assert!(line.contains(&format!("-x {var} ")), "{var}: {line}");
        }
        assert!(env.contains(&("MASTER_ADDR".into(), "a".into())));
    }

    #[test]
    fn slurm_script_runs_srun_and_keeps_the_exit_code() {
        let j = job(
            "compute_target = \"slurm\"\nnode_count = 2\nprocess_count_per_node = 4\nuse_gpu = true\n",
        );
        let Launch::Slurm { script } = plan(&j, &paths(), Path::new("/k")).unwrap() else {
            panic!("slurm is a script");
        };
        for line in [
            "#SBATCH --nodes=2",
            "#SBATCH --ntasks-per-node=4",
            "#SBATCH --gpus-per-node=4",
            "#SBATCH --chdir=/home/u/.kiln/runs/abc123/snapshot",
            "export KILN_RUN_ID=abc123",
            "srun /k train --job /home/u/.kiln/runs/abc123/train.toml",
            "mv /home/u/.kiln/runs/abc123/logs/exit_code.tmp /home/u/.kiln/runs/abc123/logs/exit_code",
        ] {
            assert!(script.contains(line), "{line}\n{script}");
        }
    }

    #[test]
    fn quoting() {
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("it's"), "'it'\\''s'");
        assert_eq!(quote("--lr=0.1"), "--lr=0.1");
        assert_eq!(quote(""), "''");
    }
}
