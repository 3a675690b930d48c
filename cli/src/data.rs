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
        /// Keep at most this many training images per class.
        #[arg(long)]
        train_per_class: Option<usize>,
        /// Keep at most this many validation images per class.
        #[arg(long)]
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
