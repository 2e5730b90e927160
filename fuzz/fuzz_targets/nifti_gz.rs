//! A gzipped NIfTI file (`.nii.gz`). The first byte chooses between the raw
//! input as the compressed file (exercises the gzip decoder and its size
//! bound) and the rest of the input compressed here (exercises the NIfTI
//! parser behind the decoder).
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::io::Write;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let bytes = if mode & 1 == 0 {
        rest.to_vec()
    } else {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(rest).unwrap();
        e.finish().unwrap()
    };
    seg_fuzz::with_file(&bytes, "nii.gz", |p| {
        let _ = seg_data::io::nifti::read_nifti_with_info(p);
    });
});
