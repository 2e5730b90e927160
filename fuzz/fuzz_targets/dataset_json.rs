//! An MSD/nnU-Net `dataset.json` (issue 15's dataset specs): reading it must
//! give the typed description or an error naming the file, never a panic —
//! through the file reader (as `DatasetSpec::detect` uses it) and the
//! accessors every caller uses.
#![no_main]
use libfuzzer_sys::fuzz_target;
use seg_data::dataset_json::DatasetJson;

fuzz_target!(|data: &[u8]| {
    seg_fuzz::with_file(data, "json", |p| {
        if let Ok(d) = DatasetJson::read(p) {
            let _ = d.label_names();
            let _ = d.label_values();
        }
    });
});
