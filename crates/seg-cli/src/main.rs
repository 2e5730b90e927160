//! `seg-cli`: the command line of seg.
//!
//! Raw arguments are turned into a validated plan before any work starts;
//! every failure is printed as one line (`error: ...`) with a non-zero exit.
//!
//! On Unix, output into a closed pipe (`seg-cli inspect --json f | head -c 10`)
//! ends the process quietly by SIGPIPE, as for other command-line tools
//! (status 141 in a shell), instead of a panic from `println!`.

// The arguments' doc comments are clap's --help text, where `<stem>` is a
// placeholder, not an HTML tag.
#![allow(rustdoc::invalid_html_tags)]

/// `eprintln!` as one write: stderr is unbuffered, and `eprintln!` issues
/// one write per piece of its format string, so under `mpirun` (which
/// forwards each rank's stderr as it comes) the ranks' lines interleave
/// mid-line. Formatting first and writing the whole line at once keeps each
/// line whole.
macro_rules! say {
    ($($arg:tt)*) => {{
        let mut line = format!($($arg)*);
        line.push('\n');
        let _ = std::io::Write::write_all(&mut std::io::stderr().lock(), line.as_bytes());
    }};
}

mod check_data;
mod eval;
mod export;
mod info;
mod inspect;
mod plot;
mod predict;
mod ranks;
mod train;

use clap::{Parser, Subcommand};

/// mimalloc: the tensor code allocates and frees many activation-sized
/// buffers per training step; the system allocator returns them to the OS
/// and page-faults them back in each time.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Tells mimalloc to keep freed memory mapped (unless `MIMALLOC_PURGE_DELAY`
/// says otherwise): a training step frees and re-allocates the same
/// activation-sized buffers every step, and memory returned to the OS comes
/// back through page faults that zero every page again.
fn keep_freed_memory() {
    // mimalloc.h: `mi_option_purge_delay` (15 in v2 and v3); -1 = never purge
    const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets one of mimalloc's global options; no other effect
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) }
    }
}

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
    /// Train a network (on the built-in synthetic vessel set when no data is given).
    #[command(
        after_help = "Examples:\n  seg-cli train --model resunet\n  seg-cli train --model unet --data datasets/DRIVE --epochs 40 --out runs/drive\n  seg-cli train --data my_dataset --max-time 20m --out runs/mine\n  seg-cli train --resume --out runs/drive\n  seg-cli train --config my_run.toml\n  seg-cli train --model unetpp --deep-supervision --norm instance --augment heavy --data my_ct_slices --window=-600,1500"
    )]
    Train(Box<train::TrainArgs>),
    /// Predict probability maps and masks with a trained model bundle.
    #[command(
        after_help = "Examples:\n  seg-cli predict --checkpoint runs/drive/best.safetensors --input DRIVE/test/images --fov DRIVE/test/mask --output out/\n  seg-cli predict --checkpoint best.safetensors --input scan.nii.gz --output out/ --tta"
    )]
    Predict(predict::PredictArgs),
    /// Evaluate probability maps against ground truth (Dice, IoU, AUC, AP, HD95, ...).
    #[command(
        after_help = "Examples:\n  seg-cli eval --pred out/ --gt DRIVE/training/1st_manual --fov DRIVE/training/mask --json report.json --csv report.csv\n  seg-cli eval --pred out/ --gt labels/ --json -"
    )]
    Eval(eval::EvalArgs),
    /// Check a dataset before a long run and list every problem.
    #[command(
        after_help = "Examples:\n  seg-cli check-data --data datasets/DRIVE\n  seg-cli check-data --data my_dataset   # images/ + masks/ [+ fov/]"
    )]
    CheckData(check_data::CheckDataArgs),
    /// Describe a medical image file or a DICOM series folder.
    #[command(
        after_help = "Examples:\n  seg-cli inspect scan.nii.gz\n  seg-cli inspect CT_small.dcm --json\n  seg-cli inspect dicom_series_folder/ --series 1.2.840.113619..."
    )]
    Inspect(inspect::InspectArgs),
    /// Export a model bundle as an ONNX model (input `image`, output `logits`).
    #[command(
        after_help = "Examples:\n  seg-cli export --checkpoint runs/drive/best.safetensors --output drive.onnx"
    )]
    Export(export::ExportArgs),
}

/// Restores the default action of SIGPIPE (terminate), which the Rust
/// runtime sets to "ignore" before `main`: a write into a closed pipe then
/// ends the process silently instead of making `println!` panic. Files are
/// written to a temporary name and renamed, so an end here leaves no
/// half-written output.
#[cfg(unix)]
fn default_sigpipe() {
    // SAFETY: sets the disposition of one signal to its default; called at
    // the start of main, before any other thread exists
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

#[cfg(not(unix))]
fn default_sigpipe() {}

fn main() {
    default_sigpipe();
    keep_freed_memory();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SEG_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let ranks = match ranks::init() {
        Ok(r) => r,
        Err(e) => {
            say!("error: {e:#}");
            std::process::exit(1);
        }
    };
    let result = match cli.command {
        Command::Info(a) => info::run(a),
        Command::Inspect(a) => inspect::run(a),
        Command::Train(a) => train::run(*a),
        Command::Predict(a) => predict::run(a),
        Command::Eval(a) => eval::run(a),
        Command::CheckData(a) => check_data::run(a),
        Command::Export(a) => export::run(a),
    };
    if let Err(e) = result {
        say!("error: {e:#}");
        ranks.abort_others(1);
        std::process::exit(1);
    }
}
