//! A checkpoint bundle (safetensors with seg metadata) and a training-state
//! sidecar: loading must give a network or an error.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    seg_fuzz::with_file(data, "safetensors", |p| {
        let _ = seg_train::checkpoint::load_bundle(p, &seg_core::Device::Cpu);
        let _ = seg_train::checkpoint::load_state(p);
    });
});
