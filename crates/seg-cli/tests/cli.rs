//! The seg-cli binary end to end.

use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_seg-cli"))
}

fn skip_notice(msg: &str) {
    use std::io::Write;
    match std::fs::OpenOptions::new().write(true).open("/dev/stderr") {
        Ok(mut f) => {
            let _ = writeln!(f, "{msg}");
        }
        Err(_) => eprintln!("{msg}"),
    }
}

fn shared() -> Option<PathBuf> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared");
    p.is_dir().then_some(p)
}

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
