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

/// Writes case `k` of a paired volume dataset: `root/images/caseKK.nii.gz`
/// and `root/labels/caseKK.nii.gz`, `dims` voxels with a diagonal affine of
/// `spacing` (mm).
#[allow(dead_code)]
pub fn write_volume_case(
    root: &std::path::Path,
    k: usize,
    dims: [usize; 3],
    spacing: [f64; 3],
    image: &[f32],
    label: &[f32],
) {
    let mut affine = [[0.0; 4]; 4];
    for (i, row) in affine.iter_mut().enumerate().take(3) {
        row[i] = spacing[i];
    }
    affine[3][3] = 1.0;
    let name = format!("case{k:02}.nii.gz");
    for (sub, values) in [("images", image), ("labels", label)] {
        std::fs::create_dir_all(root.join(sub)).unwrap();
        seg_data::io::nifti::write_nifti(&root.join(sub).join(&name), &dims, values, &affine)
            .unwrap();
    }
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
        precision: None,
    };
    save_bundle(&net, &info, path).unwrap();
    path.to_path_buf()
}
