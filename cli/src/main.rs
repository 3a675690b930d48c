//! `kiln`: the command line over kiln's engine. One file per subcommand; this file parses the
//! arguments and turns errors into exit codes.

mod bench;
mod bench_kernels;
mod check;
mod data;
mod export;
mod guard;
mod launch;
mod log_metric;
mod models;
mod predict;
mod runs;
mod serve;
mod submit;
mod sweep;
mod table;
mod train;
mod ui;

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

/// kiln: train and serve ResNet and DenseNet image classifiers.
#[derive(Parser, Debug)]
#[command(name = "kiln", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once per run: the size of the `train` variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
enum Command {
    /// Train a classifier on a labeled image folder.
    Train(train::TrainArgs),
    /// Score images or a raw input tensor with a trained model or torchvision weights.
    Predict(predict::PredictArgs),
    /// Export a trained model (ONNX).
    Export(export::ExportArgs),
    /// Run a job file as a tracked run (snapshot, logs, metrics, status).
    Submit(submit::SubmitArgs),
    /// Hyperparameter sweeps over a job, with early termination: start, status, best, cancel.
    Sweep(sweep::SweepArgs),
    /// The run history: list, show, metrics, logs, download, cancel.
    Runs(runs::RunsArgs),
    /// The model registry: register, list, download.
    Models(models::ModelsArgs),
    /// The run history in a browser: runs, a run's page, comparisons, models, a JSON API.
    Ui(ui::UiArgs),
    /// Serve a trained or registered model over HTTP (Open Inference Protocol, KServe v2).
    Serve(serve::ServeArgs),
    /// Record a metric into the current run (for scripts run by `kiln submit`).
    LogMetric(log_metric::LogMetricArgs),
    /// Start N local workers of any program with the distributed environment set.
    Launch(launch::LaunchArgs),
    /// Internal: what `kiln submit` runs a run's program under.
    #[command(hide = true)]
    Guard(guard::GuardArgs),
    /// Import datasets into image folders.
    Data(data::DataArgs),
    /// Benchmarks: training steps, the data loader.
    Bench(bench::BenchArgs),
}

/// A panic is a kiln bug, never the user's input: it is reported in one line naming it as such
/// (no backtrace unless `RUST_BACKTRACE` asks for one), and the process exits with 101.
fn report_panics_as_bugs() {
    if std::env::var_os("RUST_BACKTRACE").is_some() {
        return;
    }
    std::panic::set_hook(Box::new(|info| {
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        let place = info
            .location()
            .map_or(String::new(), |l| format!(" at {}:{}", l.file(), l.line()));
        eprintln!(
            "error: kiln bug: {message}{place} (please report it; RUST_BACKTRACE=1 shows where \
             it came from)"
        );
    }));
}

fn main() -> ExitCode {
    report_panics_as_bugs();
    kiln_engine::train::allocator::keep_freed_memory();
    let command = Cli::command().mut_subcommand("train", train::with_defaults);
    let cli = Cli::from_arg_matches(&command.get_matches()).unwrap_or_else(|e| e.exit());
    let result = match cli.command {
        Command::Train(args) => train::run(args),
        Command::Predict(args) => predict::run(args),
        Command::Export(args) => export::run(args),
        Command::Submit(args) => submit::run(args),
        Command::Sweep(args) => sweep::run(args),
        Command::Runs(args) => runs::run(args),
        Command::Ui(args) => ui::run(args),
        Command::Serve(args) => serve::run(args),
        Command::Models(args) => models::run(args),
        Command::LogMetric(args) => log_metric::run(args),
        Command::Launch(args) => launch::run(args),
        Command::Guard(args) => guard::run(args),
        Command::Data(args) => data::run(args),
        Command::Bench(args) => bench::run(args),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
