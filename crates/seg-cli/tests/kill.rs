//! Killed runs lose nothing: `seg-cli train` is killed with SIGKILL at
//! pseudo-random moments and once in the middle of a checkpoint write (the
//! write is paused halfway by the `SEG_FAULT_PAUSE_MID_WRITE_MS` hook). After
//! every kill the checkpoint on disk must load, and resuming until the end
//! must give exactly the weights of an uninterrupted run. `predict` killed
//! mid-write must leave no output file behind.
#![cfg(unix)]

mod common;

use common::*;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const TRAIN_ARGS: &[&str] = &[
    "train", "--model", "unet", "--base", "4", "--epochs", "6", "--steps", "40", "--batch", "4",
    "--patch", "32", "--val", "1",
];

fn train(data: &Path, out: &Path, resume: bool) -> Command {
    let mut c = bin();
    if resume {
        c.args(["train", "--resume", "--out"]).arg(out);
    } else {
        c.args(TRAIN_ARGS)
            .arg("--data")
            .arg(data)
            .arg("--out")
            .arg(out);
    }
    c.stdout(Stdio::null()).stderr(Stdio::null());
    c
}

fn kill(child: &mut Child) {
    // SIGKILL: no handler runs, nothing is flushed
    let _ = child.kill();
    let _ = child.wait();
}

/// The tensors of a safetensors file (the final weights of a run).
fn weights(path: &Path) -> HashMap<String, Vec<f32>> {
    let (net, _) = seg_train::checkpoint::load_bundle(path, &seg_core::Device::Cpu)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    net.params()
        .tensors()
        .into_iter()
        .map(|(k, t)| {
            let v = t
                .to_dtype(seg_core::DType::F32)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            (k, v)
        })
        .collect()
}

/// What is on disk after a kill must load: the bundle and the resume state.
fn check_loads(run: &Path) {
    let last = run.join("last.safetensors");
    let state = run.join("last.state.safetensors");
    if last.exists() {
        seg_train::checkpoint::load_bundle(&last, &seg_core::Device::Cpu)
            .unwrap_or_else(|e| panic!("after a kill, {} does not load: {e}", last.display()));
    }
    if state.exists() {
        seg_train::checkpoint::load_state(&state)
            .unwrap_or_else(|e| panic!("after a kill, {} does not load: {e}", state.display()));
    }
}

fn temp_files(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .is_some_and(|n| n.to_string_lossy().contains(".tmp-"))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Starts (or resumes) the run, returning the child.
fn start(data: &Path, run: &Path) -> Child {
    let resume = run.join("last.state.safetensors").is_file();
    train(data, run, resume).spawn().unwrap()
}

#[test]
fn sigkill_at_random_points_and_mid_write_then_resume_matches_an_uninterrupted_run() {
    let root = std::env::temp_dir().join(format!("seg-cli-kill-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let data = root.join("data");
    synthetic_folder(&data, 4, 40);

    // the uninterrupted run
    let reference = root.join("reference");
    let t0 = Instant::now();
    let st = train(&data, &reference, false).status().unwrap();
    assert!(st.success());
    let full = t0.elapsed();
    let want = weights(&reference.join("last.safetensors"));

    // killed at pseudo-random moments (a fixed LCG, so the test is repeatable)
    let run = root.join("run");
    let mut s: u64 = 0x5eed;
    let mut kills = 0;
    for _ in 0..3 {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let frac = 0.1 + 0.3 * ((s >> 33) as f64 / (1u64 << 31) as f64);
        let mut child = start(&data, &run);
        std::thread::sleep(full.mul_f64(frac));
        if child.try_wait().unwrap().is_none() {
            kill(&mut child);
            kills += 1;
        }
        check_loads(&run);
    }
    assert!(
        kills >= 2,
        "the run finished before it could be killed ({kills} kills; uninterrupted run {full:?})"
    );

    // killed halfway through writing a checkpoint. On a fast machine the
    // restarts above can carry the run to its end, leaving no checkpoint to
    // write: then it must already match, and a fresh run takes the kill.
    let finished = std::fs::read_to_string(run.join("metrics.csv"))
        .map(|t| t.lines().count() > 6)
        .unwrap_or(false);
    if finished {
        assert_eq!(weights(&run.join("last.safetensors")), want);
    }
    let run = if finished { root.join("run-mid") } else { run };
    let mut child = train(&data, &run, run.join("last.state.safetensors").is_file())
        .env("SEG_FAULT_PAUSE_MID_WRITE_MS", "3000")
        .env("SEG_FAULT_PAUSE_MATCH", "safetensors")
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let caught = loop {
        let tmp = temp_files(&run);
        if !tmp.is_empty() {
            break Some(tmp);
        }
        if child.try_wait().unwrap().is_some() || Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let caught = caught.expect("no checkpoint write was caught in progress");
    // give the writer time to reach its pause, then kill it there
    std::thread::sleep(Duration::from_millis(300));
    kill(&mut child);
    for t in &caught {
        if let Ok(meta) = std::fs::metadata(t) {
            // the temporary file is the half-written one; the real names
            // still hold the previous complete checkpoint
            assert!(meta.len() > 0);
        }
    }
    check_loads(&run);

    // resume until the end (from the start if the kill came before the first checkpoint)
    let st = train(&data, &run, run.join("last.state.safetensors").is_file())
        .status()
        .unwrap();
    assert!(st.success());
    let got = weights(&run.join("last.safetensors"));
    assert_eq!(got.len(), want.len());
    for (k, v) in &want {
        assert_eq!(
            got.get(k),
            Some(v),
            "{k} differs from the uninterrupted run after {kills} random kills and a mid-write kill"
        );
    }
    // a resumed run clears the temporary files that killed writers left
    assert!(temp_files(&run).is_empty(), "{:?}", temp_files(&run));
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn predict_killed_mid_write_leaves_no_output() {
    let root = std::env::temp_dir().join(format!("seg-cli-kill-predict-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let data = root.join("data");
    synthetic_folder(&data, 3, 40);
    let run = root.join("run");
    let st = bin()
        .args([
            "train", "--model", "unet", "--base", "2", "--epochs", "1", "--steps", "2", "--batch",
            "2", "--patch", "32", "--val", "1", "--data",
        ])
        .arg(&data)
        .arg("--out")
        .arg(&run)
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    let out = root.join("pred");
    let mut child = bin()
        .args(["predict", "--checkpoint"])
        .arg(run.join("last.safetensors"))
        .arg("--input")
        .arg(data.join("images"))
        .arg("--output")
        .arg(&out)
        .env("SEG_FAULT_PAUSE_MID_WRITE_MS", "3000")
        .env("SEG_FAULT_PAUSE_MATCH", ".png")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while temp_files(&out).is_empty() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "predict ended before writing"
        );
        assert!(Instant::now() < deadline, "no output write seen");
        std::thread::sleep(Duration::from_millis(2));
    }
    std::thread::sleep(Duration::from_millis(300));
    kill(&mut child);
    // only hidden temporary files, no half-written outputs under real names
    let visible: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.') && n != "masks")
        .collect();
    assert!(
        visible.is_empty(),
        "outputs after a kill mid-write: {visible:?}"
    );
    std::fs::remove_dir_all(&root).unwrap();
}
