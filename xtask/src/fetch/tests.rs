//! Tests of fetch-drive: installs from a zip, a folder and a local HTTP
//! server (with a dropped connection), tampering, zip-slip, the shipped
//! manifest and, when `shared/` holds it, the real archive.

use super::*;
use sha2::{Digest, Sha256};
use std::io::{BufRead, Write};
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
            let _ = writeln!(
                f,
                "SKIP: ../shared/datasets/DRIVE-training.zip not found; real archive not installed"
            );
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
