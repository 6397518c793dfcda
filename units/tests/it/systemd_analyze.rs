//! flotilla and the real `systemd-analyze verify` agree on which files are malformed.
//!
//! Every unit file under `tests/corpus/systemd/` is given to `systemd-analyze verify
//! --man=no` (systemd 252; it needs no running systemd, only the unit files of the default
//! dependencies under /usr/lib/systemd/system and the executables named in `ExecStart=`,
//! which these files take from coreutils; a socket, timer or path unit finds its service next
//! to it, in the same directory). A file is malformed for systemd when the command
//! exits non-zero, for flotilla when `verify` reports an error. (`--recursive-errors=` must
//! not be given: with it, systemd 252 also fails on warnings.)

use std::path::PathBuf;
use std::process::Command;

use flotilla_units::verify;

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/systemd")
}

#[test]
fn malformed_files_agree_with_systemd_analyze() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(corpus_dir())
        .expect("tests/corpus/systemd exists")
        .map(|e| e.expect("directory entry").path())
        .filter(|p| {
            p.extension().is_some_and(|e| {
                ["service", "socket", "timer", "path", "mount"].contains(&e.to_str().unwrap())
            })
        })
        .collect();
    files.sort();
    assert!(files.len() >= 40, "the corpus is missing files");
    let mut disagreements = Vec::new();
    let mut malformed = 0;
    for path in &files {
        let output = Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(path)
            .env("SYSTEMD_LOG_COLOR", "0")
            .output()
            .expect("systemd-analyze runs (Debian package systemd)");
        let systemd_says = !output.status.success();
        let text = std::fs::read_to_string(path).unwrap();
        let verified = verify(path.to_str().unwrap(), &text, &[]);
        let flotilla_says = verified.has_errors();
        malformed += usize::from(systemd_says);
        if systemd_says != flotilla_says {
            disagreements.push(format!(
                "{}: systemd-analyze says malformed={systemd_says}, flotilla says malformed={flotilla_says}\n  systemd: {}\n  flotilla: {:?}",
                path.display(),
                String::from_utf8_lossy(&output.stderr).trim(),
                verified.diagnostics.iter().map(|d| d.to_string()).collect::<Vec<_>>()
            ));
        }
    }
    assert!(
        malformed >= 15,
        "the corpus should hold many malformed files, systemd found {malformed}"
    );
    assert!(
        disagreements.is_empty(),
        "{} of {} files disagree:\n{}",
        disagreements.len(),
        files.len(),
        disagreements.join("\n")
    );
}
