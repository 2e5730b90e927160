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
