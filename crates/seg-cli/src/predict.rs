//! `seg-cli predict`: a model bundle applied to images or volumes. The work
//! is `seg_train::segment`'s; this is arguments, the input list and a
//! progress bar.

use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use seg_core::parse_device;
use seg_data::dataset::{case_id, file_stem as stem};
use seg_train::segment::{files_in, list_inputs, read_input, Segmenter};
use std::collections::HashMap;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct PredictArgs {
    /// A model bundle written by `seg-cli train` (best.safetensors).
    #[arg(long)]
    checkpoint: PathBuf,
    /// An image or volume, or a folder of them (a folder of DICOM files is read as one series).
    #[arg(long)]
    input: PathBuf,
    /// Output folder: masks/<stem>.png (label values; volumes: .nii.gz in the input's geometry), and for binary bundles <stem>.png (16-bit foreground probability).
    #[arg(long)]
    output: PathBuf,
    /// Field-of-view masks, matched by case ID (normalisation statistics and output limited to the FOV). Without it, bundles trained with FOV masks find each image's FOV themselves.
    #[arg(long)]
    fov: Option<PathBuf>,
    /// Do not find missing FOVs from the images (segment whole images).
    #[arg(long)]
    no_auto_fov: bool,
    /// Segment every image at its own scale (by default an image whose FOV diameter differs from the training images' by more than 10 % is resampled to their scale and back).
    #[arg(long)]
    no_rescale: bool,
    /// Average over flips (4 passes; the default for multi-class bundles, as in nnU-Net).
    #[arg(long, conflicts_with = "no_tta")]
    tta: bool,
    /// One pass, no flips (faster; the default for binary bundles).
    #[arg(long)]
    no_tta: bool,
    /// Tile overlap (default: the bundle's, 0.5).
    #[arg(long)]
    overlap: Option<f32>,
    /// Mask threshold (default: the one chosen on validation).
    #[arg(long)]
    threshold: Option<f32>,
    /// Multi-class bundles: also write every class's probability (volumes: <stem>.nii.gz, x × y × z × classes; 2D: <stem>_<value>.png, 16-bit).
    #[arg(long)]
    probabilities: bool,
    /// Write overlays/<stem>.png: the image with a colour per class (volumes: a montage of planes through the structures).
    #[arg(long)]
    overlay: bool,
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Convolution arithmetic on the CPU: fp32, bf16 (needs AVX512-BF16) or auto (bf16 where the CPU has it).
    #[arg(long, default_value = "auto", value_parser = ["fp32", "bf16", "auto"])]
    precision: String,
}

pub fn run(a: PredictArgs) -> Result<()> {
    let device = parse_device(&a.device)?;
    let mut seg = Segmenter::open(&a.checkpoint, &device)?;
    seg.set_precision(a.precision.parse().expect("value checked by clap"))?;
    tracing::info!(
        "precision {} ({})",
        seg.precision(),
        seg_core::precision::describe_cpu()
    );
    if let Some(t) = a.threshold {
        if !(0.0..=1.0).contains(&t) {
            bail!("--threshold must be in [0, 1]");
        }
        seg.set_threshold(t)?;
    }
    if a.probabilities {
        if seg.info().slices.is_none() {
            say!("note: --probabilities: a binary bundle writes its foreground probability anyway");
        }
        seg.set_class_probabilities(true);
    }
    seg.set_auto_fov(!a.no_auto_fov).set_rescale(!a.no_rescale);
    if a.tta || a.no_tta {
        seg.set_tta(a.tta);
    }
    if let Some(o) = a.overlap {
        if !(0.0..0.95).contains(&o) {
            bail!("--overlap must be in [0, 0.95)");
        }
        seg.set_overlap(o)?;
    }
    std::fs::create_dir_all(a.output.join("masks"))
        .with_context(|| format!("cannot create {}", a.output.display()))?;
    let fovs: HashMap<String, PathBuf> = match &a.fov {
        Some(d) => files_in(d)?.into_iter().map(|p| (case_id(&p), p)).collect(),
        None => HashMap::new(),
    };
    // a folder of DICOM files is one series
    let files = list_inputs(&a.input)?;
    // under `mpirun -np N` (the `mpi` feature) rank r takes cases r, r + N, ...
    let comm = crate::ranks::comm();
    let files: Vec<PathBuf> = comm
        .share(files.len())
        .into_iter()
        .map(|i| files[i].clone())
        .collect();
    let bar = match comm.size() {
        1 => ProgressBar::new(files.len() as u64),
        _ => ProgressBar::hidden(),
    };
    bar.set_style(
        ProgressStyle::with_template("predict [{bar:30}] {pos}/{len} {msg} ({elapsed})")
            .expect("valid template")
            .progress_chars("=> "),
    );
    for path in &files {
        bar.set_message(stem(path));
        let fov = fovs.get(&case_id(path)).map(PathBuf::as_path);
        let source = read_input(path)?;
        let s = seg.segment_read(path, &source, fov)?;
        s.write(&a.output, &stem(path))
            .with_context(|| path.display().to_string())?;
        if a.overlay {
            s.write_overlay(&source, &a.output, &stem(path))
                .with_context(|| format!("overlay of {}", path.display()))?;
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    let rank = match comm.size() {
        1 => String::new(),
        n => format!("rank {} of {n}: ", comm.rank()),
    };
    say!(
        "{rank}wrote {} prediction(s) to {} (threshold {:.3})",
        files.len(),
        a.output.display(),
        seg.threshold()
    );
    Ok(())
}
