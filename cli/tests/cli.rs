//! flotctl's output, from the built binary: `verify`, `cat`, help, completions and man page.

use std::path::Path;
use std::process::Command;

fn flotctl(args: &[&str]) -> (i32, String, String) {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let out = Command::new(env!("CARGO_BIN_EXE_flotctl"))
        .args(args)
        .current_dir(data)
        .env_remove("FLOTCTL_ENDPOINT")
        .env("COLUMNS", "100")
        .output()
        .expect("flotctl runs");
    (
        out.status.code().expect("flotctl exited"),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn verify_reports_every_problem() {
    let (code, stdout, stderr) = flotctl(&["verify", "broken.service", "hello.service"]);
    assert_eq!(code, 1);
    assert_eq!(stderr, "");
    insta::assert_snapshot!(stdout);
}

#[test]
fn verify_good_file_is_silent() {
    let (code, stdout, stderr) = flotctl(&["verify", "hello.service"]);
    assert_eq!((code, stdout.as_str(), stderr.as_str()), (0, "", ""));
}

#[test]
fn verify_json() {
    let (code, stdout, _) = flotctl(&["--output", "json", "verify", "broken.service"]);
    assert_eq!(code, 1);
    insta::assert_snapshot!(stdout);
}

#[test]
fn verify_missing_file() {
    let (code, stdout, _) = flotctl(&["verify", "missing.service"]);
    assert_eq!(code, 1);
    assert!(
        stdout.starts_with("missing.service:0:0: cannot read missing.service"),
        "{stdout}"
    );
}

#[test]
fn cat_normalizes_with_dropins() {
    let (code, stdout, stderr) = flotctl(&["cat", "hello.service"]);
    assert_eq!((code, stderr.as_str()), (0, ""));
    insta::assert_snapshot!(stdout);
    let (_, without, _) = flotctl(&["cat", "--no-dropins", "hello.service"]);
    assert!(!without.contains("on-failure"));
    let (_, hash, _) = flotctl(&["cat", "--hash", "hello.service"]);
    assert_eq!(hash.trim().len(), 64);
}

#[test]
fn cat_json() {
    let (code, stdout, _) = flotctl(&["cat", "--output=json", "--no-dropins", "hello.service"]);
    assert_eq!(code, 0);
    insta::assert_snapshot!(stdout);
}

#[test]
fn help_lists_commands_and_examples() {
    let (code, stdout, _) = flotctl(&["--help"]);
    assert_eq!(code, 0);
    insta::assert_snapshot!(stdout);
}

#[test]
fn completions_and_man_page() {
    let (code, bash, _) = flotctl(&["completions", "bash"]);
    assert_eq!(code, 0);
    assert!(
        bash.contains("complete -F _flotctl") && bash.contains("verify"),
        "{bash}"
    );
    let (code, man, _) = flotctl(&["man"]);
    assert_eq!(code, 0);
    assert!(
        man.contains(".TH flotctl 1") && man.contains("verify"),
        "{man}"
    );
    let dir = tempfile::tempdir().unwrap();
    let (code, _, stderr) = flotctl(&["man", "--dir", dir.path().to_str().unwrap()]);
    assert_eq!((code, stderr.as_str()), (0, ""));
    for page in ["flotctl.1", "flotctl-verify.1", "flotctl-cat.1"] {
        assert!(dir.path().join(page).is_file(), "{page}");
    }
}
