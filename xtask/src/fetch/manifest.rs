//! `datasets/DRIVE.manifest`: its parsing and the check of a folder
//! against it (sha256 of every listed file).

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

/// One manifest line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub sha256: String,
    pub size: Option<u64>,
}

/// Path (relative to DRIVE/) → entry.
pub type Manifest = BTreeMap<String, Entry>;

/// Parses `sha256  size|-  path` lines (`#` comments).
pub fn parse_manifest(text: &str) -> Result<Manifest> {
    let mut m = Manifest::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let parts: Vec<&str> = line.split_whitespace().collect();
        if parts.len() != 3 || parts[0].len() != 64 {
            bail!("manifest line {}: expected `sha256 size path`", i + 1);
        }
        let size = if parts[1] == "-" {
            None
        } else {
            Some(
                parts[1]
                    .parse()
                    .with_context(|| format!("manifest line {}: bad size", i + 1))?,
            )
        };
        m.insert(
            parts[2].to_string(),
            Entry {
                sha256: parts[0].to_ascii_lowercase(),
                size,
            },
        );
    }
    if m.is_empty() {
        bail!("the manifest lists no files");
    }
    Ok(m)
}

fn sha256_file(p: &Path) -> Result<String> {
    let mut f = std::fs::File::open(p).with_context(|| format!("cannot open {}", p.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(format!("{:x}", h.finalize()))
}

/// What a verification found.
#[derive(Debug, Default)]
pub struct Report {
    pub ok: Vec<String>,
    pub missing: Vec<String>,
    /// (path, expected, found)
    pub wrong: Vec<(String, String, String)>,
}

/// Checks the files under `root` (the DRIVE folder) against the manifest.
pub fn verify(root: &Path, manifest: &Manifest) -> Result<Report> {
    let mut r = Report::default();
    for (path, e) in manifest {
        let p = root.join(path);
        if !p.is_file() {
            r.missing.push(path.clone());
            continue;
        }
        let got = sha256_file(&p)?;
        if got == e.sha256 {
            r.ok.push(path.clone());
        } else {
            r.wrong.push((path.clone(), e.sha256.clone(), got));
        }
    }
    Ok(r)
}
