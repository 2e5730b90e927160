//! Workspace tasks, run as `cargo xtask <task>`:
//! - `check-layers`: the crate layering and feature rules (also a `#[test]`);
//! - `check-vendor`: vendor/ is the pristine crates.io sources plus our patches;
//! - `fetch-drive`: install and verify DRIVE from a zip, folder or URL;
//! - `bench`: train/infer timings side by side with the PyTorch peer;
//! - `cuda-check`: build the `cuda` feature against a CUDA toolkit (the
//!   system's, or NVIDIA's wheels from the Python package index).

use xtask::{bench, cuda, fetch, layers, vendor};

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
        /// Input channels [default: 3; 1 with --dims 3].
        #[arg(long)]
        in_channels: Option<usize>,
        /// Train batch [default: 8; 2 with --dims 3].
        #[arg(long)]
        batch: Option<usize>,
        /// Train image side [default: 64]; with --dims 3 the cube side of
        /// train and infer [default: 64 and 128].
        #[arg(long)]
        size: Option<usize>,
        /// train or infer (default: both, with --model).
        #[arg(long)]
        mode: Option<String>,
        /// 2 (images) or 3 (volumes: the 3D networks, default U-Net base 16,
        /// train 2×1×64³ and infer 1×1×128³; --model, --base, --mode, --batch,
        /// --size and --in-channels change it).
        #[arg(long, default_value_t = 2, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(2..=3))]
        dims: usize,
        #[arg(long, default_value_t = 10)]
        reps: usize,
        #[arg(long, default_value_t = 2)]
        warmup: usize,
        /// Alternating seg/peer rounds per configuration.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// A Python interpreter with torch: runs the peer script alternately.
        #[arg(long)]
        peer: Option<String>,
        /// The peer script [default: ../shared/bench/torch_peer.py; with
        /// --dims 3 xtask/peer/torch_peer3d.py].
        #[arg(long)]
        peer_script: Option<std::path::PathBuf>,
        /// Where seg runs: cpu, cuda:N or metal:N (a GPU needs an xtask
        /// built with --features cuda / metal; the peer runs on the CPU only).
        #[arg(long, default_value = "cpu")]
        device: String,
        /// seg's arithmetic: fp32, bf16 or auto (bf16 where the CPU has
        /// AVX512-BF16).
        #[arg(long, default_value = "fp32")]
        precision: String,
        /// The peer's variant (passed on as --variant): fp32, fp32-cl, bf16,
        /// onnxruntime, openvino, openvino-fp32 or best (the fastest).
        #[arg(long)]
        peer_variant: Option<String>,
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
        /// 2D inference is on 584×565 whatever these say.
        #[arg(long)]
        height: Option<usize>,
        #[arg(long)]
        width: Option<usize>,
        /// 3D inference: the volume's side (a cube: --height and --width, if
        /// given, must be the same).
        #[arg(long)]
        depth: Option<usize>,
        #[arg(long, default_value_t = 2, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(2..=3))]
        dims: usize,
        #[arg(long, default_value_t = 10)]
        reps: usize,
        #[arg(long, default_value_t = 2)]
        warmup: usize,
        #[arg(long, default_value = "cpu")]
        device: String,
        #[arg(long, default_value = "fp32")]
        precision: String,
    },
    /// Compare a bundle's results on a device with the CPU's: the network's
    /// eval pass on random tiles, flips, softmax/sigmoid, and whole
    /// segmentations of --input files (needs an xtask built with
    /// --features cuda for cuda:N).
    GpuDiag {
        #[arg(long)]
        bundle: std::path::PathBuf,
        /// Images or volumes to segment on both devices.
        #[arg(long)]
        input: Vec<std::path::PathBuf>,
        #[arg(long, default_value = "cuda:0")]
        device: String,
    },
    /// Build `seg-cli --features cuda` (and the parity test, and this xtask)
    /// against a CUDA toolkit: NVIDIA's CUDA 13.0 wheels from the Python
    /// package index, installed into target/cuda-toolkit, unless --toolkit
    /// names one. Builds only; runs nothing on a GPU.
    CudaCheck {
        /// The GPU architecture to build the kernels for (CUDA_COMPUTE_CAP):
        /// 90 for H100/H200, 80 for A100, 89 for L4/RTX 40xx.
        #[arg(long, default_value_t = 90)]
        compute_cap: u32,
        /// An installed CUDA toolkit (its CUDA_HOME, with bin/nvcc) instead
        /// of the wheels.
        #[arg(long)]
        toolkit: Option<std::path::PathBuf>,
        /// Build the dev profile (default: --release).
        #[arg(long)]
        dev: bool,
        /// Only seg-cli (not the parity test binary and the cuda xtask).
        #[arg(long)]
        no_tests: bool,
        /// Target folder of the cuda build [default: target/cuda-build].
        #[arg(long)]
        target_dir: Option<std::path::PathBuf>,
        /// The Python whose pip downloads the wheels.
        #[arg(long, default_value = "python3")]
        python: String,
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

/// The peer script when `--peer-script` is not given: the 2D peer in
/// ../shared, or, for 3D, ours in xtask/peer/ (from the workspace root, else
/// where this xtask was built from).
fn default_peer_script(dims: usize) -> std::path::PathBuf {
    if dims == 3 {
        let here = std::path::PathBuf::from("xtask/peer/torch_peer3d.py");
        if here.is_file() {
            here
        } else {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("peer/torch_peer3d.py")
        }
    } else {
        "../shared/bench/torch_peer.py".into()
    }
}

/// `bench-one`'s case: a 3D infer volume is a cube of side --depth (or
/// --size); 2D inference ignores --height/--width (always 584×565).
fn bench_one_case(
    mut case: bench::Case,
    [depth, height, width]: [Option<usize>; 3],
) -> Result<bench::Case> {
    if case.dims == 3 && case.mode != "train" {
        case.size = depth.unwrap_or(case.size);
        if [height, width].iter().flatten().any(|&s| s != case.size) {
            anyhow::bail!("3D inference takes a cube: --depth, --height and --width must be equal");
        }
    }
    Ok(case)
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
            dims,
            reps,
            warmup,
            rounds,
            peer,
            peer_script,
            device,
            precision,
            peer_variant,
        } => {
            let modes: Vec<String> = match mode {
                Some(x) => vec![x],
                None => vec!["train".into(), "infer".into()],
            };
            let cases = if dims == 3 {
                // one network by default, so the other flags apply to it too
                bench::cases_3d(
                    model.as_deref().unwrap_or("unet"),
                    base.unwrap_or(16),
                    in_channels.unwrap_or(1),
                    &modes,
                    batch.unwrap_or(2),
                    size,
                )
            } else {
                match model {
                    None => bench::default_cases(),
                    Some(m) => modes
                        .into_iter()
                        .map(|mode| bench::Case {
                            model: m.clone(),
                            base: base.unwrap_or(16),
                            in_channels: in_channels.unwrap_or(3),
                            mode,
                            batch: batch.unwrap_or(8),
                            size: size.unwrap_or(64),
                            dims: 2,
                        })
                        .collect(),
                }
            };
            let peer_script = peer_script.unwrap_or_else(|| default_peer_script(dims));
            if peer.is_some() && !peer_script.is_file() {
                eprintln!(
                    "error: peer script {} not found (pass --peer-script)",
                    peer_script.display()
                );
                std::process::exit(1);
            }
            if peer.is_some() && device != "cpu" {
                eprintln!("error: the PyTorch peer runs on the CPU: --peer needs --device cpu");
                std::process::exit(1);
            }
            bench::run(&bench::BenchOptions {
                cases,
                reps,
                warmup,
                rounds,
                peer,
                peer_script,
                device,
                precision,
                peer_variant,
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
            height,
            width,
            depth,
            dims,
            reps,
            warmup,
            device,
            precision,
        } => bench_one_case(
            bench::Case {
                model,
                base,
                in_channels,
                mode,
                batch,
                size,
                dims,
            },
            [depth, height, width],
        )
        .and_then(|case| bench::run_one(&case, reps, warmup, &device, &precision)),
        Task::GpuDiag {
            bundle,
            input,
            device,
        } => xtask::gpudiag::run(&xtask::gpudiag::GpuDiag {
            bundle,
            inputs: input,
            device,
        }),
        Task::CudaCheck {
            compute_cap,
            toolkit,
            dev,
            no_tests,
            target_dir,
            python,
        } => cuda::run(&cuda::CudaCheck {
            compute_cap,
            toolkit,
            dev,
            no_tests,
            target_dir,
            python,
        }),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
