//! Unit-name escaping agrees with the real `systemd-escape`.

use std::process::Command;

use flotilla_units::name::{escape, escape_path, unescape};

fn systemd_escape(args: &[&str]) -> String {
    let out = Command::new("systemd-escape")
        .args(args)
        .output()
        .expect("systemd-escape runs (Debian package systemd)");
    assert!(out.status.success(), "systemd-escape {args:?}");
    String::from_utf8(out.stdout).unwrap().trim_end().to_owned()
}

#[test]
fn escape_agrees_with_systemd_escape() {
    let inputs = [
        "hello",
        "foo/bar baz",
        ".hidden",
        "a-b_c:d.e",
        "ünïcode",
        "tab\there",
        "x\\y",
        "@at",
        "100%",
    ];
    for input in inputs {
        let ours = escape(input);
        assert_eq!(ours, systemd_escape(&["--", input]), "escape {input:?}");
        assert_eq!(unescape(&ours), input, "unescape {ours:?}");
        assert_eq!(
            systemd_escape(&["--unescape", "--", &ours]),
            input,
            "systemd-escape -u {ours:?}"
        );
    }
    for path in ["/", "/dev/sda1", "//var//lib/", "/mnt/my disk", "/a/./b"] {
        assert_eq!(
            escape_path(path),
            systemd_escape(&["--path", "--", path]),
            "escape_path {path:?}"
        );
    }
}
