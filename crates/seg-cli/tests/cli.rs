//! The seg-cli binary end to end.

mod common;

use common::*;
use serde_json::Value;
use std::process::Command;

#[test]
fn info_prints_the_summary_and_refuses_bad_arguments() {
    let out = bin()
        .args(["info", "--model", "unet", "--base", "4", "--input", "64x48"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("outc") && text.contains("[1, 1, 64, 48]") && text.contains("Total params"),
        "{text}"
    );
    let out = bin()
        .args(["info", "--model", "resunet", "--input", "8x8"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("at least 16"), "{err}");
    let out = bin()
        .args(["info", "--model", "resunet", "--bilinear"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn inspect_reads_every_medical_file_and_refuses_the_bad_ones() {
    let Some(shared) = shared() else {
        skip_notice("SKIP: ../shared not found; inspect not run on real files");
        return;
    };
    let r: Value = serde_json::from_str(
        &std::fs::read_to_string(shared.join("medical/reference.json")).unwrap(),
    )
    .unwrap();
    let mut n = 0;
    for (kind, sub) in [("dicom", "dicom"), ("nifti", "nifti")] {
        for e in r[kind].as_array().unwrap() {
            let file = e["file"].as_str().unwrap();
            let path = shared.join("medical").join(sub).join(file);
            let out = bin()
                .arg("inspect")
                .arg("--json")
                .arg(&path)
                .output()
                .unwrap();
            if e["expected"] == "ok" {
                assert!(
                    out.status.success(),
                    "{file}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                let j: Value = serde_json::from_slice(&out.stdout).unwrap();
                assert_eq!(j["format"], kind, "{file}");
                for key in [
                    "shape", "dtype", "raw", "values", "spacing", "window", "affine",
                ] {
                    assert!(j.get(key).is_some(), "{file}: no {key}");
                }
                assert_eq!(
                    j["dtype"],
                    e["dtype"].as_str().or(e["datatype"].as_str()).unwrap(),
                    "{file}"
                );
                if kind == "dicom" {
                    assert_eq!(j["transfer_syntax"], e["transfer_syntax_uid"], "{file}");
                    if e["lossy_compression"] != true {
                        assert_eq!(j["raw"]["sum"].as_f64(), e["raw"]["sum"].as_f64(), "{file}");
                    }
                } else {
                    assert_eq!(j["raw"]["sum"].as_f64(), e["raw"]["sum"].as_f64(), "{file}");
                    assert!(j["affine"].is_array(), "{file}");
                }
            } else {
                assert_eq!(out.status.code(), Some(1), "{file}");
                let err = String::from_utf8(out.stderr).unwrap();
                assert_eq!(err.trim().lines().count(), 1, "{file}: {err}");
                assert!(err.contains(file), "{file}: {err}");
                assert!(out.stdout.is_empty());
            }
            n += 1;
        }
    }
    assert_eq!(n, 19);
}

#[test]
fn train_predict_eval_check_data_end_to_end() {
    let root = std::env::temp_dir().join(format!("seg-cli-e2e-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let data = root.join("data");
    synthetic_folder(&data, 5, 40);
    let run = root.join("run");

    let out = bin()
        .args(["check-data", "--data"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("no problems found"));

    let train = |extra: &[&str]| {
        let mut c = bin();
        c.args([
            "train", "--model", "unet", "--base", "2", "--steps", "2", "--batch", "2", "--patch",
            "32", "--val", "2", "--data",
        ])
        .arg(&data)
        .arg("--out")
        .arg(&run)
        .args(extra);
        c.output().unwrap()
    };
    let out = train(&["--epochs", "1", "--dry-run"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let split: Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("split.json")).unwrap()).unwrap();
    assert_eq!(
        (
            split["train"].as_array().unwrap().len(),
            split["val"].as_array().unwrap().len()
        ),
        (3, 2)
    );
    assert!(!run.join("last.safetensors").exists());
    let out = train(&["--epochs", "1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("best validation Dice"));
    // continue the same run to 2 epochs
    let out = bin()
        .args(["train", "--resume", "--epochs", "2", "--out"])
        .arg(&run)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let csv = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
    assert_eq!(csv.lines().count(), 3, "{csv}");
    for f in [
        "best.safetensors",
        "last.safetensors",
        "curves.png",
        "metrics.json",
    ] {
        assert!(run.join(f).is_file(), "{f}");
    }

    let pred = root.join("pred");
    let out = bin()
        .args(["predict", "--checkpoint"])
        .arg(run.join("best.safetensors"))
        .arg("--input")
        .arg(data.join("images"))
        .arg("--fov")
        .arg(data.join("fov"))
        .arg("--output")
        .arg(&pred)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for i in 0..5 {
        let p = seg_data::read_image(&pred.join(format!("case{i}.png"))).unwrap();
        assert_eq!(
            (p.shape.clone(), p.stored),
            (vec![40, 40, 1], seg_data::StoredType::Uint16)
        );
        let m = seg_data::read_image(&pred.join(format!("masks/case{i}.png"))).unwrap();
        assert!(m.values.iter().all(|&v| v == 0.0 || v == 255.0));
    }

    // volumes are predicted slice by slice and written as NIfTI with the input's affine
    let vol_dir = root.join("vol");
    std::fs::create_dir_all(&vol_dir).unwrap();
    let affine = [
        [0.8, 0.0, 0.0, -12.0],
        [0.0, 0.8, 0.0, 7.0],
        [0.0, 0.0, 2.5, 30.0],
        [0.0, 0.0, 0.0, 1.0],
    ];
    let values: Vec<f32> = (0..40 * 40 * 3)
        .map(|i| ((i * 7) % 13) as f32 * 100.0 - 600.0)
        .collect();
    seg_data::io::nifti::write_nifti(&vol_dir.join("scan.nii.gz"), &[40, 40, 3], &values, &affine)
        .unwrap();
    let vpred = root.join("vpred");
    let out = bin()
        .args(["predict", "--checkpoint"])
        .arg(run.join("best.safetensors"))
        .arg("--input")
        .arg(vol_dir.join("scan.nii.gz"))
        .arg("--output")
        .arg(&vpred)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for f in ["scan.nii.gz", "masks/scan.nii.gz"] {
        let (v, _) = seg_data::io::nifti::read_nifti_with_info(&vpred.join(f)).unwrap();
        assert_eq!(v.shape, vec![40, 40, 3], "{f}");
        let a = v.affine.unwrap();
        for i in 0..4 {
            for k in 0..4 {
                assert!((a[i][k] - affine[i][k]).abs() < 1e-5, "{f}: affine {a:?}");
            }
        }
        assert!(v.values.iter().all(|p| (0.0..=1.0).contains(p)));
    }
    if let Some(shared) = shared() {
        let out = bin()
            .args(["predict", "--checkpoint"])
            .arg(run.join("best.safetensors"))
            .arg("--input")
            .arg(shared.join("medical/dicom/CT_small.dcm"))
            .arg("--output")
            .arg(&vpred)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let (v, _) =
            seg_data::io::nifti::read_nifti_with_info(&vpred.join("CT_small.nii.gz")).unwrap();
        assert_eq!(v.shape, vec![128, 128, 1]);
    }

    // an extra prediction without ground truth is reported, not dropped silently
    std::fs::copy(pred.join("case0.png"), pred.join("extra.png")).unwrap();
    let report = root.join("report.json");
    let out = bin()
        .args(["eval", "--pred"])
        .arg(&pred)
        .arg("--gt")
        .arg(data.join("masks"))
        .arg("--fov")
        .arg(data.join("fov"))
        .arg("--json")
        .arg(&report)
        .arg("--csv")
        .arg(root.join("report.csv"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("extra.png"));
    let j: Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(j["images"].as_array().unwrap().len(), 5);
    for key in [
        "id",
        "tp",
        "fp",
        "fn",
        "tn",
        "dice",
        "iou",
        "sensitivity",
        "specificity",
        "precision",
        "accuracy",
        "auc_roc",
        "average_precision",
        "hd95",
    ] {
        assert!(j["images"][0].get(key).is_some(), "no {key}");
    }
    assert!(
        j["pooled"]["dice"].is_number()
            && j["mean"]["dice"].is_number()
            && j["threshold"].is_number()
    );
    assert_eq!(j["unpaired"].as_array().unwrap().len(), 1);
    assert_eq!(
        std::fs::read_to_string(root.join("report.csv"))
            .unwrap()
            .lines()
            .count(),
        6
    );
    let out = bin()
        .args(["eval", "--pred"])
        .arg(&pred)
        .arg("--gt")
        .arg(data.join("masks"))
        .arg("--json")
        .arg("-")
        .output()
        .unwrap();
    let j: Value = serde_json::from_slice(&out.stdout).unwrap();
    // without --fov every pixel counts: 5 images of 40 x 40
    let p = &j["pooled"];
    let total: u64 = ["tp", "fp", "fn", "tn"]
        .iter()
        .map(|k| p[*k].as_u64().unwrap())
        .sum();
    assert_eq!(total, 5 * 40 * 40);

    // bad input: one line, non-zero exit, nothing half-written
    let err = one_line_error(
        &bin()
            .args(["predict", "--checkpoint"])
            .arg(root.join("nope.safetensors"))
            .arg("--input")
            .arg(data.join("images"))
            .arg("--output")
            .arg(root.join("p2"))
            .output()
            .unwrap(),
    );
    assert!(err.contains("nope.safetensors"), "{err}");
    std::fs::write(data.join("masks/case9.png"), b"not a png").unwrap();
    let out = bin()
        .args(["check-data", "--data"])
        .arg(&data)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("case9.png"));
    let err = one_line_error(
        &bin()
            .args(["train", "--model", "unet", "--patch", "8"])
            .arg("--out")
            .arg(root.join("r2"))
            .output()
            .unwrap(),
    );
    assert!(err.contains("--patch"), "{err}");
    let err = one_line_error(
        &bin()
            .args(["train", "--dataset", "drive"])
            .output()
            .unwrap(),
    );
    assert!(err.contains("--data"), "{err}");
    std::fs::remove_dir_all(&root).unwrap();
}

#[cfg(unix)]
#[test]
fn ctrl_c_writes_a_checkpoint_and_resume_continues() {
    let root = std::env::temp_dir().join(format!("seg-cli-sigint-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let data = root.join("data");
    synthetic_folder(&data, 4, 40);
    let run = root.join("run");
    let child = bin()
        .args([
            "train", "--model", "unet", "--base", "2", "--epochs", "50", "--steps", "60",
            "--batch", "2", "--patch", "32", "--val", "1", "--data",
        ])
        .arg(&data)
        .arg("--out")
        .arg(&run)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(err.contains("checkpoint written"), "{err}");
    assert!(run.join("last.state.safetensors").is_file());
    // the checkpoint loads and training continues from it
    let out = bin()
        .args(["train", "--resume", "--epochs", "1", "--out"])
        .arg(&run)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(run.join("best.safetensors").is_file());
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn drive_train_predict_eval_pairs_drive_names() {
    let Some(shared) = shared() else {
        skip_notice("SKIP: ../shared not found; DRIVE end-to-end test not run");
        return;
    };
    let drive = shared.join("datasets/DRIVE");
    let root = std::env::temp_dir().join(format!("seg-cli-drive-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let run = root.join("run");
    let out = bin()
        .args(["check-data", "--data"])
        .arg(&drive)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("20 cases (drive)"));
    let out = bin()
        .args([
            "train", "--model", "unet", "--base", "2", "--epochs", "1", "--steps", "2", "--batch",
            "2", "--patch", "32", "--val", "2", "--data",
        ])
        .arg(&drive)
        .arg("--out")
        .arg(&run)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pred = root.join("pred");
    let out = bin()
        .args(["predict", "--checkpoint"])
        .arg(run.join("best.safetensors"))
        .arg("--input")
        .arg(drive.join("training/images"))
        .arg("--fov")
        .arg(drive.join("training/mask"))
        .arg("--output")
        .arg(&pred)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(pred.join("21_training.png").is_file() && pred.join("masks/40_training.png").is_file());
    let out = bin()
        .args(["eval", "--pred"])
        .arg(&pred)
        .arg("--gt")
        .arg(drive.join("training/1st_manual"))
        .arg("--fov")
        .arg(drive.join("training/mask"))
        .arg("--json")
        .arg("-")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j: Value = serde_json::from_slice(&out.stdout).unwrap();
    let imgs = j["images"].as_array().unwrap();
    assert_eq!(imgs.len(), 20);
    assert_eq!(imgs[0]["id"], "21");
    assert!(j["unpaired"].as_array().unwrap().is_empty());
    // counts cover exactly the FOV: 20 images' FOV pixels (Pillow: ~224k each)
    let fov_total: u64 = imgs
        .iter()
        .map(|m| {
            ["tp", "fp", "fn", "tn"]
                .iter()
                .map(|k| m[*k].as_u64().unwrap())
                .sum::<u64>()
        })
        .sum();
    assert!(
        fov_total > 20 * 200_000 && fov_total < 20 * 250_000,
        "{fov_total}"
    );
    std::fs::remove_dir_all(&root).unwrap();
}
