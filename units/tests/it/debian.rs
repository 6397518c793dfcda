//! Every unit file shipped by the Debian packages on this machine parses without error.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use flotilla_units::{Unit, UnitName, parse, verify};

const ROOTS: &[&str] = &[
    "/lib/systemd",
    "/usr/lib/systemd",
    "/etc/systemd",
    "/usr/lib/systemd/user",
];

const SUFFIXES: &[&str] = &[
    ".service",
    ".socket",
    ".target",
    ".timer",
    ".mount",
    ".path",
    ".slice",
    ".scope",
    ".device",
    ".swap",
    ".automount",
];

fn walk(dir: &Path, out: &mut BTreeSet<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(file_type) = entry.file_type() else {
            continue;
        };
        if file_type.is_dir() {
            walk(&path, out);
            continue;
        }
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if !SUFFIXES.iter().any(|s| name.ends_with(s)) {
            continue;
        }
        // Aliases are symlinks: parse each file once; masks link to /dev/null.
        let Ok(real) = std::fs::canonicalize(&path) else {
            continue;
        };
        if real.is_file() && !real.starts_with("/dev") {
            out.insert(real);
        }
    }
}

/// The Debian corpus: every unit file under the system's unit directories (also used by the
/// benchmark, which has its own copy of this walk).
pub(crate) fn corpus() -> Vec<PathBuf> {
    let mut files = BTreeSet::new();
    for root in ROOTS {
        walk(Path::new(root), &mut files);
    }
    files.into_iter().collect()
}

#[test]
fn every_debian_unit_file_parses_and_verifies() {
    let files = corpus();
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
