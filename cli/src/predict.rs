//! `kiln predict`: scores inputs with a model in eval mode on the CPU.
//!
//! Images (`--model DIR IMAGE_OR_DIR...`): each image gets the validation transform recorded in
//! `kiln.json` and its top-k classes are printed as a table, JSON or CSV; an image that does
//! not decode is reported on stderr, the others are still scored, and the exit code is 2.
//!
//! The raw path (`--arch NAME --weights FILE --input-tensor X.safetensors --logits-out
//! Y.safetensors`) reads an already-normalised NCHW f32 tensor named `input` and writes the
//! logits as a tensor named `logits`; the class count comes from the weights' classifier.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use burn::tensor::{Device, Tensor, TensorData};
use clap::Args;
use kiln_engine::data::decode::decode_rgb;
use kiln_engine::data::folder::is_image;
use kiln_engine::infer::{self, Scorer};
use kiln_models::{Arch, torchvision};

/// Arguments of `kiln predict`.
#[derive(Args, Debug)]
pub struct PredictArgs {
    /// A trained model directory (model.safetensors + kiln.json).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Architecture of `--weights`, by torchvision's name (e.g. resnet18).
    #[arg(long)]
    arch: Option<String>,
    /// A torchvision state dict (.pth, .pt or .safetensors).
    #[arg(long)]
    weights: Option<PathBuf>,
    /// A safetensors file holding a normalised NCHW f32 tensor named `input`.
    #[arg(long)]
    input_tensor: Option<PathBuf>,
    /// Where to write the logits, as a safetensors tensor named `logits`.
    #[arg(long)]
    logits_out: Option<PathBuf>,
    /// How many classes to show per image.
    #[arg(long, default_value_t = 5)]
    top_k: usize,
    /// Output format for image predictions: table, json or csv.
    #[arg(long, default_value = "table")]
    format: String,
    /// Images, or directories of images, to score.
    inputs: Vec<PathBuf>,
}

/// Runs `kiln predict`, on one compute pool as training runs (the GEMMs and every flex op
/// share its threads).
pub fn run(args: PredictArgs) -> Result<ExitCode> {
    let pool =
        kiln_engine::train::threads::compute_pool(kiln_engine::train::threads::default_threads())?;
    pool.install(|| predict(args))
}

fn predict(args: PredictArgs) -> Result<ExitCode> {
    match (&args.input_tensor, &args.logits_out) {
        (Some(input), Some(out)) => {
            let (Some(arch), Some(weights)) = (&args.arch, &args.weights) else {
                bail!("--input-tensor needs --arch NAME and --weights FILE");
            };
            let arch: Arch = arch.parse()?;
            predict_tensor(arch, weights, input, out)?;
            Ok(ExitCode::SUCCESS)
        }
        (Some(_), None) => bail!("--input-tensor needs --logits-out FILE.safetensors"),
        (None, Some(_)) => bail!("--logits-out needs --input-tensor FILE.safetensors"),
        (None, None) => {
            let Some(model) = &args.model else {
                bail!(
                    "give --model DIR and images, or --arch NAME --weights FILE with --input-tensor/--logits-out"
                );
            };
            if args.inputs.is_empty() {
                bail!("no images given: kiln predict --model DIR IMAGE_OR_DIR...");
            }
            let format: Format = args.format.parse()?;
            if args.top_k == 0 {
                bail!("--top-k 0 is out of range; expected at least 1");
            }
            predict_images(model, &args.inputs, args.top_k, format)
        }
    }
}

/// How `predict` prints image predictions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Table,
    Json,
    Csv,
}

impl std::str::FromStr for Format {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "table" => Ok(Format::Table),
            "json" => Ok(Format::Json),
            "csv" => Ok(Format::Csv),
            other => bail!("--format '{other}': expected table, json or csv"),
        }
    }
}

fn image_paths(inputs: &[PathBuf]) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .collect();
        entries.sort();
        for path in entries {
            if path.is_dir() {
                walk(&path, out);
            } else if is_image(&path) {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    for input in inputs {
        if input.is_dir() {
            walk(input, &mut out);
        } else {
            out.push(input.clone());
        }
    }
    out
}

fn predict_images(
    dir: &Path,
    inputs: &[PathBuf],
    top_k: usize,
    format: Format,
) -> Result<ExitCode> {
    let scorer = Scorer::load(dir, &Device::flex())?;
    let info = scorer.info();
    let k = top_k.min(info.classes.len());
    let mut failed = 0;
    let mut rows = Vec::new();
    let paths = image_paths(inputs);
    if paths.is_empty() {
        let given: Vec<String> = inputs.iter().map(|p| p.display().to_string()).collect();
        bail!(
            "no images in {}: expected image files ({}) or directories holding them",
            given.join(", "),
            kiln_engine::data::folder::IMAGE_EXTENSIONS.join(", ")
        );
    }
    for path in paths {
        let image = match decode_rgb(&path) {
            Ok(image) => image,
            Err(e) => {
                eprintln!("error: {e}");
                failed += 1;
                continue;
            }
        };
        let mut input = Vec::with_capacity(scorer.input_len());
        if let Err(why) = scorer.preprocess(&image, &mut input) {
            eprintln!("error: {}: {why}", path.display());
            failed += 1;
            continue;
        }
        let probs = infer::softmax(&scorer.logits(input, 1));
        let top: Vec<(String, f32)> = infer::top_k(&probs, k)
            .into_iter()
            .map(|c| (info.classes[c].clone(), probs[c]))
            .collect();
        rows.push((path, top));
    }
    match format {
        Format::Table => {
            for (path, top) in &rows {
                println!("{}", path.display());
                for (rank, (class, p)) in top.iter().enumerate() {
                    println!("  {:>2}. {:<24} {:>7.3}", rank + 1, class, p);
                }
            }
        }
        Format::Json => {
            let value: Vec<serde_json::Value> = rows
                .iter()
                .map(|(path, top)| {
                    serde_json::json!({
                        "path": path.display().to_string(),
                        "predictions": top.iter().map(|(c, p)| serde_json::json!({"class": c, "probability": p})).collect::<Vec<_>>(),
                    })
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&value)?);
        }
        Format::Csv => {
            println!("path,rank,class,probability");
            for (path, top) in &rows {
                for (rank, (class, p)) in top.iter().enumerate() {
                    println!(
                        "{},{},{},{}",
                        csv_field(&path.display().to_string()),
                        rank + 1,
                        csv_field(class),
                        p
                    );
                }
            }
        }
    }
    Ok(if failed > 0 {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}

fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}

fn predict_tensor(arch: Arch, weights: &Path, input: &Path, out: &Path) -> Result<()> {
    let device = Device::flex();
    let model = torchvision::load(arch, weights, None, &device)?.set_training(false);
    let x = read_input(input, &device)?;
    let logits = model.forward(x).into_data();
    write_logits(out, logits)
}

fn read_input(path: &Path, device: &Device) -> Result<Tensor<4>> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let file = safetensors::SafeTensors::deserialize(&bytes)
        .with_context(|| format!("{} is not a safetensors file", path.display()))?;
    let view = file.tensor("input").with_context(|| {
        format!(
            "{} has no tensor named 'input' (it has: {})",
            path.display(),
            file.names().join(", ")
        )
    })?;
    if view.dtype() != safetensors::Dtype::F32 || view.shape().len() != 4 || view.shape()[1] != 3 {
        bail!(
            "{}: 'input' must be f32 [N, 3, H, W], found {:?} {:?}",
            path.display(),
            view.dtype(),
            view.shape()
        );
    }
    let values: Vec<f32> = view
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    Ok(Tensor::from_data(
        TensorData::new(values, view.shape().to_vec()),
        device,
    ))
}

fn write_logits(path: &Path, logits: TensorData) -> Result<()> {
    let tensors = std::collections::BTreeMap::from([("logits".to_string(), logits)]);
    torchvision::write_safetensors(path, &tensors, None)?;
    Ok(())
}
