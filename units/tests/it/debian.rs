//! Every unit file shipped by the Debian packages on this machine parses without error.

use flotilla_units::{Unit, UnitName, parse, verify};

#[test]
fn every_debian_unit_file_parses_and_verifies() {
    let files = crate::system_units::files();
    assert!(
        files.len() > 50,
        "expected the unit files of a Debian system, found {}",
        files.len()
    );
    let mut failures = Vec::new();
    let mut warnings: Vec<String> = Vec::new();
    let mut bytes = 0;
    for path in &files {
        let text = std::fs::read_to_string(path).expect("unit files are UTF-8");
        bytes += text.len();
        let name = path.to_str().unwrap();
        let parsed = parse(name, &text);
        assert_eq!(parsed.file.serialize(), text, "{name}: round trip");
        let unit = Unit::from_file(&parsed.file);
        let again = Unit::from_file(&parse(name, &unit.normalized()).file);
        assert_eq!(again.content(), unit.content(), "{name}: normalized form");
        let verified = verify(name, &text, &[]);
        for d in &verified.diagnostics {
            if d.is_error() {
                failures.push(d.to_string());
            } else {
                warnings.push(d.to_string());
            }
        }
        // Templates and instances have a name systemd accepts.
        let base = path.file_name().unwrap().to_str().unwrap();
        assert!(UnitName::parse(base).is_ok(), "{name}: unit name");
    }
    eprintln!(
        "parsed {} Debian unit files ({bytes} bytes), {} warnings",
        files.len(),
        warnings.len()
    );
    for w in &warnings {
        eprintln!("  {w}");
    }
    assert!(
        failures.is_empty(),
        "errors in Debian unit files:\n{}",
        failures.join("\n")
    );
}
