//! Fuzz target for an image's manifest, index or manifest list as the puller reads it
//! (`images/src/pull.rs` `resolve`): the JSON document, then for an index the choice of the
//! entry for this platform, for a manifest the config and layer digests.
//!
//! flotilla-images' own `manifest.rs`, `platform.rs` and `digest.rs` are compiled in here: the
//! parsers are crate-private, and depending on the crate would build its registry client too.
//! Checked: nothing panics; the entry chosen from an index scores best of all entries.

#![no_main]

#[allow(dead_code)]
#[path = "../../images/src/digest.rs"]
mod digest;
#[allow(dead_code)]
#[path = "../../images/src/manifest.rs"]
mod manifest;
#[allow(dead_code)]
#[path = "../../images/src/platform.rs"]
mod platform;

use libfuzzer_sys::fuzz_target;

use digest::Digest;
use manifest::Manifest;
use platform::Platform;

fuzz_target!(|data: &[u8]| {
    let Ok(mut doc) = serde_json::from_slice::<Manifest>(data) else {
        return;
    };
    for content_type in [
        None,
        Some(manifest::OCI_MANIFEST),
        Some(manifest::DOCKER_LIST),
    ] {
        let _ = doc.is_index(content_type);
    }
    if doc.is_index(None) {
        let entries = doc.manifests.take().unwrap_or_default();
        let platforms: Vec<_> = entries.iter().map(|d| d.platform.clone()).collect();
        let arm = Platform {
            os: "linux".into(),
            architecture: "arm".into(),
            variant: Some("v7".into()),
        };
        for wanted in [Platform::host(), arm] {
            let chosen = platform::select(&wanted, &platforms);
            let best = platforms
                .iter()
                .filter_map(|p| wanted.score(p.as_ref()?))
                .max();
            match chosen {
                Some(i) => {
                    let score = wanted.score(platforms[i].as_ref().unwrap());
                    assert_eq!(score, best, "{wanted} chose {i} of {platforms:?}");
                }
                None => assert_eq!(best, None, "{wanted} chose nothing of {platforms:?}"),
            }
            let _ = platforms.iter().flatten().map(Platform::to_string).count();
        }
    } else {
        if let Some(config) = &doc.config {
            let _ = Digest::parse(&config.digest);
        }
        for layer in &doc.layers {
            if let Ok(d) = Digest::parse(&layer.digest) {
                assert_eq!(d.as_str().len(), "sha256:".len() + d.hex().len());
            }
        }
    }
});
