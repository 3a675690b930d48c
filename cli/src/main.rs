//! `kiln`: the command line over kiln's engine. One file per subcommand; this file parses the
//! arguments and turns errors into exit codes.

mod bench;
mod data;
mod export;
mod predict;
mod train;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
    /// Import datasets into image folders.
    Data(data::DataArgs),
    /// Benchmarks: training steps, the data loader.
    Bench(bench::BenchArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Train(args) => train::run(args),
        Command::Predict(args) => predict::run(args),
        Command::Export(args) => export::run(args),
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
