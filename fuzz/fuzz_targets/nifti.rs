//! A plain NIfTI-1 file (`.nii`).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    seg_fuzz::with_file(data, "nii", |p| {
        let _ = seg_data::io::nifti::read_nifti_with_info(p);
    });
});
