//! Installing DRIVE from a zip or a folder: the manifest's files are
//! unpacked or copied into a temporary folder, verified, and renamed into
//! place only when all are good. Zip entries that would land outside the
//! destination (zip-slip) or that inflate past the manifest's size are
//! refused.

use super::manifest::{verify, Manifest};
use anyhow::{bail, Context, Result};
use std::io::Read;
use std::path::{Component, Path, PathBuf};

/// A relative path inside the DRIVE folder, or None if it would escape it.
fn safe_relative(name: &str) -> Option<PathBuf> {
    let p = Path::new(name);
    if p.is_absolute() {
        return None;
    }
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(s) => out.push(s),
            Component::CurDir => {}
            _ => return None,
        }
    }
    Some(out)
}

/// Strips a leading `DRIVE/` (the official archive's top folder).
fn drive_relative(p: &Path) -> PathBuf {
    p.strip_prefix("DRIVE")
        .map(Path::to_path_buf)
        .unwrap_or_else(|_| p.to_path_buf())
}

/// Unpacks the manifest's files from the zip at `zip_path` into `into`
/// (entries not in the manifest are ignored). Refuses entries with absolute
/// paths or `..` (zip-slip) and any entry that claims or inflates to more
/// than the manifest's size for it (64 MiB where it gives none).
pub fn unpack_zip(zip_path: &Path, manifest: &Manifest, into: &Path) -> Result<()> {
    let f = std::fs::File::open(zip_path)
        .with_context(|| format!("cannot open {}", zip_path.display()))?;
    let mut z = zip::ZipArchive::new(f)
        .with_context(|| format!("{}: not a zip archive", zip_path.display()))?;
    for i in 0..z.len() {
        let mut entry = z
            .by_index(i)
            .with_context(|| format!("{}: bad entry {i}", zip_path.display()))?;
        let name = entry.name().to_string();
        let Some(rel) = safe_relative(&name) else {
            bail!("{}: entry {name:?} would be written outside the destination (absolute path or ..): refused", zip_path.display());
        };
        if entry.is_dir() {
            continue;
        }
        let rel = drive_relative(&rel);
        let key = rel.to_string_lossy().replace('\\', "/");
        let Some(e) = manifest.get(&key) else {
            eprintln!("ignored: {name} (not in the manifest)");
            continue;
        };
        let limit = e.size.unwrap_or(64 << 20);
        if entry.size() > limit {
            bail!(
                "{}: {name} claims {} bytes, the manifest allows {limit}",
                zip_path.display(),
                entry.size()
            );
        }
        let dst = into.join(&rel);
        std::fs::create_dir_all(dst.parent().expect("file has a parent"))?;
        let mut out = std::fs::File::create(&dst)?;
        // read at most limit + 1 bytes whatever the header claims
        let n = std::io::copy(&mut (&mut entry).take(limit + 1), &mut out)?;
        if n > limit {
            bail!(
                "{}: {name} inflates past {limit} bytes: refused (decompression bomb?)",
                zip_path.display()
            );
        }
    }
    Ok(())
}

/// Copies the manifest's files from an unpacked folder (the DRIVE folder or its parent).
fn copy_folder(src: &Path, manifest: &Manifest, into: &Path) -> Result<()> {
    let root = if src.join("DRIVE").is_dir() {
        src.join("DRIVE")
    } else {
        src.to_path_buf()
    };
    for path in manifest.keys() {
        let from = root.join(path);
        if from.is_file() {
            let to = into.join(path);
            std::fs::create_dir_all(to.parent().expect("file has a parent"))?;
            std::fs::copy(&from, &to).with_context(|| format!("copying {}", from.display()))?;
        }
    }
    Ok(())
}

fn describe_missing(missing: &[String]) -> String {
    let labels = missing
        .iter()
        .filter(|p| p.starts_with("test/1st_manual") || p.starts_with("test/2nd_manual"))
        .count();
    let mut s = format!("{} file(s) missing", missing.len());
    if labels > 0 {
        s.push_str(&format!(
            " ({labels} of them test annotations, which are distributed separately)"
        ));
    }
    let others: Vec<&String> = missing
        .iter()
        .filter(|p| !(p.starts_with("test/1st_manual") || p.starts_with("test/2nd_manual")))
        .collect();
    if !others.is_empty() {
        s.push_str(&format!(
            "; not test annotations: {}",
            others
                .iter()
                .take(5)
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    s
}

/// Installs from a zip or folder into `dest`, verified, atomically.
pub fn install(src: &Path, dest: &Path, manifest: &Manifest) -> Result<String> {
    if dest.is_dir() {
        let r = verify(dest, manifest)?;
        if r.wrong.is_empty() && !r.ok.is_empty() {
            let mut msg = format!(
                "{} already present and verified: {} of {} files",
                dest.display(),
                r.ok.len(),
                manifest.len()
            );
            if !r.missing.is_empty() {
                msg.push_str(&format!("; {}", describe_missing(&r.missing)));
            }
            return Ok(msg);
        }
        bail!(
            "{} exists but does not match the manifest ({} wrong, {} verified); move it away first",
            dest.display(),
            r.wrong.len(),
            r.ok.len()
        );
    }
    let parent = dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)?;
    let tmp = parent.join(format!(
        ".{}.tmp-{}",
        dest.file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default(),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    let result = (|| -> Result<String> {
        if src.is_dir() {
            copy_folder(src, manifest, &tmp)?;
        } else {
            unpack_zip(src, manifest, &tmp)?;
        }
        let r = verify(&tmp, manifest)?;
        if let Some((p, want, got)) = r.wrong.first() {
            bail!("{p}: sha256 {got} does not match the manifest's {want}; nothing installed");
        }
        if r.ok.is_empty() {
            bail!(
                "{}: none of the manifest's files found; nothing installed",
                src.display()
            );
        }
        std::fs::rename(&tmp, dest).with_context(|| format!("moving into {}", dest.display()))?;
        let mut msg = format!(
            "installed {} verified files into {}",
            r.ok.len(),
            dest.display()
        );
        if !r.missing.is_empty() {
            msg.push_str(&format!("; {}", describe_missing(&r.missing)));
        }
        Ok(msg)
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}
