//! `seg-cli inspect`: what a file (or DICOM series folder) holds.

use anyhow::Result;
use clap::Args;
use seg_data::io::{dicom, read_any};
use serde_json::{json, Value};
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// A PNG/TIFF/GIF/JPEG/BMP, NIfTI (.nii, .nii.gz) or DICOM file, or a folder holding one DICOM series.
    path: PathBuf,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
    /// The SeriesInstanceUID to read when the folder holds several series.
    #[arg(long)]
    series: Option<String>,
}

/// JSON numbers for finite values, null otherwise.
fn num(v: f64) -> Value {
    if v.is_finite() {
        json!(v)
    } else {
        Value::Null
    }
}

pub fn run(a: InspectArgs) -> Result<()> {
    let vol = if a.path.is_dir() {
        dicom::read_series(&a.path, a.series.as_deref())?
    } else {
        read_any(&a.path)?
    };
    let values = vol.value_stats();
    let report = json!({
        "path": a.path.display().to_string(),
        "format": vol.format,
        "shape": vol.shape,
        "layout": vol.layout,
        "dtype": vol.stored.name(),
        "raw": {"min": num(vol.raw.min), "max": num(vol.raw.max), "mean": num(vol.raw.mean), "sum": num(vol.raw.sum)},
        "values": {"min": num(values.min), "max": num(values.max), "mean": num(values.mean), "nan_count": values.nan_count},
        "spacing": vol.spacing,
        "window": vol.window.map(|w| json!({"center": w.center, "width": w.width})),
        "affine": vol.affine,
        "transfer_syntax": vol.transfer_syntax,
        "photometric": vol.photometric,
    });
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{}", a.path.display());
        println!(
            "  format      {:?}, stored {}",
            vol.format,
            vol.stored.name()
        );
        println!("  shape       {:?} ({:?})", vol.shape, vol.layout);
        println!(
            "  raw         min {} max {} mean {:.4} sum {}",
            vol.raw.min, vol.raw.max, vol.raw.mean, vol.raw.sum
        );
        println!(
            "  values      min {} max {} mean {:.4} NaN {}",
            values.min, values.max, values.mean, values.nan_count
        );
        println!("  spacing     {:?}", vol.spacing);
        if let Some(w) = vol.window {
            println!("  window      centre {} width {}", w.center, w.width);
        }
        if let Some(ts) = &vol.transfer_syntax {
            println!("  transfer    {ts}");
        }
        if let Some(p) = &vol.photometric {
            println!("  photometric {p}");
        }
        if let Some(m) = vol.affine {
            println!("  affine");
            for row in m {
                println!(
                    "    [{:>10.4} {:>10.4} {:>10.4} {:>10.4}]",
                    row[0], row[1], row[2], row[3]
                );
            }
        }
    }
    Ok(())
}
