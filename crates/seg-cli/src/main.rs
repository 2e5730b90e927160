//! `seg-cli`: the command line of seg.
//!
//! Raw arguments are turned into a validated plan before any work starts;
//! every failure is printed as one line (`error: ...`) with a non-zero exit.

mod info;
mod inspect;

use clap::{Parser, Subcommand};

/// Medical image segmentation with the U-Net family: U-Net, ResUNet,
/// Attention U-Net and UNet++, on CPU or GPU.
#[derive(Parser, Debug)]
#[command(name = "seg-cli", version, about, long_about = None, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print a model summary: each block's output shape and parameters.
    #[command(
        after_help = "Examples:\n  seg-cli info --model unet\n  seg-cli info --model unet --bilinear --input 572x572\n  seg-cli info --model resunet --base 16 --in-channels 1 --json"
    )]
    Info(info::InfoArgs),
    /// Describe a medical image file or a DICOM series folder.
    #[command(
        after_help = "Examples:\n  seg-cli inspect scan.nii.gz\n  seg-cli inspect CT_small.dcm --json\n  seg-cli inspect dicom_series_folder/ --series 1.2.840.113619..."
    )]
    Inspect(inspect::InspectArgs),
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SEG_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Info(a) => info::run(a),
        Command::Inspect(a) => inspect::run(a),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
