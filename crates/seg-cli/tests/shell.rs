//! seg-cli as a shell: `predict` writes byte for byte what the library
//! (`seg_train::segment`) writes, and every subcommand whose output goes into
//! a closed pipe ends quietly (SIGPIPE, as `| head` expects) without a panic.

mod common;

use common::*;
use seg_core::Device;
use seg_data::io::nifti::write_nifti;
use seg_models::{ModelConfig, Network};
use seg_train::checkpoint::{save_bundle, BundleInfo};
use seg_train::infer::SlidingWindow;
use seg_train::segment::Segmenter;
use std::path::{Path, PathBuf};

fn temp_root(name: &str) -> PathBuf {
    let root = std::env::temp_dir().join(format!("seg-cli-shell-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    root
}

/// A U-Net of base 2 with seeded random weights (the pipeline is under test).
fn tiny_bundle(dir: &Path) -> PathBuf {
    let cfg = ModelConfig::from_name("unet")
        .unwrap()
        .with_base(2)
        .with_in_channels(1);
    let net = Network::new(&cfg, &Device::Cpu, 11).unwrap();
    let info = BundleInfo {
        format_version: 1,
        preprocess: seg_data::Preprocess::fundus(),
        patch: 32,
        sliding_window: SlidingWindow {
            roi: 32,
            ..Default::default()
        },
        threshold: 0.5,
        epoch: 1,
        val_dice: None,
        slices: None,
        plan: None,
        fov_diameter: None,
        precision: None,
    };
    let path = dir.join("bundle.safetensors");
    save_bundle(&net, &info, &path).unwrap();
    path
}

#[test]
fn predict_writes_what_the_library_writes() {
    let root = temp_root("same");
    let data = root.join("data");
    synthetic_folder(&data, 2, 40);
    let values: Vec<f32> = (0..40 * 40 * 3)
        .map(|i| ((i * 7) % 13) as f32 * 100.0 - 600.0)
        .collect();
    let affine = [
        [0.8, 0.0, 0.0, -12.0],
        [0.0, 0.8, 0.0, 7.0],
        [0.0, 0.0, 2.5, 30.0],
        [0.0, 0.0, 0.0, 1.0],
    ];
    write_nifti(
        &data.join("images/case2.nii.gz"),
        &[40, 40, 3],
        &values,
        &affine,
    )
    .unwrap();
    let bundle = tiny_bundle(&root);
    let cli = root.join("cli");
    let out = bin()
        .args([
            "predict",
            "--tta",
            "--overlap",
            "0.25",
            "--threshold",
            "0.45",
        ])
        .arg("--checkpoint")
        .arg(&bundle)
        .arg("--input")
        .arg(data.join("images"))
        .arg("--fov")
        .arg(data.join("fov"))
        .arg("--output")
        .arg(&cli)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut seg = Segmenter::open(&bundle, &Device::Cpu).unwrap();
    seg.set_tta(true);
    seg.set_overlap(0.25).unwrap().set_threshold(0.45).unwrap();
    let lib = root.join("lib");
    let mut compared = 0;
    for (case, fov) in [
        ("case0.png", true),
        ("case1.png", true),
        ("case2.nii.gz", false),
    ] {
        let fov = fov.then(|| data.join("fov").join(format!("{}.png", &case[..5])));
        let s = seg
            .segment_file(&data.join("images").join(case), fov.as_deref())
            .unwrap();
        let w = s.write(&lib, &case[..5]).unwrap();
        assert_eq!(
            w.probabilities.len(),
            1,
            "a binary bundle writes one probability map"
        );
        for mine in [&w.probabilities[0], &w.mask] {
            let theirs = cli.join(mine.strip_prefix(&lib).unwrap());
            let (a, b) = (
                std::fs::read(mine).unwrap(),
                std::fs::read(&theirs).unwrap(),
            );
            assert!(
                a == b,
                "{} differs from {}",
                mine.display(),
                theirs.display()
            );
            compared += 1;
        }
    }
    assert_eq!(compared, 6);
    std::fs::remove_dir_all(&root).unwrap();
}

/// Runs seg-cli with stdout into a pipe whose read end is already closed, so
/// that its first write fails: the process must end by SIGPIPE, silently.
#[cfg(unix)]
fn closed_stdout(args: &[&std::ffi::OsStr]) {
    use std::os::unix::process::ExitStatusExt;
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = bin()
        .args(args)
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{args:?}: {err}");
    assert!(err.is_empty(), "{args:?}: {err}");
    // 13 = SIGPIPE on Linux and the BSDs
    assert_eq!(out.status.signal(), Some(13), "{args:?}: {:?}", out.status);
}

#[cfg(unix)]
#[test]
fn a_closed_pipe_ends_every_printing_subcommand_quietly() {
    use std::io::Read;
    let root = temp_root("pipe");
    let data = root.join("data");
    synthetic_folder(&data, 2, 40);
    let image = data.join("images/case0.png");
    let masks = data.join("masks");
    let s = |x: &'static str| std::ffi::OsStr::new(x);
    closed_stdout(&[s("info"), s("--model"), s("unet"), s("--json")]);
    closed_stdout(&[s("info"), s("--model"), s("resunet")]);
    closed_stdout(&[s("inspect"), s("--json"), image.as_os_str()]);
    closed_stdout(&[s("inspect"), image.as_os_str()]);
    closed_stdout(&[s("check-data"), s("--data"), data.as_os_str()]);
    closed_stdout(&[
        s("eval"),
        s("--pred"),
        masks.as_os_str(),
        s("--gt"),
        masks.as_os_str(),
        s("--json"),
        s("-"),
    ]);
    closed_stdout(&[s("--help")]);

    // `seg-cli inspect --json FILE | head -c 10`
    let mut child = bin()
        .args(["inspect", "--json"])
        .arg(&image)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut head = [0u8; 10];
    child.stdout.take().unwrap().read_exact(&mut head).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(&head[..3], b"{\n ");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked") && err.is_empty(), "{err}");
    assert!(
        out.status.success()
            || std::os::unix::process::ExitStatusExt::signal(&out.status) == Some(13),
        "{:?}",
        out.status
    );
    std::fs::remove_dir_all(&root).unwrap();
}
