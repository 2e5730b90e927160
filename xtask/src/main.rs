//! Workspace tasks, run as `cargo xtask <task>`:
//! - `check-layers`: the crate layering and feature rules (also a `#[test]`);
//! - `check-vendor`: vendor/ is the pristine crates.io sources plus our patches;
//! - `fetch-drive`: install and verify DRIVE from a zip, folder or URL;
//! - `bench`: train/infer timings side by side with the PyTorch peer.

use xtask::{bench, fetch, layers, vendor};

/// The same allocator as seg-cli, so that `bench` measures what users run.
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
    /// Check that vendor/ is the pristine crates.io releases plus the patches in vendor/patches/.
    CheckVendor {
        /// Also compare the recorded checksums with the crates.io index.
        #[arg(long)]
        online: bool,
    },
    /// Time train steps and inference, side by side with the PyTorch peer.
    Bench {
        /// One network (default: the standard set).
        #[arg(long)]
        model: Option<String>,
        #[arg(long)]
        base: Option<usize>,
        #[arg(long, default_value_t = 3)]
        in_channels: usize,
        #[arg(long, default_value_t = 8)]
        batch: usize,
        #[arg(long, default_value_t = 64)]
        size: usize,
        /// train or infer (default: both, with --model).
        #[arg(long)]
        mode: Option<String>,
        #[arg(long, default_value_t = 10)]
        reps: usize,
        #[arg(long, default_value_t = 2)]
        warmup: usize,
        /// Alternating seg/peer rounds per configuration.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// A Python interpreter with torch: runs shared/bench/torch_peer.py alternately.
        #[arg(long)]
        peer: Option<String>,
        #[arg(long, default_value = "../shared/bench/torch_peer.py")]
        peer_script: std::path::PathBuf,
    },
    /// Time each 3×3 convolution of a U-Net on its own (a profiling aid).
    #[command(hide = true)]
    ConvLayers {
        #[arg(long, default_value_t = 32)]
        base: usize,
        #[arg(long, default_value_t = 8)]
        batch: usize,
        #[arg(long, default_value_t = 64)]
        size: usize,
        /// Only this layer (0-based).
        #[arg(long)]
        layer: Option<usize>,
        /// Run the layer's forward + weight gradient this many times, untimed.
        #[arg(long)]
        repeat: Option<usize>,
        /// With --repeat: the forward pass alone.
        #[arg(long)]
        forward_only: bool,
    },
    /// One seg measurement as a JSON line (spawned by `bench`).
    #[command(hide = true)]
    BenchOne {
        #[arg(long)]
        model: String,
        #[arg(long)]
        base: usize,
        #[arg(long, default_value_t = 3)]
        in_channels: usize,
        #[arg(long)]
        mode: String,
        #[arg(long, default_value_t = 8)]
        batch: usize,
        #[arg(long, default_value_t = 64)]
        size: usize,
        #[arg(long, default_value_t = 584)]
        height: usize,
        #[arg(long, default_value_t = 565)]
        width: usize,
        #[arg(long, default_value_t = 10)]
        reps: usize,
        #[arg(long, default_value_t = 2)]
        warmup: usize,
    },
    /// Install and verify the DRIVE dataset from a zip, a folder or a URL.
    FetchDrive {
        /// A zip in the official layout, or an unpacked DRIVE folder.
        #[arg(long)]
        from: Option<std::path::PathBuf>,
        /// Download the zip over HTTP(S) (resumable, retried).
        #[arg(long)]
        url: Option<String>,
        /// Where to install (git-ignored).
        #[arg(long, default_value = "datasets/DRIVE")]
        dest: std::path::PathBuf,
        /// The manifest of expected files.
        #[arg(long, default_value = "datasets/DRIVE.manifest")]
        manifest: std::path::PathBuf,
    },
}

fn main() {
    keep_freed_memory();
    let cli = Cli::parse();
    let result: Result<()> = match cli.task {
        Task::CheckLayers => layers::run(),
        Task::CheckVendor { online } => vendor::run(online),
        Task::FetchDrive {
            from,
            url,
            dest,
            manifest,
        } => fetch::run(from, url, dest, manifest),
        Task::Bench {
            model,
            base,
            in_channels,
            batch,
            size,
            mode,
            reps,
            warmup,
            rounds,
            peer,
            peer_script,
        } => {
            let cases = match model {
                None => bench::default_cases(),
                Some(m) => {
                    let modes: Vec<String> = match mode {
                        Some(x) => vec![x],
                        None => vec!["train".into(), "infer".into()],
                    };
                    modes
                        .into_iter()
                        .map(|mode| bench::Case {
                            model: m.clone(),
                            base: base.unwrap_or(16),
                            in_channels,
                            mode,
                            batch,
                            size,
                        })
                        .collect()
                }
            };
            if peer.is_some() && !peer_script.is_file() {
                eprintln!(
                    "error: peer script {} not found (pass --peer-script)",
                    peer_script.display()
                );
                std::process::exit(1);
            }
            bench::run(&bench::BenchOptions {
                cases,
                reps,
                warmup,
                rounds,
                peer,
                peer_script,
            })
            .map(|_| ())
        }
        Task::ConvLayers {
            base,
            batch,
            size,
            layer,
            repeat,
            forward_only,
        } => {
            xtask::convprof::run(base, batch, size, layer, repeat, forward_only);
            Ok(())
        }
        Task::BenchOne {
            model,
            base,
            in_channels,
            mode,
            batch,
            size,
            height: _,
            width: _,
            reps,
            warmup,
        } => bench::run_one(
            &bench::Case {
                model,
                base,
                in_channels,
                mode,
                batch,
                size,
            },
            reps,
            warmup,
        ),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
