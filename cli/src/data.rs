//! `kiln data import fashion-mnist SRC DEST`: IDX files to an image folder.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::{Args, Subcommand};
use kiln_engine::data::idx::{ImportLimit, import_fashion_mnist};

/// Arguments of `kiln data`.
#[derive(Args, Debug)]
pub struct DataArgs {
    #[command(subcommand)]
    command: DataCommand,
}

#[derive(Subcommand, Debug)]
enum DataCommand {
    /// Import a dataset into an image folder (DEST/train, DEST/val).
    Import {
        /// Dataset name: fashion-mnist.
        dataset: String,
        /// Directory with the dataset's files (for Fashion-MNIST, the four IDX files).
        src: PathBuf,
        /// Image folder to create.
        dest: PathBuf,
        /// Keep at most this many training images per class (1 or more).
        #[arg(long, value_parser = at_least_one)]
        train_per_class: Option<usize>,
        /// Keep at most this many validation images per class (1 or more).
        #[arg(long, value_parser = at_least_one)]
        val_per_class: Option<usize>,
    },
}

/// Runs `kiln data`.
pub fn run(args: DataArgs) -> Result<ExitCode> {
    match args.command {
        DataCommand::Import {
            dataset,
            src,
            dest,
            train_per_class,
            val_per_class,
        } => {
            if dataset != "fashion-mnist" {
                bail!("unknown dataset '{dataset}'; known: fashion-mnist");
            }
            let limit = ImportLimit {
                train_per_class,
                val_per_class,
            };
            let (train, val) = import_fashion_mnist(&src, &dest, limit)?;
            println!(
                "wrote {train} training and {val} validation images to {}",
                dest.display()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// A per-class limit: a count of images, 1 or more (0 would import a split with nothing in it).
fn at_least_one(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!(
            "'{text}' is not a count of images; expected 1 or more"
        )),
    }
}
