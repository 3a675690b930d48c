//! `kiln models register | list | download`: the model registry, versioned by name, each file
//! checked by SHA-256.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, Subcommand};
use kiln_runs::{self as runs, ModelRegistry, RunHistory};

use crate::table;

/// Arguments of `kiln models`.
#[derive(Args, Debug)]
pub struct ModelsArgs {
    #[command(subcommand)]
    command: ModelsCommand,
}

#[derive(Subcommand, Debug)]
enum ModelsCommand {
    /// Copy a run's model into the registry as the next version of NAME.
    Register {
        /// The run (id or unique prefix).
        #[arg(long)]
        run: String,
        /// The model's name.
        #[arg(long)]
        name: String,
        /// The file or directory inside the run.
        #[arg(long, default_value = "outputs/model")]
        path: String,
    },
    /// Registered models and versions.
    List {
        /// JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Copy NAME[:VERSION] (default: the latest) into DEST.
    Download {
        /// NAME or NAME:VERSION.
        model: String,
        /// The directory to copy into.
        dest: PathBuf,
    },
}

/// Runs `kiln models ...`.
pub fn run(args: ModelsArgs) -> Result<ExitCode> {
    let home = runs::kiln_home();
    // Listing and downloading read a KILN_HOME this user cannot write, as it is.
    let mut history = match args.command {
        ModelsCommand::Register { .. } => RunHistory::open(&home)?,
        _ => RunHistory::open_to_read(&home)?,
    };
    let mut registry = ModelRegistry::new(&mut history);
    match args.command {
        ModelsCommand::Register { run, name, path } => {
            let (version, files) = registry.register(&run, &name, &path)?;
            println!("registered {name}:{version} ({} files)", files.len());
            for f in files {
                println!("  {}  {}", f.sha256, f.path);
            }
        }
        ModelsCommand::List { json } => {
            let models = registry.list()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&models)?);
            } else if models.is_empty() {
                println!("no models registered (kiln models register --run RUN --name NAME)");
            } else {
                let rows: Vec<Vec<String>> = models
                    .iter()
                    .map(|m| {
                        vec![
                            m.name.clone(),
                            m.version.to_string(),
                            m.run_id.clone().unwrap_or("-".into()),
                            m.source_path.clone(),
                            m.files.to_string(),
                            runs::snapshot::human_bytes(m.size),
                            table::timestamp(m.created),
                        ]
                    })
                    .collect();
                print!(
                    "{}",
                    table::render(
                        &[
                            "name",
                            "version",
                            "run",
                            "path",
                            "files",
                            "size",
                            "registered (UTC)"
                        ],
                        &rows
                    )
                );
            }
        }
        ModelsCommand::Download { model, dest } => {
            let version = registry.download(&model, &dest)?;
            let name = model.split(':').next().unwrap_or(&model);
            println!(
                "{name}:{version} downloaded to {} (sha256 checked)",
                dest.display()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
