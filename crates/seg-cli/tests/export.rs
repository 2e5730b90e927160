//! `seg-cli export`: the file written is byte-equal to the library's export
//! (`seg_train::export`, checked against tract and PyTorch in seg-train's
//! tests/onnx_export.rs); a missing or corrupt bundle is an error naming the
//! file, and nothing is written.

mod common;

use seg_core::Device;
use seg_models::{ModelConfig, Network};
use seg_train::checkpoint::{save_bundle, BundleInfo};

fn tmp(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("seg-cli-export-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn export_writes_the_library_model_and_names_bad_bundles() {
    let dir = tmp("cli");
    let cfg = ModelConfig::from_name("attention_unet")
        .unwrap()
        .with_base(4)
        .with_in_channels(1)
        .with_out_channels(3);
    let net = Network::new(&cfg, &Device::Cpu, 3).unwrap();
    let info = BundleInfo {
        format_version: 1,
        preprocess: seg_data::Preprocess::fundus(),
        patch: 32,
        sliding_window: Default::default(),
        threshold: 0.5,
        epoch: 1,
        val_dice: None,
        slices: None,
        plan: None,
        fov_diameter: None,
        precision: None,
    };
    let bundle = dir.join("best.safetensors");
    save_bundle(&net, &info, &bundle).unwrap();
    let out = dir.join("model.onnx");
    let o = common::bin()
        .args(["export", "--checkpoint"])
        .arg(&bundle)
        .arg("--output")
        .arg(&out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        stdout.contains("attention_unet (2D) as ONNX opset 17"),
        "{stdout}"
    );
    let lib = dir.join("lib.onnx");
    seg_train::export::export_bundle(&bundle, &lib).unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&lib).unwrap());

    let out2 = dir.join("never.onnx");
    let corrupt = dir.join("corrupt.safetensors");
    std::fs::write(&corrupt, b"\x10\x00\x00\x00\x00\x00\x00\x00{not json").unwrap();
    for bad in [dir.join("missing.safetensors"), corrupt] {
        let o = common::bin()
            .args(["export", "--checkpoint"])
            .arg(&bad)
            .arg("--output")
            .arg(&out2)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{stderr}");
        assert!(stderr.starts_with("error: "), "{stderr}");
        let name = bad.file_name().unwrap().to_string_lossy().into_owned();
        // the context line and the typed cause both name the file
        assert!(stderr.matches(name.as_str()).count() >= 2, "{stderr}");
        assert!(!out2.exists());
    }
    let _ = std::fs::remove_dir_all(&dir);
}
