//! Dataset layouts through the binary: detection errors, an MSD dataset in
//! check-data (real Hippocampus set), train's refusal of MSD data, and eval
//! with a dataset folder as ground truth.

mod common;

use common::*;
use std::path::PathBuf;

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("seg-cli-ds-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn an_unknown_folder_says_which_layouts_were_looked_for() {
    let d = tmp("unknown");
    std::fs::create_dir_all(d.join("pictures")).unwrap();
    let out = bin()
        .args(["check-data", "--data"])
        .arg(&d)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("DRIVE") && err.contains("imagesTr/") && err.contains("found pictures/"),
        "{err}"
    );
    let out = bin()
        .args(["train", "--dry-run", "--data"])
        .arg(&d)
        .arg("--out")
        .arg(d.join("run"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("found pictures/") && err.contains("pass --dataset"),
        "{err}"
    );
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn msd_hippocampus_is_checked_and_planned_for_training() {
    let Some(shared) = shared() else {
        skip_notice("SKIP: ../shared not found; MSD Hippocampus CLI test not run");
        return;
    };
    let hip = shared.join("datasets/Hippocampus");
    let out = bin()
        .args(["check-data", "--data"])
        .arg(&hip)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("208 cases (msd)"), "{stdout}");
    assert!(stdout.contains("[MRI]"), "{stdout}");
    assert!(
        stdout.contains("0 background, 1 Anterior, 2 Posterior"),
        "{stdout}"
    );
    assert!(stdout.contains("no problems found"), "{stdout}");
    let d = tmp("msd-train");
    for extra in [&[][..], &["--dataset", "msd"][..]] {
        let out = bin()
            .args(["train", "--dry-run", "--data"])
            .arg(&hip)
            .args(extra)
            .arg("--out")
            .arg(d.join("run"))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{err}");
        assert!(
            err.contains("plan from 208 cases (3 classes: values [0, 1, 2])")
                && err.contains("slice axis 2")
                && err.contains("per-case z-score"),
            "{err}"
        );
        let plan: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(d.join("run/plan.json")).unwrap())
                .unwrap();
        assert_eq!(
            plan["plan"]["labels"]["values"],
            serde_json::json!([0, 1, 2])
        );
        assert_eq!(plan["fingerprint"]["cases"].as_array().unwrap().len(), 208);
        let cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(d.join("run/config.json")).unwrap())
                .unwrap();
        assert_eq!(cfg["data"]["kind"], "labelled");
        assert_eq!(cfg["model"]["out_channels"], 3);
        assert_eq!(
            cfg["max_seconds"], 1200.0,
            "planned runs default to 20 minutes"
        );
        // near-isotropic small cases: the plan takes a 3D network
        assert!(err.contains("dims 3:"), "{err}");
        assert_eq!(cfg["model"]["dims"], 3);
        assert_eq!(plan["plan"]["dims"], 3);
        assert!(cfg["volumetric"]["patch"].is_array(), "{cfg}");
    }
    // --dims 2.5 overrides it: slices with a neighbour on each side
    let out = bin()
        .args(["train", "--dry-run", "--dims", "2.5", "--data"])
        .arg(&hip)
        .arg("--out")
        .arg(d.join("run25"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("run25/config.json")).unwrap())
            .unwrap();
    assert!(cfg["model"].get("dims").is_none(), "{}", cfg["model"]);
    assert_eq!(cfg["model"]["in_channels"], 3);
    assert!(cfg.get("volumetric").is_none());
    // --dims on 2D data is refused
    let out = bin()
        .args(["train", "--dry-run", "--dims", "3"])
        .arg("--out")
        .arg(d.join("run2d"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--dims applies to planned volume data"));
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn msd_check_data_names_a_case_without_its_label() {
    use seg_data::io::nifti::write_nifti;
    let eye = [
        [1.0, 0.0, 0.0, 0.0],
        [0.0, 1.0, 0.0, 0.0],
        [0.0, 0.0, 1.0, 0.0],
        [0.0, 0.0, 0.0, 1.0],
    ];
    let d = tmp("msd-missing");
    for sub in ["imagesTr", "labelsTr"] {
        std::fs::create_dir_all(d.join(sub)).unwrap();
    }
    let v = vec![0f32; 24];
    for id in ["a_001", "a_002"] {
        write_nifti(
            &d.join(format!("imagesTr/{id}.nii.gz")),
            &[2, 3, 4],
            &v,
            &eye,
        )
        .unwrap();
    }
    write_nifti(&d.join("labelsTr/a_001.nii.gz"), &[2, 3, 4], &v, &eye).unwrap();
    let out = bin()
        .args(["check-data", "--data"])
        .arg(&d)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("case a_002") && err.contains("labelsTr/a_002.nii.gz"),
        "{err}"
    );
    // with the label, but of another shape: listed as a problem
    write_nifti(&d.join("labelsTr/a_002.nii.gz"), &[2, 3, 2], &v[..12], &eye).unwrap();
    let out = bin()
        .args(["check-data", "--data"])
        .arg(&d)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("2 cases (msd)"), "{stdout}");
    assert!(stdout.contains("problem: case a_002"), "{stdout}");
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn eval_takes_a_paired_folder_dataset_as_ground_truth() {
    let d = tmp("eval-gt");
    let data = d.join("data");
    synthetic_folder(&data, 3, 24);
    // the masks themselves as probability maps: a perfect score
    let pred = d.join("pred");
    std::fs::create_dir_all(&pred).unwrap();
    for i in 0..3 {
        std::fs::copy(
            data.join(format!("masks/case{i}.png")),
            pred.join(format!("case{i}.png")),
        )
        .unwrap();
    }
    let out = bin()
        .args(["eval", "--pred"])
        .arg(&pred)
        .arg("--gt")
        .arg(&data)
        .args(["--json", "-"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(r["images"].as_array().unwrap().len(), 3, "{stdout}");
    assert_eq!(r["pooled"]["dice"].as_f64(), Some(1.0), "{stdout}");
    // the dataset's fov/ masks were used: no "no FOV mask" notices
    assert_eq!(r["unpaired"].as_array().unwrap().len(), 0, "{stdout}");
    std::fs::remove_dir_all(&d).unwrap();
}
