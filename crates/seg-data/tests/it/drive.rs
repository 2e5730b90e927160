//! Every DRIVE file decoded as Pillow decodes it (shared/datasets/DRIVE-reference.json).

use crate::shared_or_skip;
use seg_data::{read_image, read_mask};
use serde_json::Value;

#[test]
fn every_drive_file_matches_pillow() {
    let refpath = shared_or_skip!("datasets/DRIVE-reference.json");
    let root = refpath.parent().unwrap().to_path_buf();
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&refpath).unwrap()).unwrap();
    let files = r["files"].as_array().unwrap();
    assert_eq!(files.len(), 100);
    for e in files {
        let file = e["file"].as_str().unwrap();
        let path = root.join(file);
        let v = read_image(&path).unwrap_or_else(|err| panic!("{file}: {err}"));
        let (h, w) = (
            e["height"].as_u64().unwrap() as usize,
            e["width"].as_u64().unwrap() as usize,
        );
        assert_eq!((v.shape[0], v.shape[1]), (h, w), "{file}");
        let c = v.shape[2];
        let at = |row: usize, col: usize| -> Vec<f32> {
            v.values[(row * w + col) * c..(row * w + col + 1) * c].to_vec()
        };
        if let Some(sums) = e["channel_sums"].as_array() {
            assert_eq!(c, sums.len(), "{file}");
            for (ch, want) in sums.iter().enumerate() {
                let got: f64 = v.values.iter().skip(ch).step_by(c).map(|&x| x as f64).sum();
                assert_eq!(got, want.as_f64().unwrap(), "{file}: channel {ch} sum");
            }
            for p in e["probes_row_col"].as_array().unwrap() {
                let want: Vec<f32> = p["value"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_f64().unwrap() as f32)
                    .collect();
                assert_eq!(
                    at(
                        p["row"].as_u64().unwrap() as usize,
                        p["col"].as_u64().unwrap() as usize
                    ),
                    want,
                    "{file}"
                );
            }
        } else {
            assert_eq!(c, 1, "{file}: greyscale GIF");
            let sum: f64 = v.values.iter().map(|&x| x as f64).sum();
            assert_eq!(sum, e["sum"].as_f64().unwrap(), "{file}: sum");
            for p in e["probes_row_col"].as_array().unwrap() {
                let want = p["value"].as_f64().unwrap() as f32;
                assert_eq!(
                    at(
                        p["row"].as_u64().unwrap() as usize,
                        p["col"].as_u64().unwrap() as usize
                    ),
                    vec![want],
                    "{file}"
                );
            }
            let counts = e["value_counts"].as_object().unwrap();
            let ones = counts.get("255").and_then(|x| x.as_u64()).unwrap_or(0) as usize;
            let m = read_mask(&path).unwrap();
            assert_eq!(
                m.data.iter().filter(|&&x| x == 1).count(),
                ones,
                "{file}: foreground count"
            );
        }
    }
}

/// The FOV found from each of the 40 DRIVE photographs against DRIVE's own
/// mask (issue 18: IoU ≥ 0.97 on every image).
#[test]
fn the_automatic_fov_matches_drive_masks() {
    let root = shared_or_skip!("datasets/DRIVE");
    let mut worst = (1.0f64, String::new());
    let mut n = 0;
    for split in ["training", "test"] {
        let mut images: Vec<_> = std::fs::read_dir(root.join(split).join("images"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        images.sort();
        for img in images {
            let id = img.file_name().unwrap().to_string_lossy()[..2].to_string();
            let mask = root
                .join(split)
                .join("mask")
                .join(format!("{id}_{split}_mask.gif"));
            let given = read_mask(&mask).unwrap();
            let found = seg_data::fov::estimate_fov(&read_image(&img).unwrap()).unwrap();
            let (mut inter, mut union) = (0usize, 0usize);
            for (&a, &b) in given.data.iter().zip(&found.data) {
                inter += (a != 0 && b != 0) as usize;
                union += (a != 0 || b != 0) as usize;
            }
            let iou = inter as f64 / union as f64;
            eprintln!("{id} {split}: FOV IoU {iou:.4}");
            if iou < worst.0 {
                worst = (iou, format!("{id} {split}"));
            }
            n += 1;
        }
    }
    assert_eq!(n, 40);
    assert!(
        worst.0 >= 0.97,
        "worst FOV IoU {:.4} ({})",
        worst.0,
        worst.1
    );
}

/// The automatic FOV of DRIVE photographs made dark (× 0.35) and
/// JPEG-compressed (quality 50), as other cameras' files are.
#[test]
fn the_automatic_fov_survives_dark_and_jpeg_images() {
    let root = shared_or_skip!("datasets/DRIVE");
    let dir = std::env::temp_dir().join(format!("seg-data-fov-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for id in ["21", "25", "33"] {
        let v = read_image(&root.join(format!("training/images/{id}_training.tif"))).unwrap();
        let (h, w) = (v.shape[0] as u32, v.shape[1] as u32);
        let dark: Vec<u8> = v.values.iter().map(|&x| (x * 0.35).round() as u8).collect();
        let img = image::RgbImage::from_raw(w, h, dark).unwrap();
        let path = dir.join(format!("{id}.jpg"));
        let mut out = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 50)
            .encode_image(&img)
            .unwrap();
        drop(out);
        let given = read_mask(&root.join(format!("training/mask/{id}_training_mask.gif"))).unwrap();
        let found = seg_data::fov::estimate_fov(&read_image(&path).unwrap()).unwrap();
        let (mut inter, mut union) = (0usize, 0usize);
        for (&a, &b) in given.data.iter().zip(&found.data) {
            inter += (a != 0 && b != 0) as usize;
            union += (a != 0 || b != 0) as usize;
        }
        let iou = inter as f64 / union as f64;
        assert!(iou >= 0.97, "{id}: dark JPEG FOV IoU {iou:.4}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
