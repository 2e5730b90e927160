//! A DICOM file: `read_dicom` must return a volume or an error, never panic,
//! hang or allocate past the element limit.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    seg_fuzz::with_file(data, "dcm", |p| {
        let _ = seg_data::io::dicom::read_dicom(p);
    });
});
