//! Shared helpers of the fuzz targets: the readers take paths, so each input
//! is written to a per-process temporary file with the extension that picks
//! the reader.

use std::path::PathBuf;

/// Writes `data` to a temporary file named `input.<ext>` in this process's
/// own folder and runs `f` on its path.
pub fn with_file<R>(data: &[u8], ext: &str, f: impl FnOnce(&std::path::Path) -> R) -> R {
    let dir = scratch_dir();
    let path = dir.join(format!("input.{ext}"));
    std::fs::write(&path, data).expect("write the fuzz input");
    f(&path)
}

/// A folder for this process (under the system temp dir), created once.
pub fn scratch_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("seg-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create the scratch folder");
    dir
}
