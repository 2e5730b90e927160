//! Helpers shared by the seg-cli integration tests.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;

pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_seg-cli"))
}

pub fn skip_notice(msg: &str) {
    use std::io::Write;
    match std::fs::OpenOptions::new().write(true).open("/dev/stderr") {
        Ok(mut f) => {
            let _ = writeln!(f, "{msg}");
        }
        Err(_) => eprintln!("{msg}"),
    }
}

pub fn shared() -> Option<PathBuf> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared");
    p.is_dir().then_some(p)
}

/// Writes `n` synthetic vessel images as an images/ + masks/ folder.
pub fn synthetic_folder(dir: &std::path::Path, n: usize, size: usize) {
    use seg_data::io::image2d::{write_mask_png, write_png_u8, Mask};
    use seg_data::synthetic::{generate, SyntheticConfig};
    for sub in ["images", "masks", "fov"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
    }
    let cfg = SyntheticConfig {
        size,
        count: n,
        ..Default::default()
    };
    for i in 0..n {
        let s = generate(&cfg, i);
        let plane = size * size;
        let mut rgb = vec![0u8; plane * 3];
        for p in 0..plane {
            for c in 0..3 {
                rgb[p * 3 + c] = (s.image[c * plane + p] * 255.0).round() as u8;
            }
        }
        write_png_u8(
            &dir.join(format!("images/case{i}.png")),
            size,
            size,
            3,
            &rgb,
        )
        .unwrap();
        write_mask_png(
            &dir.join(format!("masks/case{i}.png")),
            &Mask {
                height: size,
                width: size,
                data: s.label.unwrap(),
            },
        )
        .unwrap();
        write_mask_png(
            &dir.join(format!("fov/case{i}.png")),
            &Mask {
                height: size,
                width: size,
                data: s.fov.unwrap(),
            },
        )
        .unwrap();
    }
}

pub fn one_line_error(out: &std::process::Output) -> String {
    assert_eq!(
        out.status.code(),
        Some(1),
        "stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let err = String::from_utf8(out.stderr.clone()).unwrap();
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    err
}
