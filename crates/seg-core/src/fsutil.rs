//! Writing files safely: [`atomic_write`] (a temporary file in the target
//! folder, synced, then renamed over the target, so that a reader sees the
//! old file or the complete new one, never a torn one) and
//! [`remove_stale_temp_files`] (the leftovers of writers that were killed).
//! Every file seg writes from bytes goes through [`atomic_write`]
//! (safetensors weights and checkpoints here, seg-data's
//! `io::atomic_write`, the trainer's metrics and configs).

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// The fault-injection pause of [`atomic_write`]: with
/// `SEG_FAULT_PAUSE_MID_WRITE_MS=<ms>` set (and, if set, the file name
/// containing `SEG_FAULT_PAUSE_MATCH`), each write stops for that long after
/// writing half of the file, so that tests can kill the process mid-write.
fn fault_pause_ms(name: &str) -> Option<u64> {
    let ms = std::env::var("SEG_FAULT_PAUSE_MID_WRITE_MS")
        .ok()?
        .parse()
        .ok()?;
    match std::env::var("SEG_FAULT_PAUSE_MATCH") {
        Ok(m) if !name.contains(&m) => None,
        _ => Some(ms),
    }
}

/// Removes the temporary files that killed writers of [`atomic_write`] left
/// in `dir` (`.<name>.tmp-<pid>`); returns how many.
pub fn remove_stale_temp_files(dir: &Path) -> usize {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    let own = format!(".tmp-{}", std::process::id());
    rd.flatten()
        .filter(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.starts_with('.') && n.contains(".tmp-") && !n.ends_with(&own)
        })
        .filter(|e| std::fs::remove_file(e.path()).is_ok())
        .count()
}

/// Writes `bytes` to `path` through a temporary file in the same folder and a
/// rename, so that `path` is either the old file or the complete new one.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        if let Some(ms) = fault_pause_ms(&name) {
            // fault injection for the kill tests: stop halfway through
            let half = bytes.len() / 2;
            f.write_all(&bytes[..half])?;
            f.flush()?;
            std::thread::sleep(std::time::Duration::from_millis(ms));
            f.write_all(&bytes[half..])?;
        } else {
            f.write_all(bytes)?;
        }
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("seg-fsutil-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn atomic_write_replaces_the_file_and_leaves_no_temporary() {
        let d = scratch("replace");
        let p = d.join("a.json");
        atomic_write(&p, b"old").unwrap();
        atomic_write(&p, b"new contents").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"new contents");
        let names: Vec<_> = std::fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("a.json")]);
        // a folder that does not exist is an error naming the file
        let bad = d.join("missing").join("b.json");
        let e = atomic_write(&bad, b"x").unwrap_err().to_string();
        assert!(e.contains("b.json"), "{e}");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn stale_temporaries_of_other_processes_are_removed() {
        let d = scratch("stale");
        std::fs::write(d.join(".a.json.tmp-1"), b"half").unwrap();
        let own = format!(".b.json.tmp-{}", std::process::id());
        std::fs::write(d.join(&own), b"mine").unwrap();
        std::fs::write(d.join("c.json"), b"kept").unwrap();
        assert_eq!(remove_stale_temp_files(&d), 1);
        assert!(d.join(&own).is_file() && d.join("c.json").is_file());
        assert!(!d.join(".a.json.tmp-1").exists());
        std::fs::remove_dir_all(&d).unwrap();
    }
}
