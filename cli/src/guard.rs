//! `kiln guard --run ID --home DIR -- PROGRAM ARGS...` (hidden): what `kiln submit` starts a
//! run's program under, so that the program and everything it started end with the submitter
//! however the submitter ends, and the run is marked lost (see `kiln_runs::guard`).

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

/// Arguments of `kiln guard`.
#[derive(Args, Debug)]
pub struct GuardArgs {
    /// The run's id.
    #[arg(long)]
    run: String,
    /// The run history's home (`KILN_HOME`).
    #[arg(long)]
    home: PathBuf,
    /// The program and its arguments.
    #[arg(last = true, required = true)]
    command: Vec<OsString>,
}

/// Runs `kiln guard`.
pub fn run(args: GuardArgs) -> Result<ExitCode> {
    let (program, rest) = args.command.split_first().expect("clap requires a command");
    let code = kiln_runs::guard::guard(&args.run, &args.home, program, rest);
    Ok(ExitCode::from(code))
}
