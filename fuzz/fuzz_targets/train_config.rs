//! A training config (TOML, as `seg-cli train --config`): parsing and
//! validation must give a config or an error.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(cfg) = toml::from_str::<seg_train::trainer::TrainConfig>(text) {
        let _ = cfg.validate();
    }
});
