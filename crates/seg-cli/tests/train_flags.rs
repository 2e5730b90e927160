//! `seg-cli train` flags for the network (--norm, --groups, --upsample,
//! --deep-supervision), the input window (--window) and the augmentation
//! preset (--augment): what reaches config.json and the model bundle, and
//! the errors for combinations a network does not have.

mod common;

use common::{bin, synthetic_folder};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Output;

fn temp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("seg-cli-flags-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// `train --dry-run` on the built-in synthetic set with `args`, writing to `out`.
fn dry_run(out: &Path, args: &[&str]) -> Output {
    bin()
        .args(["train", "--dry-run", "--base", "2", "--out"])
        .arg(out)
        .args(args)
        .output()
        .unwrap()
}

fn config(out: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap()
}

fn ok(o: &Output) {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

fn fails_with(o: &Output, words: &[&str]) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "expected a failure");
    for w in words {
        assert!(err.contains(w), "{w:?} not in: {err}");
    }
}

#[test]
fn model_and_augment_flags_reach_the_config() {
    let out = temp("model");
    let o = dry_run(
        &out,
        &[
            "--model",
            "unet",
            "--norm",
            "instance",
            "--upsample",
            "bilinear",
            "--augment",
            "heavy",
        ],
    );
    ok(&o);
    let c = config(&out);
    assert_eq!(c["model"]["norm"]["kind"], "instance");
    assert_eq!(c["model"]["bilinear"], true);
    assert!(c["augment"]["elastic_p"].as_f64().unwrap() > 0.0);
    assert!(c["augment"]["grid_p"].as_f64().unwrap() > 0.0);

    let o = dry_run(
        &out,
        &[
            "--model",
            "unetpp",
            "--deep-supervision",
            "--norm",
            "group",
            "--upsample",
            "bilinear",
            "--augment",
            "none",
        ],
    );
    ok(&o);
    let c = config(&out);
    assert_eq!(c["model"]["deep_supervision"], true);
    assert_eq!(c["model"]["norm"]["kind"], "group");
    assert_eq!(c["model"]["norm"]["groups"], 8);
    assert_eq!(c["augment"]["flip_p"].as_f64().unwrap(), 0.0);

    let o = dry_run(
        &out,
        &["--model", "resunet", "--norm", "group", "--groups", "4"],
    );
    ok(&o);
    assert_eq!(config(&out)["model"]["norm"]["groups"], 4);
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn combinations_a_network_does_not_have_are_clear_errors() {
    let out = temp("errors");
    let cases: [(&[&str], &[&str]); 8] = [
        (
            &["--model", "resunet", "--upsample", "bilinear"],
            &["--upsample bilinear", "resunet", "transpose"],
        ),
        (
            &["--model", "unetpp", "--upsample", "transpose"],
            &["unetpp", "bilinear"],
        ),
        (
            &["--model", "attention_unet", "--upsample", "transpose"],
            &["attention_unet", "nearest"],
        ),
        (
            &["--model", "resunet", "--deep-supervision"],
            &["--deep-supervision", "resunet", "unetpp"],
        ),
        (
            &["--model", "unet", "--norm", "batch", "--groups", "4"],
            &["--groups", "--norm group"],
        ),
        (
            &["--model", "unet", "--norm", "group", "--groups", "0"],
            &["--groups"],
        ),
        (
            &["--augment", "extreme"],
            &["extreme", "none", "light", "default", "heavy"],
        ),
        (&["--window", "heart"], &["heart", "lung", "CENTER,WIDTH"]),
    ];
    for (args, words) in cases {
        fails_with(&dry_run(&out, args), words);
    }
    // the synthetic set has no raw values to window
    fails_with(
        &dry_run(&out, &["--window", "lung"]),
        &["--window", "synthetic"],
    );
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn the_window_is_applied_in_training_and_recorded_in_the_bundle() {
    let root = temp("window");
    let data = root.join("data");
    synthetic_folder(&data, 4, 40);
    let run = root.join("run");
    let train = |window: &str, extra: &[&str]| {
        bin()
            .args(["train", "--model", "unet", "--base", "2", "--patch", "32"])
            .args([
                "--batch", "2", "--steps", "1", "--epochs", "1", "--val", "1",
            ])
            .arg("--window")
            .arg(window)
            .arg("--data")
            .arg(&data)
            .arg("--out")
            .arg(&run)
            .args(extra)
            .output()
            .unwrap()
    };
    // a negative centre as a separate argument
    let o = train("-600,1500", &["--dry-run"]);
    ok(&o);
    assert_eq!(
        config(&run)["preprocess"]["window"],
        serde_json::json!({"center": -600.0, "width": 1500.0})
    );
    let o = train("128,256", &[]);
    ok(&o);
    let (_, info) =
        seg_train::checkpoint::load_bundle(&run.join("best.safetensors"), &seg_core::Device::Cpu)
            .unwrap();
    assert_eq!(
        info.preprocess.window,
        Some(seg_data::intensity::WindowSpec {
            center: 128.0,
            width: 256.0
        })
    );
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn max_time_sets_the_budget_and_lifts_the_epoch_count() {
    let out = temp("budget");
    let o = dry_run(&out, &["--max-time", "1h30m"]);
    ok(&o);
    let c = config(&out);
    assert_eq!(c["max_seconds"], 5400.0);
    assert_eq!(c["epochs"], 1000, "without --epochs the budget decides");
    let o = dry_run(&out, &["--max-time", "20m", "--epochs", "7"]);
    ok(&o);
    let c = config(&out);
    assert_eq!(
        (c["max_seconds"].as_f64(), c["epochs"].as_u64()),
        (Some(1200.0), Some(7))
    );
    fails_with(&dry_run(&out, &["--max-time", "0s"]), &["--max-time"]);
    fails_with(&dry_run(&out, &["--max-time", "soon"]), &["--max-time"]);
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn a_run_under_max_time_stops_inside_it_with_best_and_last() {
    let out = temp("budget-run");
    let started = std::time::Instant::now();
    let o = bin()
        .args([
            "train", "--base", "2", "--patch", "32", "--steps", "2", "--batch", "2",
        ])
        .args(["--max-time", "6s", "--patience", "0", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    let secs = started.elapsed().as_secs_f64();
    ok(&o);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("time budget reached after epoch"), "{err}");
    // process start-up and the final plot come on top of the budget; 3 s of
    // slack for a loaded machine
    assert!(secs < 9.0, "the run took {secs:.1} s for a 6 s budget");
    for f in ["best.safetensors", "last.safetensors", "metrics.csv"] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let _ = std::fs::remove_dir_all(&out);
}
