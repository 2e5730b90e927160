//! How a DRIVE model segments fundus photographs that do not look like its
//! training images: the validation images of a run as they are (given FOV
//! mask, then the FOV found from the image), and enlarged 1.7× (about
//! CHASE_DB1's scale against DRIVE's) and JPEG-compressed (quality 75),
//! segmented with and without bringing them back to the training scale.
//! F1 at the bundle's threshold inside the FOV against the manual labels.
//!
//! ```sh
//! seg-cli train --config configs/drive.toml --data DRIVE --out runs/drive
//! cargo run --release -p seg-train --example fundus_scale -- runs/drive DRIVE
//! ```

use seg_core::Device;
use seg_data::resample::{resize_labels, resize_plane};
use seg_data::{read_image, read_mask, Mask, Volume};
use seg_train::segment::Segmenter;
use std::path::{Path, PathBuf};

/// F1 of `probs ≥ t` against `label` inside `fov`.
fn f1(probs: &[f32], t: f32, label: &[u8], fov: &[u8]) -> f64 {
    let (mut tp, mut fp, mut fneg) = (0u64, 0u64, 0u64);
    for ((&p, &l), &m) in probs.iter().zip(label).zip(fov) {
        if m == 0 {
            continue;
        }
        match (p >= t, l != 0) {
            (true, true) => tp += 1,
            (true, false) => fp += 1,
            (false, true) => fneg += 1,
            _ => {}
        }
    }
    2.0 * tp as f64 / (2 * tp + fp + fneg).max(1) as f64
}

/// `vol` enlarged by `f` and passed through JPEG at `quality`.
fn enlarge_jpeg(vol: &Volume, f: f64, quality: u8, tmp: &Path) -> Volume {
    let (h, w, c) = (vol.shape[0], vol.shape[1], vol.shape[2]);
    let (nh, nw) = (
        (h as f64 * f).round() as usize,
        (w as f64 * f).round() as usize,
    );
    let mut rgb = vec![0u8; nh * nw * 3];
    for ch in 0..3 {
        let plane: Vec<f32> = vol
            .values
            .iter()
            .skip(ch.min(c - 1))
            .step_by(c)
            .copied()
            .collect();
        for (i, v) in resize_plane(&plane, h, w, nh, nw).into_iter().enumerate() {
            rgb[i * 3 + ch] = v.round().clamp(0.0, 255.0) as u8;
        }
    }
    let img = image::RgbImage::from_raw(nw as u32, nh as u32, rgb).expect("size");
    let mut out = std::io::BufWriter::new(std::fs::File::create(tmp).expect("temp file"));
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality)
        .encode_image(&img)
        .expect("jpeg");
    drop(out);
    read_image(tmp).expect("jpeg back")
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 3 {
        eprintln!("usage: fundus_scale RUN DRIVE");
        std::process::exit(2);
    }
    let (run, drive) = (PathBuf::from(&args[1]), PathBuf::from(&args[2]));
    let split: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("split.json"))?)?;
    let mut seg = Segmenter::open(&run.join("best.safetensors"), &Device::Cpu)?;
    let t = seg.threshold();
    println!(
        "bundle: threshold {t:.3}, training FOV diameter {:?} px",
        seg.info().fov_diameter
    );
    println!(
        "image | given FOV | found FOV | 1.7x+JPEG, at the training scale | 1.7x+JPEG, as it is"
    );
    let tmp = std::env::temp_dir().join(format!("fundus-scale-{}.jpg", std::process::id()));
    let mut sums = [0f64; 4];
    let ids: Vec<String> = split["val"]
        .as_array()
        .ok_or("split.json without val")?
        .iter()
        .filter_map(|v| v.as_str().map(|s| s[..2].to_string()))
        .collect();
    for id in &ids {
        let img_path = drive.join(format!("training/images/{id}_training.tif"));
        let fov_path = drive.join(format!("training/mask/{id}_training_mask.gif"));
        let label = read_mask(&drive.join(format!("training/1st_manual/{id}_manual1.gif")))?;
        let fov = read_mask(&fov_path)?;
        seg.set_auto_fov(true).set_rescale(true);
        let given = seg.segment_file(&img_path, Some(&fov_path))?;
        let found = seg.segment_file(&img_path, None)?;
        let src = read_image(&img_path)?;
        let big = enlarge_jpeg(&src, 1.7, 75, &tmp);
        let (nh, nw) = (big.shape[0], big.shape[1]);
        let big_label = resize_labels(&label.data, label.height, label.width, nh, nw, 2);
        let big_fov = Mask {
            height: nh,
            width: nw,
            data: resize_labels(&fov.data, fov.height, fov.width, nh, nw, 2),
        };
        let scaled = seg.segment_image(&big, None)?;
        seg.set_rescale(false);
        let as_is = seg.segment_image(&big, None)?;
        let row = [
            f1(&given.probabilities, t, &label.data, &fov.data),
            f1(&found.probabilities, t, &label.data, &fov.data),
            f1(&scaled.probabilities, t, &big_label, &big_fov.data),
            f1(&as_is.probabilities, t, &big_label, &big_fov.data),
        ];
        for (s, v) in sums.iter_mut().zip(row) {
            *s += v;
        }
        println!(
            "{id} | {:.4} | {:.4} | {:.4} | {:.4}",
            row[0], row[1], row[2], row[3]
        );
    }
    let n = ids.len().max(1) as f64;
    println!(
        "mean | {:.4} | {:.4} | {:.4} | {:.4}",
        sums[0] / n,
        sums[1] / n,
        sums[2] / n,
        sums[3] / n
    );
    let _ = std::fs::remove_file(&tmp);
    Ok(())
}
