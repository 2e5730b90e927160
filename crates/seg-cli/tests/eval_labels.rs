//! `seg-cli eval` on label maps: tiny 2D PNG and 3D NIfTI label maps written
//! here, the numbers of the JSON and CSV against values counted by hand, the
//! choice between label and probability mode, pairing by stem, an MSD
//! dataset as ground truth, and the one-line errors.

mod common;

use common::*;
use seg_data::io::image2d::write_png_u8;
use seg_data::io::nifti::write_nifti;
use serde_json::Value;
use std::path::{Path, PathBuf};

fn temp_root(name: &str) -> PathBuf {
    let root = std::env::temp_dir().join(format!("seg-cli-evallab-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(root.join("pred")).unwrap();
    std::fs::create_dir_all(root.join("gt")).unwrap();
    root
}

fn close(v: &Value, want: f64) -> bool {
    v.as_f64().is_some_and(|x| (x - want).abs() < 1e-9)
}

/// `eval` with `args`; its JSON on standard output.
fn eval_json(args: &[&str], pred: &Path, gt: &Path) -> Value {
    let out = bin()
        .args(["eval", "--json", "-", "--pred"])
        .arg(pred)
        .arg("--gt")
        .arg(gt)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The entry of class `c` in a list of class objects.
fn class(list: &Value, c: u64) -> &Value {
    list.as_array()
        .unwrap()
        .iter()
        .find(|m| m["class"] == c)
        .unwrap_or_else(|| panic!("class {c} in {list}"))
}

/// An h × w 8-bit label image with `class` in the rectangles (rows, cols, exclusive ends).
fn label_png(path: &Path, h: usize, w: usize, rects: &[(usize, usize, usize, usize, u8)]) {
    let mut v = vec![0u8; h * w];
    for &(r0, r1, c0, c1, c) in rects {
        for r in r0..r1 {
            for x in c0..c1 {
                v[r * w + x] = c;
            }
        }
    }
    write_png_u8(path, h, w, 1, &v).unwrap();
}

/// Case a: class 1 exact, class 2 (3 × 4 pixels) one column off; case b:
/// class 1 exact, no class 2. Class 2 of case a by hand: overlap 3 × 3 →
/// Dice 18/24, IoU 9/15; both 3 × 4 rectangles have 10 surface pixels, and
/// from each to the other 6 are at 0 and 4 at one column (or one row).
fn two_png_cases(root: &Path) {
    let (h, w) = (10, 12);
    label_png(
        &root.join("gt/a.png"),
        h,
        w,
        &[(1, 4, 1, 5, 1), (6, 9, 6, 10, 2)],
    );
    label_png(
        &root.join("pred/a.png"),
        h,
        w,
        &[(1, 4, 1, 5, 1), (6, 9, 7, 11, 2)],
    );
    label_png(&root.join("gt/b.png"), h, w, &[(2, 5, 2, 6, 1)]);
    label_png(&root.join("pred/b.png"), h, w, &[(2, 5, 2, 6, 1)]);
}

#[test]
fn png_label_maps_per_class_json_and_csv() {
    let root = temp_root("png");
    two_png_cases(&root);
    let csv = root.join("out.csv");
    let j = eval_json(
        &["--csv", csv.to_str().unwrap()],
        &root.join("pred"),
        &root.join("gt"),
    );
    // 8-bit one-channel images with small values: label mode without a flag
    assert_eq!(j["mode"], "labels", "{j}");
    assert_eq!(j["classes"], serde_json::json!([1, 2]));
    assert_eq!(j["tolerance_mm"], 1.0);
    let cases = j["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 2);
    assert_eq!(cases[0]["id"], "a");
    let a2 = class(&cases[0]["classes"], 2);
    assert!(close(&a2["dice"], 0.75) && close(&a2["iou"], 0.6), "{a2}");
    assert!(
        close(&a2["hd95"], 1.0) && close(&a2["asd"], 8.0 / 20.0),
        "{a2}"
    );
    assert!(close(&a2["nsd"], 1.0), "{a2}");
    assert_eq!(
        (&a2["pred_voxels"], &a2["ref_voxels"]),
        (&12.into(), &12.into())
    );
    let a1 = class(&cases[0]["classes"], 1);
    assert!(close(&a1["dice"], 1.0) && close(&a1["hd95"], 0.0) && close(&a1["nsd"], 1.0));
    // case b has no class 2: both empty, Dice 1, distances null
    let b2 = class(&cases[1]["classes"], 2);
    assert!(close(&b2["dice"], 1.0) && close(&b2["iou"], 1.0), "{b2}");
    assert!(
        b2["hd95"].is_null() && b2["asd"].is_null() && b2["nsd"].is_null(),
        "{b2}"
    );
    // means: class 2 Dice over both cases, distances over case a only
    let k2 = class(&j["per_class"], 2);
    assert!(close(&k2["dice"], 0.875) && close(&k2["hd95"], 1.0), "{k2}");
    assert_eq!(
        (&k2["cases"], &k2["distance_cases"]),
        (&2.into(), &1.into())
    );
    assert!(
        close(&j["mean"]["dice"], (1.0 + 0.875) / 2.0),
        "{}",
        j["mean"]
    );
    assert!(close(&j["mean"]["hd95"], 0.5), "{}", j["mean"]);
    assert!(j["unpaired"].as_array().unwrap().is_empty());
    // the CSV: a row per case and class, the class means, the overall mean
    let text = std::fs::read_to_string(&csv).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1 + 4 + 2 + 1, "{text}");
    assert_eq!(
        lines[0],
        "id,class,dice,iou,hd95,asd,nsd,pred_voxels,ref_voxels,pred_volume_mm3,ref_volume_mm3,volume_diff_mm3,volume_diff_ml,relative_volume_diff"
    );
    assert_eq!(
        lines[2],
        "a,2,0.750000,0.600000,1.000000,0.400000,1.000000,12,12,12.000000,12.000000,0.000000,0.000000,0.000000"
    );
    assert!(
        lines[4].starts_with("b,2,1.000000,1.000000,,,,0,0,"),
        "{text}"
    );
    assert!(lines[6].starts_with("mean,2,0.875000,"), "{text}");
    assert!(lines[7].starts_with("mean,all,0.937500,"), "{text}");

    // NSD at 0.5 mm: the 4 + 4 pixels one column away fall outside
    let j = eval_json(
        &["--tolerance-mm", "0.5"],
        &root.join("pred"),
        &root.join("gt"),
    );
    assert!(close(
        &class(&j["cases"][0]["classes"], 2)["nsd"],
        12.0 / 20.0
    ));
    // pixel spacing 0.5 mm (rows) × 3 mm (columns): the column shift is 3 mm,
    // the pixel at the end of the middle row is 0.5 mm (one row) from the
    // other surface; areas 1.5 mm² per pixel
    let j = eval_json(
        &["--spacing", "0.5,3"],
        &root.join("pred"),
        &root.join("gt"),
    );
    let a2 = class(&j["cases"][0]["classes"], 2);
    assert!(close(&a2["hd95"], 3.0), "{a2}");
    assert!(close(&a2["asd"], 2.0 * (3.0 * 3.0 + 0.5) / 20.0), "{a2}");
    assert!(close(&a2["ref_volume_mm3"], 18.0), "{a2}");

    // --probabilities: the binary evaluation of old (any non-zero truth is foreground)
    let j = eval_json(&["--probabilities"], &root.join("pred"), &root.join("gt"));
    assert!(j.get("mode").is_none() && j["pooled"].is_object(), "{j}");
    assert_eq!(j["images"].as_array().unwrap().len(), 2);
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn masks_and_probability_pngs_stay_in_probability_mode() {
    let root = temp_root("prob");
    // 0/255 masks and an 8-bit map reaching 255
    label_png(&root.join("gt/a.png"), 6, 6, &[(1, 4, 1, 4, 255)]);
    label_png(&root.join("pred/a.png"), 6, 6, &[(1, 4, 1, 4, 255)]);
    label_png(&root.join("gt/b.png"), 6, 6, &[(0, 2, 0, 6, 255)]);
    label_png(
        &root.join("pred/b.png"),
        6,
        6,
        &[(0, 2, 0, 6, 200), (2, 3, 0, 6, 100)],
    );
    let j = eval_json(&[], &root.join("pred"), &root.join("gt"));
    assert!(j.get("mode").is_none() && j["pooled"].is_object(), "{j}");
    assert!(close(&j["pooled"]["dice"], 1.0), "{j}");
    // --labels forces label mode: classes 100, 200, 255
    let j = eval_json(&["--labels"], &root.join("pred"), &root.join("gt"));
    assert_eq!(j["classes"], serde_json::json!([100, 200, 255]), "{j}");
    std::fs::remove_dir_all(&root).unwrap();
}

// ---- NIfTI ----

/// A NIfTI affine with spacing `(dx, dy, dz)`.
fn affine(sp: [f64; 3]) -> [[f64; 4]; 4] {
    [
        [sp[0], 0.0, 0.0, 0.0],
        [0.0, sp[1], 0.0, 0.0],
        [0.0, 0.0, sp[2], 0.0],
        [0.0, 0.0, 0.0, 1.0],
    ]
}

const N: usize = 9;

/// A 9³ float32 label volume (x fastest) with `class` in the boxes
/// `[x0, y0, z0]..[x1, y1, z1]`, spacing 0.5 × 1 × 2 mm (1 mm³ voxels).
fn label_nii(path: &Path, boxes: &[([usize; 3], [usize; 3], f32)]) {
    let mut v = vec![0f32; N * N * N];
    for &(lo, hi, c) in boxes {
        for z in lo[2]..hi[2] {
            for y in lo[1]..hi[1] {
                for x in lo[0]..hi[0] {
                    v[(z * N + y) * N + x] = c;
                }
            }
        }
    }
    write_nifti(path, &[N, N, N], &v, &affine([0.5, 1.0, 2.0])).unwrap();
}

const CUBE: ([usize; 3], [usize; 3], f32) = ([2, 2, 2], [6, 6, 6], 1.0);

/// Case 001: a 4³ cube and the same cube 2 voxels further along x (1 mm):
/// by hand, per direction 24 surface voxels at 0, 16 at 0.5 mm, 16 at 1 mm
/// (of 56) → HD95 1, ASD 24/56, NSD(1 mm) 1, NSD(0.25 mm) 24/56, Dice 1/2.
/// Case 002: the cube exact, and a 2³ block of class 3 in the prediction only.
fn two_nifti_cases(root: &Path) {
    label_nii(&root.join("gt/hippocampus_001.nii.gz"), &[CUBE]);
    label_nii(
        &root.join("pred/hippocampus_001.nii.gz"),
        &[([4, 2, 2], [8, 6, 6], 1.0)],
    );
    label_nii(&root.join("gt/hippocampus_002.nii.gz"), &[CUBE]);
    // MONAI's naming: the reference stem + "_seg"
    label_nii(
        &root.join("pred/hippocampus_002_seg.nii.gz"),
        &[CUBE, ([6, 6, 6], [8, 8, 8], 3.0)],
    );
    // a prediction without a reference is reported
    label_nii(&root.join("pred/hippocampus_003.nii.gz"), &[CUBE]);
}

#[test]
fn nifti_label_volumes_in_mm() {
    let root = temp_root("nii");
    two_nifti_cases(&root);
    let (pred, gt) = (root.join("pred"), root.join("gt"));
    let j = eval_json(&[], &pred, &gt);
    assert_eq!(j["mode"], "labels");
    assert_eq!(j["classes"], serde_json::json!([1, 3]));
    let cases = j["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 2, "{j}");
    assert_eq!(cases[0]["id"], "hippocampus_001");
    assert_eq!(cases[1]["id"], "hippocampus_002");
    assert!(cases[1]["pred"]
        .as_str()
        .unwrap()
        .ends_with("hippocampus_002_seg.nii.gz"));
    assert_eq!(cases[0]["shape"], serde_json::json!([9, 9, 9]));
    assert_eq!(cases[0]["spacing"], serde_json::json!([2.0, 1.0, 0.5]));
    let c1 = class(&cases[0]["classes"], 1);
    assert!(
        close(&c1["dice"], 0.5) && close(&c1["iou"], 1.0 / 3.0),
        "{c1}"
    );
    assert!(close(&c1["hd95"], 1.0), "{c1}");
    assert!(close(&c1["asd"], 24.0 / 56.0), "{c1}");
    assert!(close(&c1["nsd"], 1.0), "{c1}");
    // class 3 exists only in case 002's prediction: 8 voxels of 1 mm³
    let c3 = class(&cases[1]["classes"], 3);
    assert!(
        close(&c3["dice"], 0.0) && c3["hd95"].is_null() && close(&c3["nsd"], 0.0),
        "{c3}"
    );
    assert!(
        close(&c3["volume_diff_mm3"], 8.0) && close(&c3["volume_diff_ml"], 0.008),
        "{c3}"
    );
    assert!(c3["relative_volume_diff"].is_null(), "{c3}");
    let k1 = class(&j["per_class"], 1);
    assert!(close(&k1["dice"], 0.75) && close(&k1["hd95"], 0.5), "{k1}");
    assert!(close(&k1["asd"], 12.0 / 56.0), "{k1}");
    let k3 = class(&j["per_class"], 3);
    assert!(close(&k3["dice"], 0.5) && k3["hd95"].is_null(), "{k3}");
    assert_eq!(k3["distance_cases"], 0);
    // overall: Dice of both classes, HD95 of class 1 only
    assert!(
        close(&j["mean"]["dice"], 0.625) && close(&j["mean"]["hd95"], 0.5),
        "{j}"
    );
    let unpaired = j["unpaired"].as_array().unwrap();
    assert_eq!(unpaired.len(), 1);
    assert!(unpaired[0].as_str().unwrap().contains("hippocampus_003"));

    // a tighter tolerance
    let j = eval_json(&["--tolerance-mm", "0.25"], &pred, &gt);
    assert!(close(
        &class(&j["cases"][0]["classes"], 1)["nsd"],
        24.0 / 56.0
    ));

    // the summary on standard output and the CSV file
    let csv = root.join("r.csv");
    let out = bin()
        .args(["eval", "--pred"])
        .arg(&pred)
        .arg("--gt")
        .arg(&gt)
        .arg("--csv")
        .arg(&csv)
        .output()
        .unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("2 cases, 2 classes"), "{stdout}");
    assert!(stdout.contains("class 1: Dice 0.7500"), "{stdout}");
    let text = std::fs::read_to_string(&csv).unwrap();
    assert!(
        text.lines().any(|l| l
            == "hippocampus_001,1,0.500000,0.333333,1.000000,0.428571,1.000000,64,64,64.000000,64.000000,0.000000,0.000000,0.000000"),
        "{text}"
    );
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn an_msd_dataset_as_ground_truth() {
    let root = temp_root("msd");
    let ds = root.join("Task09_Tiny");
    for sub in ["imagesTr", "labelsTr"] {
        std::fs::create_dir_all(ds.join(sub)).unwrap();
    }
    label_nii(&ds.join("imagesTr/tiny_001.nii.gz"), &[CUBE]);
    label_nii(&ds.join("labelsTr/tiny_001.nii.gz"), &[CUBE]);
    label_nii(
        &root.join("pred/tiny_001.nii.gz"),
        &[([4, 2, 2], [8, 6, 6], 1.0)],
    );
    let j = eval_json(&[], &root.join("pred"), &ds);
    assert_eq!(j["cases"][0]["id"], "tiny_001");
    assert!(close(&j["cases"][0]["classes"][0]["hd95"], 1.0), "{j}");
    let err = one_line_error(
        &bin()
            .args(["eval", "--probabilities", "--pred"])
            .arg(root.join("pred"))
            .arg("--gt")
            .arg(&ds)
            .output()
            .unwrap(),
    );
    assert!(err.contains("label maps"), "{err}");
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn label_errors_are_one_line() {
    let root = temp_root("err");
    let (pred, gt) = (root.join("pred"), root.join("gt"));
    label_nii(&gt.join("c1.nii.gz"), &[CUBE]);
    let run = |args: &[&str]| {
        bin()
            .args(["eval", "--pred"])
            .arg(&pred)
            .arg("--gt")
            .arg(&gt)
            .args(args)
            .output()
            .unwrap()
    };
    // a value that is not an integer: the file, the value, its index
    let mut v = vec![0f32; N * N * N];
    v[100] = 1.5;
    write_nifti(
        &pred.join("c1.nii.gz"),
        &[N, N, N],
        &v,
        &affine([0.5, 1.0, 2.0]),
    )
    .unwrap();
    let err = one_line_error(&run(&[]));
    assert!(
        err.contains("c1.nii.gz") && err.contains("1.5") && err.contains("index 100"),
        "{err}"
    );
    // another shape: both files named
    write_nifti(
        &pred.join("c1.nii.gz"),
        &[N, N, 3],
        &vec![0.0; N * N * 3],
        &affine([0.5, 1.0, 2.0]),
    )
    .unwrap();
    let err = one_line_error(&run(&[]));
    assert!(
        err.contains(&format!("{}", pred.join("c1.nii.gz").display()))
            && err.contains(&format!("{}", gt.join("c1.nii.gz").display())),
        "{err}"
    );
    // options of the other mode, a NIfTI with --spacing, a bad tolerance
    label_nii(&pred.join("c1.nii.gz"), &[CUBE]);
    for (args, says) in [
        (&["--fov", "x"][..], "--fov"),
        (&["--threshold", "0.3"][..], "--threshold"),
        (&["--spacing", "1,1"][..], "--spacing"),
        (&["--tolerance-mm=-1"][..], "--tolerance-mm"),
        (&["--tolerance-mm", "nan"][..], "--tolerance-mm"),
    ] {
        let err = one_line_error(&run(args));
        assert!(err.contains(says), "{args:?}: {err}");
    }
    assert!(run(&[]).status.success());
    // a label option in probability mode
    let err = one_line_error(&run(&["--probabilities", "--tolerance-mm", "2"]));
    assert!(err.contains("--tolerance-mm"), "{err}");
    // both modes at once: refused by the argument parser
    let out = run(&["--labels", "--probabilities"]);
    assert!(!out.status.success());
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn help_states_the_mode_rule_and_the_empty_conventions() {
    let out = bin().args(["eval", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for says in [
        "--labels",
        "--probabilities",
        "--tolerance-mm",
        "label maps when --pred holds a NIfTI file",
        "one-channel 8-bit image with values 0..127",
        "both empty -> Dice 1, IoU 1, HD95/ASD/NSD null",
        "one empty -> Dice 0",
    ] {
        assert!(help.contains(says), "{says:?} missing from:\n{help}");
    }
}
