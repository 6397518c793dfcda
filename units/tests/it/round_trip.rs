//! Property tests: parse -> serialize is the identity for any text; the semantic view
//! survives the normalized form, and the normalized form is a fixed point.

use flotilla_units::{Unit, parse};
use proptest::prelude::*;

/// Lines that look like unit files: headers, assignments, comments, continuations, quoting,
/// odd whitespace and line terminators, and a little garbage.
fn unit_text() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("[Service]".to_owned()),
        Just("[X-Fleet]".to_owned()),
        "\\[[A-Za-z\\- \"]{0,8}\\]?",
        "[A-Za-z]{1,8} ?= ?[a-z \"'%;#\\\\]{0,12}",
        "[#;][ -~]{0,10}",
        Just("Key=a \\".to_owned()),
        Just("  continued \\\\".to_owned()),
        Just("ExecStart=/bin/echo \"x y\" 'z' \\; ;".to_owned()),
        "[ \t]{0,3}",
        "[ -~\u{e9}\u{feff}]{0,10}",
    ];
    let end = prop_oneof![Just("\n"), Just("\r\n"), Just("\r"), Just("\0"), Just("")];
    prop::collection::vec((piece, end), 0..24)
        .prop_map(|lines| lines.into_iter().map(|(l, e)| l + e).collect())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn serialize_gives_back_the_parsed_text(text in unit_text()) {
        prop_assert_eq!(parse("t.service", &text).file.serialize(), text);
    }

    #[test]
    fn serialize_gives_back_any_text(text in "\\PC{0,200}") {
        prop_assert_eq!(parse("t.service", &text).file.serialize(), text);
    }

    #[test]
    fn normalized_form_keeps_the_meaning(text in unit_text()) {
        let unit = Unit::from_file(&parse("t.service", &text).file);
        let normalized = unit.normalized();
        let parsed = parse("t.service", &normalized);
        prop_assert!(parsed.diagnostics.is_empty(), "{:?}", parsed.diagnostics);
        let again = Unit::from_file(&parsed.file);
        prop_assert_eq!(again.content(), unit.content());
        prop_assert_eq!(again.normalized(), normalized);
        prop_assert_eq!(again.content_hash(), unit.content_hash());
    }
}
