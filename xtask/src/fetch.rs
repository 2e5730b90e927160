//! `cargo xtask fetch-drive`: installs and verifies the DRIVE dataset from a
//! zip in the official layout, an unpacked folder, or a URL (HTTP(S), with
//! retries and resumption of a partial download by Range requests). Every
//! file is checked against `datasets/DRIVE.manifest`; files are unpacked into
//! a temporary folder that is renamed into place only when all are good, so a
//! failure leaves nothing half-installed. Zip entries that would land outside
//! the destination are refused, and no entry may be larger than the manifest
//! says (decompression bombs).

mod download;
mod install;
mod manifest;
#[cfg(test)]
mod tests;

pub use download::download;
pub use install::{install, unpack_zip};
pub use manifest::{parse_manifest, verify, Entry, Manifest, Report};

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

pub const LICENCE: &str = "DRIVE (Digital Retinal Images for Vessel Extraction), J. Staal, M. D. Abramoff, M. Niemeijer, M. A. Viergever, B. van Ginneken, \"Ridge-based vessel segmentation in color images of the retina\", IEEE TMI 23(4):501-509, 2004; Image Sciences Institute, University Medical Center Utrecht. Free for research and education; it may not be redistributed. Obtain it from its authors (the DRIVE challenge site) or a copy you trust, then run:\n  cargo xtask fetch-drive --from path/to/DRIVE.zip        (or an unpacked DRIVE folder)\n  cargo xtask fetch-drive --url https://.../DRIVE.zip";

/// The whole command.
pub fn run(
    from: Option<PathBuf>,
    url: Option<String>,
    dest: PathBuf,
    manifest: PathBuf,
) -> Result<()> {
    let text = std::fs::read_to_string(&manifest)
        .with_context(|| format!("cannot read the manifest {}", manifest.display()))?;
    let m = parse_manifest(&text)?;
    let src = match (from, url) {
        (Some(_), Some(_)) => bail!("give --from or --url, not both"),
        (Some(p), None) => {
            if !p.exists() {
                bail!("{}: no such file or folder", p.display());
            }
            p
        }
        (None, Some(u)) => {
            let parent = dest
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            std::fs::create_dir_all(parent)?;
            let part = parent.join(".DRIVE.download.part");
            download(&u, &part, 5)?;
            part
        }
        (None, None) => {
            println!("{LICENCE}");
            bail!("no source given: pass --from PATH or --url URL");
        }
    };
    let msg = install(&src, &dest, &m)?;
    println!("{msg}");
    Ok(())
}
