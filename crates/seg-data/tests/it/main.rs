//! seg-data integration tests on real files in ../shared (skipped, with a
//! notice, when it is absent).

mod datasets;
mod drive;
mod medical;
mod series;

use std::path::PathBuf;

/// `../shared` beside the workspace root, if present.
pub fn shared() -> Option<PathBuf> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared");
    p.is_dir().then_some(p)
}

#[macro_export]
macro_rules! shared_or_skip {
    ($sub:expr) => {{
        match $crate::shared()
            .map(|s| s.join($sub))
            .filter(|p| p.exists())
        {
            Some(p) => p,
            None => {
                $crate::skip_notice(&format!(
                    "SKIP: ../shared/{} not found; real-file test not run",
                    $sub
                ));
                return;
            }
        }
    }};
}

/// Prints past libtest's output capture (which also takes `io::stderr()`),
/// so that CI logs show the skip.
pub fn skip_notice(msg: &str) {
    use std::io::Write;
    match std::fs::OpenOptions::new().write(true).open("/dev/stderr") {
        Ok(mut f) => {
            let _ = writeln!(f, "{msg}");
        }
        Err(_) => eprintln!("{msg}"),
    }
}
