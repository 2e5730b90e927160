//! Shared helpers of the fuzz targets: the readers take paths, so each input
//! is written to a per-process temporary file with the extension that picks
//! the reader.

use std::path::PathBuf;

/// AddressSanitizer's defaults for every fuzz target, read by the ASan
/// runtime at start-up (a plain `cargo fuzz run T` needs no ASAN_OPTIONS).
///
/// `detect_odr_violation=1` (report same-named globals only when their sizes
/// differ; the default 2 reports every pair): OpenJPEG's C sources, which
/// the `cc` crate compiles with gcc's `-fsanitize=address` under the fuzz
/// build, hold two function-local `static const OPJ_UINT8 dec[8]` tables
/// (`ht_dec.c` lines 712 and 825). gcc registers them under the same name,
/// and LLVM's ASan runtime aborted at start-up with a false "odr-violation"
/// before running a single input. Function-local statics cannot violate the
/// one-definition rule; real violations with different sizes still abort.
#[no_mangle]
pub extern "C" fn __asan_default_options() -> *const std::ffi::c_char {
    c"detect_odr_violation=1".as_ptr()
}

/// Once per process: a 2^25-element limit (`SEG_MAX_ELEMENTS`), so that a
/// header within the limit cannot by itself exceed libFuzzer's memory limit
/// (the default 2^31 is for real machines), and a panic hook that reports
/// without aborting. libfuzzer-sys's own hook aborts on every panic, even
/// one that seg catches on purpose (a third-party decoder that panics on
/// corrupt data is turned into a decode error); [`with_file`] aborts instead
/// when a panic escapes the reader, which is what counts as a crash.
fn init() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        std::env::set_var("SEG_MAX_ELEMENTS", (1u64 << 25).to_string());
        std::panic::set_hook(Box::new(|info| eprintln!("panic (caught?): {info}")));
    });
}

/// Writes `data` to a temporary file named `input.<ext>` in this process's
/// own folder and runs `f` on its path; a panic escaping `f` aborts (a crash).
pub fn with_file<R>(data: &[u8], ext: &str, f: impl FnOnce(&std::path::Path) -> R) -> R {
    init();
    let dir = scratch_dir();
    let path = dir.join(format!("input.{ext}"));
    std::fs::write(&path, data).expect("write the fuzz input");
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&path))) {
        Ok(r) => r,
        Err(_) => {
            eprintln!("a panic escaped the reader");
            std::process::abort()
        }
    }
}

/// A folder for this process (under the system temp dir), created once.
pub fn scratch_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("seg-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create the scratch folder");
    dir
}
