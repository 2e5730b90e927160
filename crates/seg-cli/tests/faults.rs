//! Numerical and shape faults through the real binary: NaN/inf in an input,
//! all-background and all-foreground labels, a one-pixel image, a 1×1×N
//! volume, and image/label size mismatches. Each either works sensibly or
//! fails with one clear line naming the file, exit status 1, and no output
//! for the failed input.

mod common;

use common::*;
use seg_data::io::image2d::{read_mask, write_mask_png, write_png_u8, Mask};
use seg_data::io::nifti::{read_nifti, write_nifti};
use std::path::{Path, PathBuf};

const IDENTITY: [[f64; 4]; 4] = [
    [1.0, 0.0, 0.0, 0.0],
    [0.0, 1.0, 0.0, 0.0],
    [0.0, 0.0, 1.0, 0.0],
    [0.0, 0.0, 0.0, 1.0],
];

fn temp_root(name: &str) -> PathBuf {
    let root = std::env::temp_dir().join(format!("seg-cli-faults-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    root
}

/// Trains a tiny model on `data` into `run`; returns the bundle's path.
fn train_tiny(data: &Path, run: &Path, extra: &[&str]) -> std::process::Output {
    bin()
        .args([
            "train", "--model", "unet", "--base", "2", "--epochs", "1", "--steps", "2", "--batch",
            "2", "--patch", "32", "--val", "1",
        ])
        .args(extra)
        .arg("--data")
        .arg(data)
        .arg("--out")
        .arg(run)
        .output()
        .unwrap()
}

fn tiny_model(root: &Path) -> PathBuf {
    let data = root.join("train-data");
    synthetic_folder(&data, 3, 40);
    let run = root.join("run");
    let out = train_tiny(&data, &run, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    run.join("last.safetensors")
}

fn predict(model: &Path, input: &Path, output: &Path) -> std::process::Output {
    bin()
        .args(["predict", "--checkpoint"])
        .arg(model)
        .arg("--input")
        .arg(input)
        .arg("--output")
        .arg(output)
        .output()
        .unwrap()
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.path().is_file())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn nan_or_inf_in_an_input_is_refused_naming_the_file() {
    let root = temp_root("nan");
    let model = tiny_model(&root);
    for (name, bad) in [("nan", f32::NAN), ("inf", f32::INFINITY)] {
        let input = root.join(format!("{name}.nii.gz"));
        let mut values: Vec<f32> = (0..8 * 8 * 3).map(|i| (i % 17) as f32).collect();
        values[37] = bad;
        write_nifti(&input, &[8, 8, 3], &values, &IDENTITY).unwrap();
        let out_dir = root.join(format!("pred-{name}"));
        let out = predict(&model, &input, &out_dir);
        let err = one_line_error(&out);
        assert!(err.contains(&format!("{name}.nii.gz")), "{err}");
        assert!(err.contains("finite"), "{err}");
        assert!(files_in(&out_dir).is_empty(), "{:?}", files_in(&out_dir));
    }
    // a NaN among the training images: refused before training, naming the case
    let data = root.join("nan-data");
    synthetic_folder(&data, 3, 40);
    let vol = root.join("nan-data/images/case1.nii.gz");
    std::fs::remove_file(data.join("images/case1.png")).unwrap();
    let mut values = vec![0.5f32; 40 * 40];
    values[5] = f32::NAN;
    write_nifti(&vol, &[40, 40], &values, &IDENTITY).unwrap();
    let err = one_line_error(&train_tiny(&data, &root.join("run-nan"), &[]));
    assert!(err.contains("case1"), "{err}");
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn all_background_and_all_foreground_labels_train_and_evaluate() {
    let root = temp_root("labels");
    let data = root.join("data");
    synthetic_folder(&data, 4, 40);
    let full = |v: u8| Mask {
        height: 40,
        width: 40,
        data: vec![v; 1600],
    };
    write_mask_png(&data.join("masks/case0.png"), &full(0)).unwrap();
    write_mask_png(&data.join("masks/case1.png"), &full(1)).unwrap();
    let run = root.join("run");
    let out = train_tiny(&data, &run, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pred = root.join("pred");
    let out = predict(&run.join("last.safetensors"), &data.join("images"), &pred);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // evaluation against them: defined numbers, no NaN in the JSON
    let json = root.join("metrics.json");
    let out = bin()
        .args(["eval", "--pred"])
        .arg(pred.join("masks"))
        .arg("--gt")
        .arg(data.join("masks"))
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&json).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert!(!text.contains("NaN"), "{text}");
    assert!(v.to_string().contains("case0") && v.to_string().contains("case1"));
    // an empty prediction against an empty label is a perfect Dice
    let empty = root.join("empty");
    std::fs::create_dir_all(empty.join("p")).unwrap();
    std::fs::create_dir_all(empty.join("g")).unwrap();
    write_mask_png(&empty.join("p/case0.png"), &full(0)).unwrap();
    write_mask_png(&empty.join("g/case0.png"), &full(0)).unwrap();
    let out = bin()
        .args(["eval", "--pred"])
        .arg(empty.join("p"))
        .arg("--gt")
        .arg(empty.join("g"))
        .args(["--json", "-"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let dice = v.pointer("/mean/dice").and_then(|d| d.as_f64());
    assert_eq!(dice, Some(1.0), "{v}");
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn one_pixel_images_and_one_by_one_by_n_volumes_predict() {
    let root = temp_root("tiny");
    let model = tiny_model(&root);
    // a 1×1 RGB image
    let input = root.join("dot.png");
    write_png_u8(&input, 1, 1, 3, &[200, 120, 40]).unwrap();
    let out_dir = root.join("pred");
    let out = predict(&model, &input, &out_dir);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m = read_mask(&out_dir.join("masks/dot.png")).unwrap();
    assert_eq!((m.height, m.width), (1, 1));
    // a 1×1×5 volume, predicted slice by slice into a 1×1×5 NIfTI
    let vol = root.join("column.nii.gz");
    write_nifti(&vol, &[1, 1, 5], &[0.0, 10.0, 20.0, 30.0, 40.0], &IDENTITY).unwrap();
    let out = predict(&model, &vol, &out_dir);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let written: Vec<String> = files_in(&out_dir)
        .into_iter()
        .filter(|f| f.starts_with("column"))
        .collect();
    assert!(!written.is_empty(), "{:?}", files_in(&out_dir));
    for f in written {
        let v = read_nifti(&out_dir.join(&f)).unwrap();
        assert_eq!(v.shape, vec![1, 1, 5], "{f}");
        assert!(v.values.iter().all(|x| x.is_finite()), "{f}");
    }
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn image_and_label_size_mismatches_are_refused_naming_the_files() {
    let root = temp_root("sizes");
    let data = root.join("data");
    synthetic_folder(&data, 3, 40);
    write_mask_png(
        &data.join("masks/case2.png"),
        &Mask {
            height: 40,
            width: 39,
            data: vec![0; 40 * 39],
        },
    )
    .unwrap();
    let err = one_line_error(&train_tiny(&data, &root.join("run"), &[]));
    assert!(err.contains("case2"), "{err}");
    assert!(err.contains("40x39") || err.contains("39"), "{err}");
    // eval: a prediction of another size than its label
    let p = root.join("p");
    std::fs::create_dir_all(&p).unwrap();
    write_png_u8(&p.join("case0.png"), 8, 8, 1, &[0; 64]).unwrap();
    let out = bin()
        .args(["eval", "--pred"])
        .arg(&p)
        .arg("--gt")
        .arg(data.join("masks"))
        .output()
        .unwrap();
    let err = one_line_error(&out);
    assert!(err.contains("case0"), "{err}");
    std::fs::remove_dir_all(&root).unwrap();
}
