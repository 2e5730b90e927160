//! The zip reader of `cargo xtask fetch-drive`: unpacking must refuse
//! zip-slip paths and inflation past the manifest's sizes, and write nothing
//! outside its destination.
#![no_main]
use libfuzzer_sys::fuzz_target;

const MANIFEST: &str = "\
4b227777d4dd1fc61c6f884f48641d02b4d121d3fd328cb08b5531fcacdabf8a 8 training/images/21_training.tif
ef2d127de37b942baad06145e54b0c619a1f22327b2ebbcfbec78f5564afe39d 1048576 training/1st_manual/21_manual1.gif
";

fuzz_target!(|data: &[u8]| {
    let manifest = xtask::fetch::parse_manifest(MANIFEST).expect("valid manifest");
    let root = seg_fuzz::scratch_dir();
    let into = root.join("dest");
    let _ = std::fs::remove_dir_all(&into);
    std::fs::create_dir_all(&into).unwrap();
    seg_fuzz::with_file(data, "zip", |p| {
        let _ = xtask::fetch::unpack_zip(p, &manifest, &into);
    });
    // nothing may appear beside the destination
    for e in std::fs::read_dir(&root).unwrap().flatten() {
        let name = e.file_name();
        assert!(
            name == "dest" || name == "input.zip",
            "unpack_zip wrote outside its destination: {name:?}"
        );
    }
});
