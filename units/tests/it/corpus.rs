//! Snapshot tests over `tests/corpus/`: for every unit file, its diagnostics, its normalized
//! form and content hash, and its typed `[X-Fleet]` / `[X-Flotilla]` options; drop-ins are
//! snapshot merged into the unit they apply to.

use std::fmt::Write as _;
use std::path::Path;

use flotilla_units::{Unit, parse, verify};

fn report(name: &str, text: &str, dropins: &[(&str, &str)]) -> String {
    let verified = verify(name, text, dropins);
    let mut out = String::new();
    writeln!(out, "== diagnostics").unwrap();
    for d in &verified.diagnostics {
        writeln!(out, "{d}").unwrap();
    }
    writeln!(
        out,
        "== normalized (sha256 {})",
        verified.unit.content_hash()
    )
    .unwrap();
    out.push_str(&verified.unit.normalized());
    writeln!(out, "== fleet\n{:#?}", verified.fleet).unwrap();
    writeln!(out, "== flotilla\n{:#?}", verified.flotilla).unwrap();
    out
}

fn snapshot_dir(dir: &str) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    let mut files: Vec<_> = std::fs::read_dir(root.join(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(!files.is_empty());
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        let rel = path
            .strip_prefix(&root)
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned();
        // The lossless layer gives back every byte.
        assert_eq!(parse(&rel, &text).file.serialize(), text, "{rel}");
        let name = rel.replace('/', "__");
        insta::assert_snapshot!(name, report(&rel, &text, &[]));
    }
}

#[test]
fn systemd_corpus() {
    snapshot_dir("corpus/systemd");
}

#[test]
fn fleet_corpus() {
    snapshot_dir("corpus/fleet");
}

#[test]
fn dropin_merged() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/fleet");
    let main = std::fs::read_to_string(root.join("global-false.service")).unwrap();
    let dropin = std::fs::read_to_string(root.join("override.conf")).unwrap();
    insta::assert_snapshot!(report(
        "global-false.service",
        &main,
        &[("global-false.service.d/override.conf", &dropin)]
    ));
}

#[test]
fn normalized_form_of_continuations() {
    let text = "[Service]\nExecStart=/bin/echo a \\\n  # a comment inside the continuation\n; a comment\n  b\\\\\nEnvironment=X=1\\ \n";
    let unit = Unit::from_file(&parse("x.service", text).file);
    insta::assert_snapshot!(unit.normalized());
}
