//! seg-data integration tests on real files in ../shared (skipped, with a
//! notice, when it is absent).

mod drive;
mod medical;

use std::path::PathBuf;

/// `../shared` beside the workspace root, if present.
pub fn shared() -> Option<PathBuf> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared");
    p.is_dir().then_some(p)
}

#[macro_export]
macro_rules! shared_or_skip {
    ($sub:expr) => {{
        match $crate::shared().map(|s| s.join($sub)).filter(|p| p.exists()) {
            Some(p) => p,
            None => {
                eprintln!("SKIP: ../shared/{} not found", $sub);
                return;
            }
        }
    }};
}
