//! A 2D image: the first byte picks the extension (PNG, TIFF, GIF, JPEG);
//! both the image reader and the mask reader must answer with a value or an
//! error.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let ext = ["png", "tif", "gif", "jpg"][pick as usize % 4];
    seg_fuzz::with_file(rest, ext, |p| {
        let _ = seg_data::io::image2d::read_image(p);
        let _ = seg_data::io::image2d::read_mask(p);
    });
});
