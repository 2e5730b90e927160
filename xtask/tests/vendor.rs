//! `check-vendor` on a tiny fake workspace (a one-file crate, one patch) and
//! on the repository's own vendor/.

use sha2::{Digest, Sha256};
use std::fs;
use std::path::Path;
use xtask::vendor::{check, index_checksum, index_path};

const LIB: &str = "pub fn answer() -> u32 {\n    41\n}\n";
const PATCHED: &str = "pub fn answer() -> u32 {\n    42\n}\n";
const PATCH: &str = "diff --git a/src/lib.rs b/src/lib.rs
--- a/src/lib.rs
+++ b/src/lib.rs
@@ -1,3 +1,3 @@
 pub fn answer() -> u32 {
-    41
+    42
 }
";
const CARGO_TOML: &str = "[package]\nname = \"fake\"\nversion = \"0.1.0\"\n";

/// A gzipped tar of `entries` (path, contents), as `cargo package` writes.
fn crate_file(entries: &[(&str, &str)]) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    for (path, data) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        tar.append_data(&mut h, path, data.as_bytes()).unwrap();
    }
    tar.into_inner().unwrap().finish().unwrap()
}

fn write(root: &Path, rel: &str, data: impl AsRef<[u8]>) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, data).unwrap();
}

fn manifest(sha256: &str, remove: &str) -> String {
    format!(
        "[[crate]]\nname = \"fake\"\nversion = \"0.1.0\"\nsha256 = \"{sha256}\"\n\
         remove = {remove}\npatches = [\"0001-answer.patch\"]\n"
    )
}

/// A workspace whose vendor/fake is fake-0.1.0.crate without tests/ plus
/// 0001-answer.patch, used through [patch.crates-io].
fn workspace(entries: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let krate = crate_file(entries);
    let sum = format!("{:x}", Sha256::digest(&krate));
    write(root, "vendor/pristine/fake-0.1.0.crate", krate);
    write(root, "vendor/VENDOR.toml", manifest(&sum, "[\"tests\"]"));
    write(root, "vendor/patches/fake/0001-answer.patch", PATCH);
    write(
        root,
        "vendor/patches/fake/0001-answer.md",
        "# 42\n\nUpstream: none filed.\n",
    );
    write(root, "vendor/fake/Cargo.toml", CARGO_TOML);
    write(root, "vendor/fake/src/lib.rs", PATCHED);
    write(
        root,
        "Cargo.toml",
        "[patch.crates-io]\nfake = { path = \"vendor/fake\" }\n",
    );
    write(
        root,
        "Cargo.lock",
        "version = 4\n\n[[package]]\nname = \"fake\"\nversion = \"0.1.0\"\n",
    );
    dir
}

fn fake() -> tempfile::TempDir {
    workspace(&[
        ("fake-0.1.0/Cargo.toml", CARGO_TOML),
        ("fake-0.1.0/src/lib.rs", LIB),
        ("fake-0.1.0/tests/t.rs", "#[test]\nfn t() {}\n"),
    ])
}

fn error(root: &Path) -> String {
    match check(root, false) {
        Ok(lines) => panic!("check passed: {lines:?}"),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn pristine_plus_patches_passes() {
    let ws = fake();
    let lines = check(ws.path(), false).unwrap();
    assert_eq!(lines.len(), 1);
    assert!(lines[0].starts_with("fake 0.1.0:"), "{lines:?}");
}

#[test]
fn an_edited_patched_file_fails_naming_it() {
    let ws = fake();
    write(
        ws.path(),
        "vendor/fake/src/lib.rs",
        PATCHED.replace("42", "43"),
    );
    let e = error(ws.path());
    assert!(
        e.contains("vendor/fake/src/lib.rs: differs from pristine + patches (first at line 2)"),
        "{e}"
    );
}

#[test]
fn extra_and_missing_files_are_named() {
    let ws = fake();
    write(ws.path(), "vendor/fake/src/extra.rs", "");
    fs::remove_file(ws.path().join("vendor/fake/Cargo.toml")).unwrap();
    let e = error(ws.path());
    assert!(
        e.contains("vendor/fake/src/extra.rs: not in pristine + patches"),
        "{e}"
    );
    assert!(e.contains("vendor/fake/Cargo.toml: missing"), "{e}");
}

#[test]
fn a_wrong_checksum_fails() {
    let ws = fake();
    write(
        ws.path(),
        "vendor/VENDOR.toml",
        manifest(&"0".repeat(64), "[\"tests\"]"),
    );
    let e = error(ws.path());
    assert!(
        e.contains("vendor/pristine/fake-0.1.0.crate: sha256 is "),
        "{e}"
    );
    assert!(e.contains(&format!("records {}", "0".repeat(64))), "{e}");
}

#[test]
fn a_patch_that_does_not_apply_fails_naming_it() {
    let ws = fake();
    write(
        ws.path(),
        "vendor/patches/fake/0001-answer.patch",
        PATCH.replace("-    41", "-    40"),
    );
    let e = error(ws.path());
    assert!(
        e.contains("vendor/patches/fake/0001-answer.patch: does not apply"),
        "{e}"
    );
}

#[test]
fn each_patch_needs_a_readme_and_a_manifest_entry() {
    let ws = fake();
    fs::remove_file(ws.path().join("vendor/patches/fake/0001-answer.md")).unwrap();
    write(ws.path(), "vendor/patches/fake/0002-stray.patch", PATCH);
    let e = error(ws.path());
    assert!(
        e.contains("vendor/patches/fake/0001-answer.md: missing"),
        "{e}"
    );
    assert!(
        e.contains("vendor/patches/fake/0002-stray.patch: not listed"),
        "{e}"
    );
}

#[test]
fn a_remove_rule_must_match_the_crate() {
    let ws = fake();
    let sum = check_sum(ws.path());
    write(
        ws.path(),
        "vendor/VENDOR.toml",
        manifest(&sum, "[\"tests\", \"benches\"]"),
    );
    let e = error(ws.path());
    assert!(
        e.contains("`benches` (remove) is not in fake-0.1.0.crate"),
        "{e}"
    );
}

fn check_sum(root: &Path) -> String {
    let bytes = fs::read(root.join("vendor/pristine/fake-0.1.0.crate")).unwrap();
    format!("{:x}", Sha256::digest(&bytes))
}

#[test]
fn entries_outside_the_crate_folder_are_refused() {
    let ws = workspace(&[
        ("fake-0.1.0/Cargo.toml", CARGO_TOML),
        ("other/src/lib.rs", LIB),
    ]);
    let e = error(ws.path());
    assert!(
        e.contains("entry other/src/lib.rs is not under fake-0.1.0/"),
        "{e}"
    );
}

#[test]
fn the_build_must_use_the_copy_at_the_manifest_version() {
    let ws = fake();
    write(
        ws.path(),
        "Cargo.toml",
        "[patch.crates-io]\nfake = { path = \"elsewhere\" }\n",
    );
    write(
        ws.path(),
        "Cargo.lock",
        "version = 4\n\n[[package]]\nname = \"fake\"\nversion = \"0.2.0\"\n",
    );
    let e = error(ws.path());
    assert!(
        e.contains("Cargo.toml: [patch.crates-io] fake = elsewhere, not vendor/fake"),
        "{e}"
    );
    assert!(
        e.contains("Cargo.lock: fake resolves to the vendored copy at 0.2.0"),
        "{e}"
    );
}

#[test]
fn sparse_index_paths() {
    assert_eq!(index_path("candle-core"), "ca/nd/candle-core");
    assert_eq!(index_path("Dicom-Parser"), "di/co/dicom-parser");
    assert_eq!(index_path("syn"), "3/s/syn");
    assert_eq!(index_path("cc"), "2/cc");
    assert_eq!(index_path("a"), "1/a");
}

#[test]
fn the_checksum_is_read_from_the_index_line_of_the_version() {
    let body = "{\"name\":\"fake\",\"vers\":\"0.1.0\",\"cksum\":\"aa\"}\n\
                {\"name\":\"fake\",\"vers\":\"0.1.1\",\"cksum\":\"bb\"}\n";
    assert_eq!(index_checksum(body, "0.1.1").as_deref(), Some("bb"));
    assert_eq!(index_checksum(body, "0.1.0").as_deref(), Some("aa"));
    assert_eq!(index_checksum(body, "0.2.0"), None);
}

#[test]
fn the_repository_vendor_tree_is_pristine_plus_patches() {
    let root = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    let lines = check(root, false).unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(lines.len(), 2, "{lines:?}");
}

/// Needs crates.io: `cargo test -p xtask --test vendor -- --ignored`.
#[test]
#[ignore = "needs network access to index.crates.io"]
fn the_recorded_checksums_are_crates_ios() {
    let root = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    let lines = check(root, true).unwrap_or_else(|e| panic!("{e:#}"));
    assert!(
        lines.iter().all(|l| l.contains("(= crates.io index)")),
        "{lines:?}"
    );
}
