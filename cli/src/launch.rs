//! `kiln launch --nproc-per-node N -- PROGRAM ARGS...`: kiln's local launcher for any program
//! (what a multi-process `entry_script` job runs under): each worker gets RANK, WORLD_SIZE,
//! LOCAL_RANK, MASTER_ADDR, MASTER_PORT and KILN_JOB_TOKEN, and one failure stops them all.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use kiln_engine::dist::launcher::{self, LaunchConfig};

/// Arguments of `kiln launch`.
#[derive(Args, Debug)]
pub struct LaunchArgs {
    /// Workers on this machine.
    #[arg(long)]
    nproc_per_node: usize,
    /// The program and its arguments.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

/// Runs `kiln launch`.
pub fn run(args: LaunchArgs) -> Result<ExitCode> {
    crate::check::count(
        "--nproc-per-node",
        args.nproc_per_node,
        1,
        launcher::MAX_WORKERS_PER_NODE,
    )?;
    let (program, rest) = args.command.split_first().expect("clap requires a command");
    let config = LaunchConfig::local(
        PathBuf::from(program),
        rest.iter().map(Into::into).collect(),
        args.nproc_per_node,
    );
    let outcome = launcher::launch(&config)?;
    if outcome.success() {
        return Ok(ExitCode::SUCCESS);
    }
    for (rank, what) in &outcome.failures {
        eprintln!("error: worker rank {rank} {what}");
    }
    Ok(ExitCode::FAILURE)
}
