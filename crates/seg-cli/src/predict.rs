//! `seg-cli predict`: a model bundle applied to images or volumes.

use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use seg_core::parse_device;
use seg_data::dataset::{case_id, file_stem as stem};
use seg_data::io::image2d::{read_mask, write_mask_png, write_probability_png, Mask};
use seg_data::io::{dicom, file_kind, nifti, read_any, FileKind};
use seg_data::{slicing, Format, Volume};
use seg_train::checkpoint::load_bundle;
use seg_train::infer::predict;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

#[derive(Args, Debug)]
pub struct PredictArgs {
    /// A model bundle written by `seg-cli train` (best.safetensors).
    #[arg(long)]
    checkpoint: PathBuf,
    /// An image or volume, or a folder of them (a folder of DICOM files is read as one series).
    #[arg(long)]
    input: PathBuf,
    /// Output folder: <stem>.png (16-bit probabilities) and masks/<stem>.png; volumes as .nii.gz.
    #[arg(long)]
    output: PathBuf,
    /// Field-of-view masks, matched by case ID (normalisation statistics and output limited to the FOV).
    #[arg(long)]
    fov: Option<PathBuf>,
    /// Average over flips.
    #[arg(long)]
    tta: bool,
    /// Tile overlap (default: the bundle's, 0.5).
    #[arg(long)]
    overlap: Option<f32>,
    /// Mask threshold (default: the one chosen on validation).
    #[arg(long)]
    threshold: Option<f32>,
    #[arg(long, default_value = "cpu")]
    device: String,
}

fn inputs(p: &Path) -> Result<Vec<PathBuf>> {
    if p.is_file() {
        return Ok(vec![p.to_path_buf()]);
    }
    if !p.is_dir() {
        bail!("{}: no such file or folder", p.display());
    }
    let mut v: Vec<PathBuf> = std::fs::read_dir(p)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && file_kind(p).is_some())
        .collect();
    v.sort();
    if v.is_empty() {
        bail!("{}: no image, NIfTI or DICOM files", p.display());
    }
    Ok(v)
}

pub fn run(a: PredictArgs) -> Result<()> {
    let device = parse_device(&a.device)?;
    let (net, info) = load_bundle(&a.checkpoint, &device)?;
    if let Some(t) = a.threshold {
        if !(0.0..=1.0).contains(&t) {
            bail!("--threshold must be in [0, 1]");
        }
    }
    let threshold = a.threshold.unwrap_or(info.threshold);
    let mut sw = info.sliding_window.clone();
    sw.tta = a.tta;
    if let Some(o) = a.overlap {
        if !(0.0..0.95).contains(&o) {
            bail!("--overlap must be in [0, 0.95)");
        }
        sw.overlap = o;
    }
    let model = net.inference_model()?;
    let in_ch = net.config().in_channels();
    std::fs::create_dir_all(a.output.join("masks"))
        .with_context(|| format!("cannot create {}", a.output.display()))?;
    let fovs: HashMap<String, PathBuf> = match &a.fov {
        Some(d) => inputs(d)?.into_iter().map(|p| (case_id(&p), p)).collect(),
        None => HashMap::new(),
    };
    // a folder of DICOM files is one series
    let series = a.input.is_dir()
        && inputs(&a.input)?
            .iter()
            .all(|p| file_kind(p) == Some(FileKind::Dicom));
    let files = if series {
        vec![a.input.clone()]
    } else {
        inputs(&a.input)?
    };
    let bar = ProgressBar::new(files.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("predict [{bar:30}] {pos}/{len} {msg} ({elapsed})")
            .expect("valid template")
            .progress_chars("=> "),
    );
    for path in &files {
        bar.set_message(stem(path));
        (|| -> Result<()> {
            let vol = if path.is_dir() {
                dicom::read_series(path, None)?
            } else {
                read_any(path)?
            };
            let name = stem(path);
            if vol.format == Format::Image {
                let (h, w) = (vol.shape[0], vol.shape[1]);
                let fov = match fovs.get(&case_id(path)) {
                    Some(p) => {
                        let m = read_mask(p)?;
                        if (m.height, m.width) != (h, w) {
                            bail!(
                                "{}: FOV {}x{} does not match the image {h}x{w}",
                                p.display(),
                                m.height,
                                m.width
                            );
                        }
                        Some(m.data)
                    }
                    None => None,
                };
                let (img, c) = info
                    .preprocess
                    .apply_image(&vol, fov.as_deref())
                    .with_context(|| format!("preprocessing {}", path.display()))?;
                if c != in_ch {
                    bail!(
                        "{}: {c} channel(s) after preprocessing, the model expects {in_ch}",
                        path.display()
                    );
                }
                let (probs, oc) = predict(&model, &img, c, h, w, &sw, &device)?;
                let mut p: Vec<f32> = if oc == 1 {
                    probs
                } else {
                    probs[h * w..2 * h * w].to_vec()
                };
                if let Some(f) = &fov {
                    p.iter_mut().zip(f).for_each(|(v, &m)| {
                        if m == 0 {
                            *v = 0.0
                        }
                    });
                }
                write_probability_png(&a.output.join(format!("{name}.png")), h, w, &p)?;
                let mask = Mask {
                    height: h,
                    width: w,
                    data: p.iter().map(|&v| (v >= threshold) as u8).collect(),
                };
                write_mask_png(&a.output.join("masks").join(format!("{name}.png")), &mask)?;
            } else {
                predict_volume(
                    &vol, &model, in_ch, &info, &sw, threshold, &device, &a.output, &name,
                )?;
            }
            Ok(())
        })()
        .with_context(|| path.display().to_string())?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    eprintln!(
        "wrote {} prediction(s) to {} (threshold {threshold:.3})",
        files.len(),
        a.output.display()
    );
    Ok(())
}

/// A volume slice by slice (NIfTI: along z; DICOM: along frames/slices),
/// written as NIfTI with the input's affine (DICOM's LPS turned into RAS).
#[allow(clippy::too_many_arguments)]
fn predict_volume(
    vol: &Volume,
    model: &seg_models::Model,
    in_ch: usize,
    info: &seg_train::checkpoint::BundleInfo,
    sw: &seg_train::infer::SlidingWindow,
    threshold: f32,
    device: &seg_core::Device,
    out: &Path,
    name: &str,
) -> Result<()> {
    let plan = &info.preprocess;
    let invert = vol.photometric.as_deref() == Some("MONOCHROME1");
    let unit = Volume {
        values: plan.to_unit(&vol.values, vol.stored, vol.format, invert)?,
        ..vol.clone()
    };
    let (axis, dims, affine) = match vol.format {
        Format::Nifti => {
            if vol.shape.len() != 3 {
                bail!(
                    "{name}: only 3D NIfTI volumes are predicted (shape {:?})",
                    vol.shape
                );
            }
            (
                2,
                vol.shape.clone(),
                vol.affine.unwrap_or_else(|| diag(&vol.spacing)),
            )
        }
        _ => {
            if vol.shape[3] != 1 {
                bail!("{name}: colour DICOM volumes are not supported");
            }
            let (f, r, c) = (vol.shape[0], vol.shape[1], vol.shape[2]);
            let mut a = vol
                .affine
                .unwrap_or_else(|| diag(&[vol.spacing[1], vol.spacing[0], 1.0]));
            for row in a.iter_mut().take(2) {
                for v in row.iter_mut() {
                    *v = -*v;
                }
            }
            (0, vec![c, r, f], a)
        }
    };
    let context = if in_ch > 1 { (in_ch - 1) / 2 } else { 0 };
    let n = slicing::slice_count(&unit, axis)?;
    let mut slices = Vec::with_capacity(n);
    for k in 0..n {
        let (vals, (h, w)) = slicing::slice(&unit, axis, k, context)?;
        let ch = 2 * context + 1;
        let mut hwc = vec![0f32; vals.len()];
        for p in 0..h * w {
            for c in 0..ch {
                hwc[p * ch + c] = vals[c * h * w + p];
            }
        }
        let plan_all = seg_data::Preprocess {
            channels: seg_data::intensity::ChannelChoice::All,
            ..plan.clone()
        };
        let (img, c) = plan_all.apply_unit(&hwc, h, w, ch, None)?;
        let (probs, oc) = predict(model, &img, c, h, w, sw, device)?;
        slices.push(if oc == 1 {
            probs
        } else {
            probs[h * w..2 * h * w].to_vec()
        });
    }
    let probs = slicing::assemble(&unit, axis, &slices)?;
    let mask: Vec<f32> = probs
        .iter()
        .map(|&p| (p >= threshold) as u8 as f32)
        .collect();
    nifti::write_nifti(&out.join(format!("{name}.nii.gz")), &dims, &probs, &affine)?;
    nifti::write_nifti(
        &out.join("masks").join(format!("{name}.nii.gz")),
        &dims,
        &mask,
        &affine,
    )?;
    Ok(())
}

fn diag(s: &[f64]) -> [[f64; 4]; 4] {
    let g = |i: usize| s.get(i).copied().unwrap_or(1.0);
    [
        [g(0), 0.0, 0.0, 0.0],
        [0.0, g(1), 0.0, 0.0],
        [0.0, 0.0, g(2), 0.0],
        [0.0, 0.0, 0.0, 1.0],
    ]
}
