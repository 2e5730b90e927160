//! `mpirun -np 2 seg-cli ...` on loopback (the `mpi` feature; Open MPI):
//! data-parallel training gives the one-process weights, an error on one
//! rank ends both (no hang), ranks with different commands are refused,
//! and `predict` splits the cases across ranks with the one-process output.
#![cfg(feature = "mpi")]

mod common;

use common::{bin, synthetic_folder};
use seg_core::candle::safetensors;
use seg_core::Device;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// `mpirun` for 2 ranks of seg-cli on this machine (as root too, more
/// ranks than cores allowed, one kernel thread per rank).
fn mpirun() -> Command {
    let mut c = Command::new("mpirun");
    c.args([
        "--allow-run-as-root",
        "--oversubscribe",
        "--bind-to",
        "none",
        "--mca",
        "btl_vader_single_copy_mechanism",
        "none",
        "-x",
        "RAYON_NUM_THREADS=1",
    ]);
    c
}

/// Runs `c`, killing it (and failing) after `limit`.
fn run(mut c: Command, limit: Duration) -> Output {
    let started = Instant::now();
    let mut child = c
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mpirun (openmpi-bin) runs");
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if started.elapsed() > limit {
            // SIGTERM lets mpirun end its ranks; then SIGKILL
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            std::thread::sleep(Duration::from_secs(5));
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "still running after {limit:?} (a hang): {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn ok(out: &Output) {
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn temp(name: &str) -> PathBuf {
    let root = std::env::temp_dir().join(format!("seg-mpi-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    root
}

/// The run (`--model unet --norm group --epochs 2 --steps 6
/// --batch 8 --seed 3 --val 2`) on small images and a small network, with
/// 3 steps per epoch instead of 6: from about its 7th step this small U-Net
/// is sensitive to any rounding-level change (ReLU zeros meeting max-pool
/// ties): in ONE process, lr 0.05 against 0.0500001 gives weights 1.2e-2
/// apart after 12 steps (0.05000005: 2.5e-6), so a 12-step comparison
/// would test luck, not the sums (docs/scaling.md).
fn train_args(data: &Path, out: &Path, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = [
        "train", "--model", "unet", "--norm", "group", "--groups", "4", "--base", "8", "--epochs",
        "2", "--steps", "3", "--batch", "8", "--seed", "3", "--val", "2", "--patch", "32",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    a.extend(["--data".into(), data.display().to_string()]);
    a.extend(["--out".into(), out.display().to_string()]);
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

/// How far two weight files are apart, over every tensor: the largest
/// element difference relative to that tensor's largest magnitude, and the
/// largest relative L2 distance `|a - b| / |a|`.
fn rel_diffs(a: &Path, b: &Path) -> (f64, f64) {
    let a = safetensors::load(a, &Device::Cpu).unwrap();
    let b = safetensors::load(b, &Device::Cpu).unwrap();
    assert_eq!(a.len(), b.len());
    let values = |t: &seg_core::Tensor| -> Vec<f64> {
        let t = t
            .flatten_all()
            .unwrap()
            .to_dtype(seg_core::DType::F64)
            .unwrap();
        t.to_vec1().unwrap()
    };
    let (mut max_rel, mut l2_rel) = (0f64, 0f64);
    let mut rows = Vec::new();
    for (name, ta) in &a {
        let (va, vb) = (values(ta), values(&b[name]));
        let scale = va.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-12);
        let d = va
            .iter()
            .zip(&vb)
            .fold(0f64, |m, (x, y)| m.max((x - y).abs()));
        let norm = va.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-12);
        let dist = va
            .iter()
            .zip(&vb)
            .map(|(x, y)| (x - y) * (x - y))
            .sum::<f64>()
            .sqrt();
        max_rel = max_rel.max(d / scale);
        l2_rel = l2_rel.max(dist / norm);
        rows.push((d / scale, dist / norm, name.clone()));
    }
    rows.sort_by(|x, y| y.0.total_cmp(&x.0));
    for r in rows.iter().take(3) {
        eprintln!("  max element {:.2e}, L2 {:.2e}: {}", r.0, r.1, r.2);
    }
    (max_rel, l2_rel)
}

fn train_losses(run: &Path) -> Vec<f64> {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("metrics.json")).unwrap()).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| r["train_loss"].as_f64().unwrap())
        .collect()
}

/// With the default kernels: seg-core chooses each convolution's kernel
/// per image, so a rank's half batch runs what the whole batch runs
/// (docs/scaling.md); fp32, the training default.
#[test]
fn two_ranks_train_the_one_process_model() {
    let root = temp("train");
    let data = root.join("data");
    synthetic_folder(&data, 6, 48);
    for (opt, extra) in [
        // SGD: unlike Adam's, its update scales with the gradient, so a
        // wrongly scaled sum of the ranks' gradients would show
        ("sgd", &["--optimizer", "sgd", "--lr", "0.05"][..]),
        ("adam", &[][..]),
    ] {
        let one = root.join(format!("one-{opt}"));
        let two = root.join(format!("two-{opt}"));
        let out = run(
            {
                let mut c = bin();
                c.args(train_args(&data, &one, extra));
                c
            },
            Duration::from_secs(300),
        );
        ok(&out);
        let out = run(
            {
                let mut c = mpirun();
                c.args(["-np", "2"])
                    .arg(env!("CARGO_BIN_EXE_seg-cli"))
                    .args(train_args(&data, &two, extra));
                c
            },
            Duration::from_secs(300),
        );
        ok(&out);
        let (d, l2) = rel_diffs(&one.join("last.safetensors"), &two.join("last.safetensors"));
        eprintln!("{opt}: 2 ranks vs 1 process: max relative difference {d:.2e}, L2 {l2:.2e}");
        // SGD's update is proportional to the gradient: the exactness check
        // (the ranks' gradients are the one-process gradients to rounding).
        // Adam's first steps move every weight by about ±lr whatever its
        // gradient's size, so the rounding of a near-zero gradient (any
        // other order of summation) flips single weights by ~lr: its
        // element-wise difference is not small and its L2 difference
        // depends on how many such weights a run has (5.6e-4 with the
        // direct kernels only, 2.5e-2 with Winograd on); the check for Adam
        // is the losses below and an L2 far under the half batch's (1.3)
        let (limit, bound) = if opt == "sgd" { (d, 1e-3) } else { (l2, 5e-2) };
        assert!(
            limit < bound,
            "{opt}: relative difference {d} (max), {l2} (L2)"
        );
        let (l1, l2) = (train_losses(&one), train_losses(&two));
        assert_eq!(l1.len(), 2);
        for (a, b) in l1.iter().zip(&l2) {
            assert!(
                (a - b).abs() <= 1e-4 * a.abs(),
                "{opt}: losses {l1:?} vs {l2:?}"
            );
        }
        assert!(two.join("best.safetensors").is_file());
        if opt == "sgd" {
            // what one rank alone would compute (half the batch) is far off:
            // the comparison above can tell
            let half = root.join("half");
            let mut extra = extra.to_vec();
            extra.extend(["--batch", "4"]);
            let mut a = train_args(&data, &half, &extra);
            let i = a.iter().position(|s| s == "--batch").unwrap();
            a.drain(i..i + 2);
            let out = run(
                {
                    let mut c = bin();
                    c.args(a);
                    c
                },
                Duration::from_secs(300),
            );
            ok(&out);
            let (d, l2) = rel_diffs(
                &one.join("last.safetensors"),
                &half.join("last.safetensors"),
            );
            eprintln!("sgd: batch 4 vs batch 8: max relative difference {d:.2e}, L2 {l2:.2e}");
            assert!(
                d > 1e-2 && l2 > 1e-3,
                "half batch differs by only {d}, {l2}"
            );
        }
    }
    let _ = std::fs::remove_dir_all(&root);
}

/// BatchNorm with `--sync-bn`: every rank normalises with the global
/// batch's statistics, so 2 ranks train the one-process model (weights and
/// running statistics); without it each rank's own statistics make another
/// model (the check can tell). Two steps: this small BatchNorm network is
/// sensitive to any rounding-level change from its third step on (in one
/// process, an lr changed by 1e-6 relative moves near-zero BatchNorm biases
/// by 2e-2 of their largest after 3 steps, where GroupNorm's stay at 1e-6;
/// docs/scaling.md), so later steps would test that, not the sums.
#[test]
fn synchronised_batch_norm_trains_the_one_process_model() {
    let root = temp("syncbn");
    let data = root.join("data");
    synthetic_folder(&data, 6, 48);
    let args = |out: &Path, extra: &[&str]| {
        let mut a = train_args(&data, out, &["--optimizer", "sgd", "--lr", "0.05"]);
        let i = a.iter().position(|s| s == "--groups").unwrap();
        a.drain(i..i + 2);
        let i = a.iter().position(|s| s == "--norm").unwrap();
        a[i + 1] = "batch".into();
        let i = a.iter().position(|s| s == "--epochs").unwrap();
        a[i + 1] = "1".into();
        let i = a.iter().position(|s| s == "--steps").unwrap();
        a[i + 1] = "2".into();
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let one = root.join("one");
    let out = run(
        {
            let mut c = bin();
            c.args(args(&one, &[]));
            c
        },
        Duration::from_secs(300),
    );
    ok(&out);
    let mut diffs = Vec::new();
    for (name, extra) in [("synced", &["--sync-bn"][..]), ("local", &[][..])] {
        let two = root.join(name);
        let out = run(
            {
                let mut c = mpirun();
                c.env("SEG_LOG", "info")
                    .args(["-np", "2"])
                    .arg(env!("CARGO_BIN_EXE_seg-cli"))
                    .args(args(&two, extra));
                c
            },
            Duration::from_secs(300),
        );
        ok(&out);
        if name == "synced" {
            let log = String::from_utf8_lossy(&out.stderr);
            assert!(log.contains("synchronised BatchNorm"), "{log}");
        }
        let (d, l2) = rel_diffs(&one.join("last.safetensors"), &two.join("last.safetensors"));
        eprintln!("batch norm, {name}: 2 ranks vs 1 process: max relative difference {d:.2e}, L2 {l2:.2e}");
        diffs.push(d);
    }
    assert!(
        diffs[0] < 1e-3,
        "synchronised: max relative difference {}",
        diffs[0]
    );
    assert!(
        diffs[1] > 1e-2,
        "rank-local statistics differ by only {}",
        diffs[1]
    );
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn an_error_on_one_rank_stops_both() {
    let root = temp("fault");
    let data = root.join("data");
    synthetic_folder(&data, 4, 40);
    let started = Instant::now();
    let mut c = mpirun();
    c.args([
        "-x",
        "SEG_FAULT_AT=1:3",
        "-np",
        "2",
        env!("CARGO_BIN_EXE_seg-cli"),
    ])
    .args(train_args(&data, &root.join("run"), &[]));
    let out = run(c, Duration::from_secs(180));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("fault injected on rank 1 at global step 3"),
        "{err}"
    );
    eprintln!("fault on rank 1: both ended in {:?}", started.elapsed());

    // ranks started with different settings are refused before training
    let mut c = mpirun();
    c.args(["-np", "1", env!("CARGO_BIN_EXE_seg-cli")])
        .args(train_args(&data, &root.join("run2"), &[]))
        .args([":", "-np", "1", env!("CARGO_BIN_EXE_seg-cli")])
        .args(train_args(&data, &root.join("run2"), &["--lr", "0.01"]));
    let out = run(c, Duration::from_secs(180));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("the same on every rank"), "{err}");
    assert!(!root.join("run2/last.safetensors").exists());
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn predict_splits_the_cases_across_ranks() {
    let root = temp("predict");
    let data = root.join("data");
    synthetic_folder(&data, 5, 40);
    let model = root.join("model");
    let out = bin()
        .args([
            "train", "--model", "unet", "--base", "4", "--epochs", "1", "--steps", "1", "--batch",
            "2", "--patch", "32", "--val", "2", "--data",
        ])
        .arg(&data)
        .arg("--out")
        .arg(&model)
        .output()
        .unwrap();
    ok(&out);
    let predict = |c: &mut Command, dir: &Path| {
        c.args(["predict", "--checkpoint"])
            .arg(model.join("best.safetensors"))
            .arg("--input")
            .arg(data.join("images"))
            .arg("--output")
            .arg(dir);
    };
    let (one, two) = (root.join("one"), root.join("two"));
    let mut c = bin();
    predict(&mut c, &one);
    ok(&run(c, Duration::from_secs(120)));
    let mut c = mpirun();
    c.args(["-np", "2", env!("CARGO_BIN_EXE_seg-cli")]);
    predict(&mut c, &two);
    let out = run(c, Duration::from_secs(120));
    ok(&out);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("rank 0 of 2: wrote 3 prediction(s)"), "{err}");
    assert!(err.contains("rank 1 of 2: wrote 2 prediction(s)"), "{err}");
    let mut files = 0;
    for sub in ["", "masks"] {
        for e in std::fs::read_dir(one.join(sub)).unwrap() {
            let p = e.unwrap().path();
            if p.is_file() {
                let q = two.join(sub).join(p.file_name().unwrap());
                assert_eq!(
                    std::fs::read(&p).unwrap(),
                    std::fs::read(&q).unwrap(),
                    "{}",
                    q.display()
                );
                files += 1;
            }
        }
    }
    assert_eq!(files, 10);
    let _ = std::fs::remove_dir_all(&root);
}
