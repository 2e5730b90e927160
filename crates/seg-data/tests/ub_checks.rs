//! Every real DICOM and NIfTI file in ../shared/medical and the
//! TotalSegmentator CT series (JPEG 2000) decoded with undefined-behaviour
//! checks active (issue 21).
//!
//! Two layers of checks:
//! - the standard library's own precondition checks (`ub_checks`), which
//!   follow `debug-assertions`: the test profile (it inherits `dev`) keeps
//!   them on for every crate, dependencies included — the workspace's
//!   `[profile.dev.package."*"]` raises only their `opt-level`. The test
//!   asserts they are on, so a profile change cannot silently disable it;
//! - this binary's global allocator, which checks the `GlobalAlloc`
//!   contract on every call from any crate: no zero-size allocation, no
//!   `dealloc`/`realloc` of a null pointer, no layout with a
//!   non-power-of-two alignment. The std checks depend on the toolchain
//!   (the `dealloc(null)` in openjp2 0.6.1's `opj_tcd_code_block_dec_deallocate`
//!   panicked on a 2026 nightly but not on stable 1.95); the allocator
//!   check sees the same violation on every toolchain.
//!
//! A violation is recorded (never panics inside the allocator) and the
//! test fails naming the file that caused it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// Counts of contract violations, by kind.
static ZERO_SIZE_ALLOC: AtomicUsize = AtomicUsize::new(0);
static NULL_DEALLOC: AtomicUsize = AtomicUsize::new(0);
static NULL_REALLOC: AtomicUsize = AtomicUsize::new(0);
static BAD_ALIGN: AtomicUsize = AtomicUsize::new(0);
/// The largest single allocation asked for since the last reset.
static LARGEST: AtomicUsize = AtomicUsize::new(0);

struct Checked;

fn check_layout(l: &Layout) {
    LARGEST.fetch_max(l.size(), Ordering::Relaxed);
    if l.size() == 0 {
        ZERO_SIZE_ALLOC.fetch_add(1, Ordering::Relaxed);
    }
    if !l.align().is_power_of_two() {
        BAD_ALIGN.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: forwards to `System` unchanged; a call that breaks the contract
// is counted, and forwarded only where `System` tolerates it (free(NULL) is
// a no-op), so the test reports the violation instead of crashing.
unsafe impl GlobalAlloc for Checked {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        check_layout(&l);
        // SAFETY: same contract as ours.
        unsafe { System.alloc(l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        check_layout(&l);
        // SAFETY: same contract as ours.
        unsafe { System.alloc_zeroed(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        if p.is_null() {
            NULL_DEALLOC.fetch_add(1, Ordering::Relaxed);
            return;
        }
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        if p.is_null() {
            NULL_REALLOC.fetch_add(1, Ordering::Relaxed);
        }
        if new == 0 {
            ZERO_SIZE_ALLOC.fetch_add(1, Ordering::Relaxed);
        }
        LARGEST.fetch_max(new, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static GLOBAL: Checked = Checked;

fn counts() -> [usize; 4] {
    [
        ZERO_SIZE_ALLOC.load(Ordering::Relaxed),
        NULL_DEALLOC.load(Ordering::Relaxed),
        NULL_REALLOC.load(Ordering::Relaxed),
        BAD_ALIGN.load(Ordering::Relaxed),
    ]
}

/// The decoders run in parallel (rayon): files are read one at a time under
/// this lock so that a violation is charged to the right file.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn shared() -> Option<PathBuf> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared");
    p.is_dir().then_some(p)
}

fn skip(msg: &str) {
    use std::io::Write;
    if let Ok(mut f) = std::fs::OpenOptions::new().write(true).open("/dev/stderr") {
        let _ = writeln!(f, "{msg}");
    }
}

/// Decodes `path` with `read` and returns the violations it caused, as
/// "kind: count" strings (empty when clean). A decode error is fine (the
/// bad_* files must fail cleanly); a panic is not and propagates.
fn violations<T, E>(path: &Path, read: impl FnOnce(&Path) -> Result<T, E>) -> Vec<String> {
    let _g = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let before = counts();
    let _ = read(path);
    let after = counts();
    let names = [
        "zero-size allocation",
        "dealloc of a null pointer",
        "realloc of a null pointer",
        "non-power-of-two alignment",
    ];
    (0..4)
        .filter(|&i| after[i] != before[i])
        .map(|i| format!("{}: {}", names[i], after[i] - before[i]))
        .collect()
}

fn files_in(dir: &Path, keep: impl Fn(&str) -> bool) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && keep(&p.file_name().unwrap().to_string_lossy()))
        .collect();
    v.sort();
    v
}

#[test]
// the constant is the point: it is fixed by the profile this test was built with
#[allow(clippy::assertions_on_constants)]
fn std_ub_checks_are_on_in_this_build() {
    // The test profile must keep debug assertions (and with them the
    // standard library's precondition checks) on; if someone turns them off
    // for speed, the decode test below loses half of its meaning.
    assert!(
        cfg!(debug_assertions),
        "debug-assertions are off in the test profile: std's UB checks do not run"
    );
}

#[test]
fn every_real_dicom_and_nifti_decodes_without_ub() {
    let Some(shared) = shared() else {
        skip("SKIP: ../shared not found; UB-check decode test not run");
        return;
    };
    let mut found: Vec<String> = Vec::new();
    let mut checked = 0usize;

    let medical = shared.join("medical");
    if medical.is_dir() {
        for p in files_in(&medical.join("dicom"), |n| n.ends_with(".dcm")) {
            for v in violations(&p, seg_data::io::dicom::read_dicom) {
                found.push(format!("{}: {v}", p.display()));
            }
            checked += 1;
        }
        for p in files_in(&medical.join("nifti"), |n| {
            n.ends_with(".nii") || n.ends_with(".nii.gz")
        }) {
            for v in violations(&p, seg_data::io::nifti::read_nifti) {
                found.push(format!("{}: {v}", p.display()));
            }
            checked += 1;
        }
    } else {
        skip("SKIP: ../shared/medical not found; its files not checked");
    }

    let series = shared.join("datasets/TotalSegmentator-example/example_ct_dicom");
    if series.is_dir() {
        // Each slice on its own (the JPEG 2000 decode), then the series.
        for p in files_in(&series, |_| true) {
            for v in violations(&p, seg_data::io::dicom::read_dicom) {
                found.push(format!("{}: {v}", p.display()));
            }
            checked += 1;
        }
        let read = |d: &Path| seg_data::io::dicom::read_series(d, None);
        for v in violations(&series, read) {
            found.push(format!("{} (series): {v}", series.display()));
        }
        checked += 1;
    } else {
        skip("SKIP: ../shared/datasets/TotalSegmentator-example not found; CT series not checked");
    }

    assert!(
        found.is_empty(),
        "undefined behaviour while decoding ({} of {checked} reads):\n{}",
        found.len(),
        found.join("\n")
    );
}

/// Fuzzing finding of 2026-12-03 (docs/reliability.md): an encapsulated
/// pixel data element whose Basic Offset Table item declares nearly 4 GiB
/// made dicom-parser reserve 4 × that (it reserved `len` u32 entries for
/// `len` bytes) and zero-fill a quarter of it before its read failed — the
/// `dicom` fuzz target's out-of-memory (malloc of 7.45 GB from a 3.5 KB
/// input). Vendored dicom-parser patch 0002 bounds those reservations by
/// the file's size; the read must fail cleanly without any large allocation.
#[test]
fn an_offset_table_claiming_gigabytes_is_refused_before_allocation() {
    let Some(shared) = shared() else {
        skip("SKIP: ../shared not found; offset-table regression test not run");
        return;
    };
    let src = shared.join("medical/dicom/SC_rgb_jpeg_dcmtk.dcm");
    let mut bytes = std::fs::read(&src).expect("read SC_rgb_jpeg_dcmtk.dcm");
    // (7FE0,0010) OB, 2 reserved bytes, undefined length, then the first
    // item (FFFE,E000) — the offset table — and its 4-byte length.
    let head = [
        0xE0, 0x7F, 0x10, 0x00, b'O', b'B', 0, 0, 0xFF, 0xFF, 0xFF, 0xFF,
    ];
    let at = bytes
        .windows(head.len())
        .position(|w| w == head)
        .expect("encapsulated pixel data in SC_rgb_jpeg_dcmtk.dcm");
    let item = at + head.len();
    assert_eq!(&bytes[item..item + 4], &[0xFE, 0xFF, 0x00, 0xE0]);
    bytes[item + 4..item + 8].copy_from_slice(&0xFFFF_FFF0u32.to_le_bytes());
    let dir = std::env::temp_dir().join(format!("seg-ub-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("offset_table_4gib.dcm");
    std::fs::write(&path, &bytes).unwrap();

    let _g = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    LARGEST.store(0, Ordering::Relaxed);
    let res = seg_data::io::dicom::read_dicom(&path);
    let largest = LARGEST.load(Ordering::Relaxed);
    let _ = std::fs::remove_dir_all(&dir);
    let err = res.expect_err("a 4 GiB offset table in a small file must not decode");
    assert!(
        err.to_string().contains("offset_table_4gib.dcm"),
        "the error names the file: {err}"
    );
    assert!(
        largest < 64 << 20,
        "largest single allocation {largest} bytes (file of {} bytes)",
        bytes.len()
    );
}
