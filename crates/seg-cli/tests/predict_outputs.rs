//! A 2D multi-class PNG dataset (label values 0/100/200, built here)
//! through the binary: the planned run, then `predict` writes the label map
//! with the dataset's values, and only on request the per-class
//! probabilities and the overlay picture. `--target-spacing` overrides the
//! plan.

mod common;

use common::*;
use seg_data::io::image2d::{write_label_png, write_png_u8};
use std::path::{Path, PathBuf};

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("seg-cli-po-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Case `k`: a bright square (100) and a dark disc (200) on grey.
fn write_case(root: &Path, k: usize, size: usize) {
    let (mut img, mut lab) = (Vec::new(), Vec::new());
    let (cy, cx, r) = (24.0 + k as f64, 26.0, 7.0);
    for y in 0..size {
        for x in 0..size {
            let sq = (4 + k..14 + k).contains(&x) && (6..16).contains(&y);
            let disc = ((y as f64 - cy).powi(2) + (x as f64 - cx).powi(2)).sqrt() < r;
            let n = ((x * 31 + y * 17 + k * 7) % 11) as u8;
            let (v, l) = if sq {
                (220, 100)
            } else if disc {
                (20, 200)
            } else {
                (120, 0)
            };
            img.push(v + n);
            lab.push(l);
        }
    }
    let name = format!("case{k}.png");
    write_png_u8(&root.join("images").join(&name), size, size, 1, &img).unwrap();
    write_label_png(&root.join("masks").join(&name), size, size, &lab).unwrap();
}

#[test]
fn predict_writes_label_values_and_on_request_probabilities_and_overlays() {
    let d = tmp("2d");
    let data = d.join("data");
    for sub in ["images", "masks"] {
        std::fs::create_dir_all(data.join(sub)).unwrap();
    }
    for k in 0..5 {
        write_case(&data, k, 40);
    }
    // the plan, and --target-spacing over it
    let out = bin()
        .args(["train", "--dry-run", "--target-spacing", "0.5", "--data"])
        .arg(&data)
        .arg("--out")
        .arg(d.join("dry"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("values [0, 100, 200]") && err.contains("--target-spacing [0.5, 0.5]"),
        "{err}"
    );
    let plan: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("dry/plan.json")).unwrap()).unwrap();
    assert_eq!(
        plan["plan"]["target_spacing"],
        serde_json::json!([0.5, 0.5])
    );
    let out = bin()
        .args(["train", "--dry-run", "--target-spacing", "0,1", "--data"])
        .arg(&data)
        .arg("--out")
        .arg(d.join("dry2"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "a bad spacing is a usage error");

    let run = d.join("run");
    let out = bin()
        .args([
            "train", "--epochs", "2", "--steps", "4", "--base", "4", "--data",
        ])
        .arg(&data)
        .arg("--out")
        .arg(&run)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let input = data.join("images/case1.png");
    let plain = d.join("plain");
    let out = bin()
        .args(["predict", "--checkpoint"])
        .arg(run.join("best.safetensors"))
        .arg("--input")
        .arg(&input)
        .arg("--output")
        .arg(&plain)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mask = seg_data::read_image(&plain.join("masks/case1.png")).unwrap();
    assert_eq!(mask.shape, vec![40, 40, 1]);
    assert!(mask.values.iter().all(|v| [0.0, 100.0, 200.0].contains(v)));
    let mut files: Vec<String> = std::fs::read_dir(&plain)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(files, vec!["masks"], "no probabilities unless asked");

    let full = d.join("full");
    let out = bin()
        .args(["predict", "--probabilities", "--overlay", "--checkpoint"])
        .arg(run.join("best.safetensors"))
        .arg("--input")
        .arg(&input)
        .arg("--output")
        .arg(&full)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let probs: Vec<Vec<f32>> = [0, 100, 200]
        .iter()
        .map(|v| {
            let p = seg_data::read_image(&full.join(format!("case1_{v}.png"))).unwrap();
            assert_eq!(p.shape, vec![40, 40, 1]);
            p.values.iter().map(|x| x / 65535.0).collect()
        })
        .collect();
    for i in 0..40 * 40 {
        let s: f32 = probs.iter().map(|p| p[i]).sum();
        assert!(
            (s - 1.0).abs() < 1e-3,
            "pixel {i}: probabilities sum to {s}"
        );
    }
    let overlay = seg_data::read_image(&full.join("overlays/case1.png")).unwrap();
    assert_eq!(overlay.shape, vec![40, 40, 3]);
    std::fs::remove_dir_all(&d).unwrap();
}
