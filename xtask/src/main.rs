//! Workspace tasks, run as `cargo xtask <task>`:
//! - `check-layers`: the crate layering and feature rules (also a `#[test]`).

mod layers;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "seg workspace tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Check that each crate depends only on lower layers and only seg-core names candle.
    CheckLayers,
}

fn main() {
    let cli = Cli::parse();
    let result: Result<()> = match cli.task {
        Task::CheckLayers => layers::run(),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
