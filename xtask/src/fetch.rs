//! `cargo xtask fetch-drive`: installs and verifies the DRIVE dataset from a
//! zip in the official layout, an unpacked folder, or a URL (HTTP(S), with
//! retries and resumption of a partial download by Range requests). Every
//! file is checked against `datasets/DRIVE.manifest`; files are unpacked into
//! a temporary folder that is renamed into place only when all are good, so a
//! failure leaves nothing half-installed. Zip entries that would land outside
//! the destination are refused, and no entry may be larger than the manifest
//! says (decompression bombs).

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};

/// One manifest line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub sha256: String,
    pub size: Option<u64>,
}

/// Path (relative to DRIVE/) → entry.
pub type Manifest = BTreeMap<String, Entry>;

pub const LICENCE: &str = "DRIVE (Digital Retinal Images for Vessel Extraction), J. Staal, M. D. Abramoff, M. Niemeijer, M. A. Viergever, B. van Ginneken, \"Ridge-based vessel segmentation in color images of the retina\", IEEE TMI 23(4):501-509, 2004; Image Sciences Institute, University Medical Center Utrecht. Free for research and education; it may not be redistributed. Obtain it from its authors (the DRIVE challenge site) or a copy you trust, then run:\n  cargo xtask fetch-drive --from path/to/DRIVE.zip        (or an unpacked DRIVE folder)\n  cargo xtask fetch-drive --url https://.../DRIVE.zip";

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

/// Downloads `url` to `part` (resuming it with a Range request when it
/// exists), retrying up to `retries` times.
pub fn download(url: &str, part: &Path, retries: usize) -> Result<()> {
    let mut last_err = None;
    for attempt in 0..=retries {
        let have = std::fs::metadata(part).map(|m| m.len()).unwrap_or(0);
        let mut req = ureq::get(url);
        if have > 0 {
            req = req.set("Range", &format!("bytes={have}-"));
        }
        let resp = match req.call() {
            Ok(r) => r,
            Err(ureq::Error::Status(416, _)) if have > 0 => return Ok(()), // already complete
            Err(e) => {
                last_err = Some(anyhow::anyhow!("{url}: {e}"));
                std::thread::sleep(std::time::Duration::from_millis(200 * (attempt as u64 + 1)));
                continue;
            }
        };
        let resumed = resp.status() == 206;
        let total: Option<u64> = resp
            .header("Content-Length")
            .and_then(|v| v.parse().ok())
            .map(|n: u64| if resumed { n + have } else { n });
        let mut file = if resumed {
            std::fs::OpenOptions::new().append(true).open(part)?
        } else {
            std::fs::File::create(part)?
        };
        let bar = indicatif::ProgressBar::new(total.unwrap_or(0));
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "download [{bar:30}] {bytes}/{total_bytes} ({eta})",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar.set_position(if resumed { have } else { 0 });
        let mut reader = resp.into_reader();
        let mut buf = vec![0u8; 1 << 16];
        let outcome: std::io::Result<()> = loop {
            match reader.read(&mut buf) {
                Ok(0) => break Ok(()),
                Ok(n) => {
                    if let Err(e) = file.write_all(&buf[..n]) {
                        break Err(e);
                    }
                    bar.inc(n as u64);
                }
                Err(e) => break Err(e),
            }
        };
        bar.finish_and_clear();
        file.sync_all()?;
        let now = std::fs::metadata(part)?.len();
        match (outcome, total) {
            (Ok(()), Some(t)) if now == t => return Ok(()),
            (Ok(()), None) => return Ok(()),
            (res, _) => {
                last_err = Some(anyhow::anyhow!(
                    "{url}: connection ended after {now} bytes{}",
                    res.err().map(|e| format!(" ({e})")).unwrap_or_default()
                ));
                eprintln!(
                    "download interrupted at {now} bytes; resuming (attempt {} of {})",
                    attempt + 1,
                    retries
                );
            }
        }
    }
    Err(last_err.unwrap_or_else(|| anyhow::anyhow!("{url}: download failed")))
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufRead;
    use std::net::TcpListener;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("xtask-fetch-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn hash(b: &[u8]) -> String {
        format!("{:x}", Sha256::digest(b))
    }

    /// A small archive in the official layout and its manifest (one listed
    /// file is absent, like DRIVE's withheld test labels).
    fn archive(dir: &Path, tamper: bool, evil: bool) -> (PathBuf, Manifest) {
        let files: Vec<(&str, Vec<u8>)> = vec![
            (
                "training/images/21_training.tif",
                (0..5000u32).map(|i| (i * 7 % 251) as u8).collect(),
            ),
            (
                "training/1st_manual/21_manual1.gif",
                b"GIF89a-label".to_vec(),
            ),
            ("training/mask/21_training_mask.gif", vec![255u8; 3000]),
        ];
        let mut m = Manifest::new();
        for (p, b) in &files {
            m.insert(
                p.to_string(),
                Entry {
                    sha256: hash(b),
                    size: Some(b.len() as u64),
                },
            );
        }
        m.insert(
            "test/1st_manual/01_manual1.gif".into(),
            Entry {
                sha256: "0".repeat(64),
                size: None,
            },
        );
        let path = dir.join("DRIVE.zip");
        let mut z = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        for (p, b) in &files {
            z.start_file(format!("DRIVE/{p}"), opts).unwrap();
            let mut data = b.clone();
            if tamper && p.ends_with("mask.gif") {
                data[100] ^= 1;
            }
            z.write_all(&data).unwrap();
        }
        if evil {
            z.start_file("../evil.txt", opts).unwrap();
            z.write_all(b"x").unwrap();
        }
        z.finish().unwrap();
        (path, m)
    }

    /// Serves `body` on 127.0.0.1 for at most `max_conn` connections,
    /// honouring `Range: bytes=N-`; with `drop_first` the first response is
    /// cut off half-way.
    fn serve(body: Vec<u8>, max_conn: usize, drop_first: bool) -> (String, Arc<AtomicUsize>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/DRIVE.zip", l.local_addr().unwrap());
        let ranged = Arc::new(AtomicUsize::new(0));
        let r2 = ranged.clone();
        std::thread::spawn(move || {
            for (k, stream) in l.incoming().take(max_conn).enumerate() {
                let Ok(mut s) = stream else { continue };
                s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
                    .ok();
                let mut reader = std::io::BufReader::new(s.try_clone().unwrap());
                let mut start = 0usize;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("range: bytes=") {
                        start = v.trim().trim_end_matches('-').parse().unwrap_or(0);
                        r2.fetch_add(1, Ordering::SeqCst);
                    }
                }
                let rest = &body[start.min(body.len())..];
                let head = if start > 0 {
                    format!("HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {}-{}/{}\r\nConnection: close\r\n\r\n", rest.len(), start, body.len() - 1, body.len())
                } else {
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        rest.len()
                    )
                };
                let _ = s.write_all(head.as_bytes());
                let send = if drop_first && k == 0 {
                    &rest[..rest.len() / 2]
                } else {
                    rest
                };
                let _ = s.write_all(send);
                let _ = s.flush();
            }
        });
        (url, ranged)
    }

    #[test]
    fn good_download_installs_and_a_second_run_says_verified() {
        let d = tmp("good");
        let (zip_path, m) = archive(&d, false, false);
        let (url, _) = serve(std::fs::read(&zip_path).unwrap(), 4, false);
        let part = d.join("dl.part");
        download(&url, &part, 2).unwrap();
        let dest = d.join("DRIVE");
        let msg = install(&part, &dest, &m).unwrap();
        assert!(msg.contains("installed 3 verified files"), "{msg}");
        assert!(
            msg.contains("1 file(s) missing (1 of them test annotations"),
            "{msg}"
        );
        assert!(dest.join("training/images/21_training.tif").is_file());
        let again = install(&part, &dest, &m).unwrap();
        assert!(again.contains("already present and verified"), "{again}");
    }

    #[test]
    fn a_corrupted_byte_installs_nothing_and_names_both_hashes() {
        let d = tmp("bad");
        let (zip_path, m) = archive(&d, true, false);
        let (url, _) = serve(std::fs::read(&zip_path).unwrap(), 2, false);
        let part = d.join("dl.part");
        download(&url, &part, 1).unwrap();
        let dest = d.join("DRIVE");
        let err = install(&part, &dest, &m).unwrap_err().to_string();
        let want = &m["training/mask/21_training_mask.gif"].sha256;
        assert!(
            err.contains("21_training_mask.gif")
                && err.contains(want.as_str())
                && err.contains("nothing installed"),
            "{err}"
        );
        assert!(!dest.exists());
        assert!(std::fs::read_dir(&d).unwrap().all(|e| !e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .contains(".tmp-")));
    }

    #[test]
    fn a_dropped_connection_is_resumed_with_a_range_request() {
        let d = tmp("drop");
        let (zip_path, m) = archive(&d, false, false);
        let body = std::fs::read(&zip_path).unwrap();
        let (url, ranged) = serve(body.clone(), 4, true);
        let part = d.join("dl.part");
        download(&url, &part, 3).unwrap();
        assert!(
            ranged.load(Ordering::SeqCst) >= 1,
            "no Range request was made"
        );
        assert_eq!(std::fs::read(&part).unwrap(), body);
        install(&part, &d.join("DRIVE"), &m).unwrap();
    }

    #[test]
    fn zip_slip_is_refused_and_folders_install_too() {
        let d = tmp("slip");
        let (zip_path, m) = archive(&d, false, true);
        let err = install(&zip_path, &d.join("DRIVE"), &m)
            .unwrap_err()
            .to_string();
        assert!(err.contains("outside the destination"), "{err}");
        assert!(!d.join("evil.txt").exists() && !d.join("DRIVE").exists());
        // from an unpacked folder
        let (good, m) = archive(&tmp("slip2"), false, false);
        let unpacked = d.join("unpacked");
        unpack_zip(&good, &m, &unpacked).unwrap();
        let msg = install(&unpacked, &d.join("DRIVE2"), &m).unwrap();
        assert!(msg.contains("installed 3"), "{msg}");
    }

    #[test]
    fn the_shipped_manifest_lists_all_140_files() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../datasets/DRIVE.manifest"
        ))
        .unwrap();
        let m = parse_manifest(&text).unwrap();
        assert_eq!(m.len(), 140);
        assert_eq!(m.values().filter(|e| e.size.is_none()).count(), 40);
        assert!(parse_manifest("abc 1 x").is_err());
    }

    #[test]
    fn the_real_drive_archive_installs_when_shared_is_present() {
        let zip = PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../shared/datasets/DRIVE-training.zip"
        ));
        if !zip.is_file() {
            if let Ok(mut f) = std::fs::OpenOptions::new().write(true).open("/dev/stderr") {
                let _ = writeln!(f, "SKIP: ../shared/datasets/DRIVE-training.zip not found; real archive not installed");
            }
            return;
        }
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../datasets/DRIVE.manifest"
        ))
        .unwrap();
        let m = parse_manifest(&text).unwrap();
        let d = tmp("real");
        let msg = install(&zip, &d.join("DRIVE"), &m).unwrap();
        assert!(
            msg.contains("installed 100 verified files")
                && msg.contains("40 file(s) missing (40 of them test annotations"),
            "{msg}"
        );
        std::fs::remove_dir_all(&d).unwrap();
    }
}
