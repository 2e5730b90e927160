//! Segments what `seg-cli predict` reads — an image, a NIfTI volume, a DICOM
//! file, a DICOM series folder or a folder of files — with a model bundle,
//! and writes what it writes: `<stem>.png` (16-bit probabilities) and
//! `masks/<stem>.png`, or `<stem>.nii.gz` and `masks/<stem>.nii.gz` for
//! volumes, with the input's affine.
//!
//! ```text
//! cargo run -p seg-train --example segment -- runs/drive/best.safetensors \
//!     DRIVE/test/images/01_test.tif out/
//! ```

use seg_data::dataset::file_stem;
use seg_train::segment::{list_inputs, Segmenter, Written};
use std::path::Path;

/// Segments every input `input` stands for on the CPU; the files written.
pub fn segment_all(
    bundle: &Path,
    input: &Path,
    out_dir: &Path,
) -> Result<Vec<Written>, Box<dyn std::error::Error>> {
    let seg = Segmenter::open(bundle, &seg_core::Device::Cpu)?;
    let mut written = Vec::new();
    for path in list_inputs(input)? {
        let s = seg.segment_file(&path, None)?;
        written.push(s.write(out_dir, &file_stem(&path))?);
    }
    Ok(written)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [bundle, input, out] = args.as_slice() else {
        eprintln!("usage: segment BUNDLE INPUT OUTPUT_DIR");
        std::process::exit(2);
    };
    match segment_all(Path::new(bundle), Path::new(input), Path::new(out)) {
        Ok(written) => {
            for w in written {
                for p in &w.probabilities {
                    println!("probabilities {}", p.display());
                }
                println!("labels {}", w.mask.display());
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
