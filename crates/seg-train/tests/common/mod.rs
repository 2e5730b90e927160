//! Helpers shared by seg-train's integration tests.

use std::path::PathBuf;

/// A fresh temporary folder `seg-train-<group>-<name>-<pid>`.
#[allow(dead_code)]
pub fn tmp(group: &str, name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("seg-train-{group}-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// `../shared/<sub>` if present, else a SKIP notice past the output capture.
#[allow(dead_code)]
pub fn shared(sub: &str) -> Option<PathBuf> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared")
        .join(sub);
    if p.exists() {
        return Some(p);
    }
    let msg = format!("SKIP: ../shared/{sub} not found; real-data test not run");
    match std::fs::OpenOptions::new().write(true).open("/dev/stderr") {
        Ok(mut f) => {
            let _ = std::io::Write::write_all(&mut f, format!("{msg}\n").as_bytes());
        }
        Err(_) => eprintln!("{msg}"),
    }
    None
}

/// A U-Net of base 2 with seeded (`seed`) random weights, the fundus
/// preprocessing, a 64 px window and `threshold`, saved as `path`: for
/// tests of the segmenting pipeline, not of a model.
#[allow(dead_code)]
pub fn tiny_fundus_bundle(
    path: &std::path::Path,
    threshold: f32,
    fov_diameter: Option<f64>,
) -> PathBuf {
    use seg_core::Device;
    use seg_models::{ModelConfig, Network};
    use seg_train::checkpoint::{save_bundle, BundleInfo};
    use seg_train::infer::SlidingWindow;
    let cfg = ModelConfig::from_name("unet")
        .unwrap()
        .with_base(2)
        .with_in_channels(1);
    let net = Network::new(&cfg, &Device::Cpu, 7).unwrap();
    let info = BundleInfo {
        format_version: 1,
        preprocess: seg_data::Preprocess::fundus(),
        patch: 32,
        sliding_window: SlidingWindow {
            roi: 64,
            overlap: 0.25,
            ..Default::default()
        },
        threshold,
        epoch: 1,
        val_dice: None,
        slices: None,
        plan: None,
        fov_diameter,
    };
    save_bundle(&net, &info, path).unwrap();
    path.to_path_buf()
}
