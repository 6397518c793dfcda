//! Fuzz target for an image's config blob (`ImageConfig::parse`, flotilla-images'
//! `manifest.rs` compiled in as in `image_manifest.rs`): what a unit with `Image=` runs.
//!
//! Checked: nothing panics; a parsed config round-trips through its own serde form.

#![no_main]

#[allow(dead_code)]
#[path = "../../images/src/manifest.rs"]
mod manifest;
#[allow(dead_code)]
#[path = "../../images/src/platform.rs"]
mod platform;

use libfuzzer_sys::fuzz_target;

use manifest::ImageConfig;

fuzz_target!(|data: &[u8]| {
    let Ok(config) = ImageConfig::parse(data) else {
        return;
    };
    let command = config.command();
    assert_eq!(command.len(), config.entrypoint.len() + config.cmd.len());
    let stored = serde_json::to_vec(&config).unwrap();
    let again: ImageConfig = serde_json::from_slice(&stored).unwrap();
    assert_eq!(again, config);
});
