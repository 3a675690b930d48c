//! `kiln export onnx --model DIR --out FILE.onnx [--opset N] [--batch N|dynamic]`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Result, bail};
use clap::{Args, Subcommand};
use kiln_engine::model_dir;

/// Arguments of `kiln export`.
#[derive(Args, Debug)]
pub struct ExportArgs {
    #[command(subcommand)]
    format: ExportFormat,
}

#[derive(Subcommand, Debug)]
enum ExportFormat {
    /// A trained model directory as an ONNX file, in inference mode.
    Onnx {
        /// The trained model directory (model.safetensors + kiln.json).
        #[arg(long)]
        model: PathBuf,
        /// The ONNX file to write.
        #[arg(long)]
        out: PathBuf,
        /// ONNX opset, 11 to 21.
        #[arg(long, default_value_t = 17)]
        opset: u32,
        /// A fixed batch size, or `dynamic`.
        #[arg(long, default_value = "dynamic")]
        batch: String,
    },
}

/// Runs `kiln export`.
pub fn run(args: ExportArgs) -> Result<ExitCode> {
    match args.format {
        ExportFormat::Onnx {
            model,
            out,
            opset,
            batch,
        } => {
            let batch = match batch.as_str() {
                "dynamic" => None,
                n => match n.parse::<usize>() {
                    Ok(n) if n > 0 => Some(n),
                    _ => bail!("--batch {n}: expected a positive number or 'dynamic'"),
                },
            };
            let started = Instant::now();
            let bytes = model_dir::export_onnx(&model, &out, opset, batch)?;
            println!(
                "wrote {} ({:.1} MB, opset {opset}, batch {}) in {:.2}s",
                out.display(),
                bytes as f64 / 1e6,
                batch.map_or("dynamic".to_string(), |n| n.to_string()),
                started.elapsed().as_secs_f64()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
