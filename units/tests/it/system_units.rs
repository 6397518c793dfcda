//! The Debian corpus: every unit file under the system's unit directories, found once for the
//! test that verifies them all (`debian.rs`) and the parsing benchmark (`benches/parse.rs`
//! includes this file by path).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Where systemd and the packages keep unit files.
pub(crate) const ROOTS: &[&str] = &["/lib/systemd", "/usr/lib/systemd", "/etc/systemd"];

/// The suffixes of unit files.
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
        // Aliases are symlinks: each file once; masks link to /dev/null.
        let Ok(real) = std::fs::canonicalize(&path) else {
            continue;
        };
        if real.is_file() && !real.starts_with("/dev") {
            out.insert(real);
        }
    }
}

/// Every unit file under [`ROOTS`], resolved and sorted, each once.
pub(crate) fn files() -> Vec<PathBuf> {
    let mut files = BTreeSet::new();
    for root in ROOTS {
        walk(Path::new(root), &mut files);
    }
    files.into_iter().collect()
}
