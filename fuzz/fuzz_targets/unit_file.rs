//! Fuzz target for the unit-file parser (`flotilla_units`): any text parses without panicking, serializes back
//! byte for byte, and its normalized form keeps its meaning; `verify` never panics either.

#![no_main]

use flotilla_units::{Unit, parse, verify};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let parsed = parse("fuzz.service", text);
    assert_eq!(parsed.file.serialize(), text);
    let unit = Unit::from_file(&parsed.file);
    let normalized = unit.normalized();
    let again = Unit::from_file(&parse("fuzz.service", &normalized).file);
    assert_eq!(again.content(), unit.content());
    assert_eq!(again.normalized(), normalized);
    let _ = verify("fuzz@x.service", text, &[("fuzz@x.service.d/a.conf", text)]);
});
