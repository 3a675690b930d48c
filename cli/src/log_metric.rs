//! `kiln log-metric NAME VALUE [--step N]`: records a metric into the current run from a shell
//! script (a line appended to `$KILN_LOGS/metrics.jsonl`, which `kiln submit` ingests).

use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use kiln_runs::ingest;

/// Arguments of `kiln log-metric`.
#[derive(Args, Debug)]
pub struct LogMetricArgs {
    /// The metric's name.
    name: String,
    /// Its value: a number, `inf` or `-inf` (negative values are values, not flags).
    #[arg(allow_hyphen_values = true)]
    value: f64,
    /// The step it belongs to.
    #[arg(long)]
    step: Option<i64>,
}

/// Runs `kiln log-metric`.
pub fn run(args: LogMetricArgs) -> Result<ExitCode> {
    if args.value.is_nan() {
        anyhow::bail!("value NaN is not a metric value; expected a number, inf or -inf");
    }
    ingest::log_metric(&args.name, args.value, args.step)?;
    Ok(ExitCode::SUCCESS)
}
