//! The packages `packaging/build` makes: their contents and metadata (`dpkg-deb`, `lintian`,
//! `rpm -qp`), the unit checked by `systemd-analyze`, and the packaged unit running a
//! three-machine cluster on the testbed: READY and STATUS in `systemctl status`, structured
//! journal entries, and the watchdog restarting an agent that stopped (SIGSTOP).
//!
//! The testbed's machines share the host's root file system, so the .deb is never installed
//! with `dpkg -i` (that would install it on the host): it is unpacked with `dpkg -x` into a
//! directory of this test, and each machine's systemd runs the packaged unit file as it is,
//! from its own `/run/systemd/system`, with one drop-in that points `ExecStart=` at the unpacked
//! binary (what `systemctl edit` would write).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::Duration;

use flotilla_tests::registry::Scratch;
use flotilla_tests::testbed::{Node, Options, Testbed, wait_for};

const UNIT: &str = "flotillad.service";
/// `WatchdogSec=` of the packaged unit is 10 s; a restart takes that, the abort and
/// `RestartSec=`.
const WATCHDOG_DEADLINE: Duration = Duration::from_secs(60);
const DEADLINE: Duration = Duration::from_secs(45);

/// The .deb and .rpm, built once per test process from the binaries the test run uses.
struct Packages {
    deb: PathBuf,
    rpm: PathBuf,
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is in the workspace")
        .to_path_buf()
}

fn packages() -> &'static Packages {
    static PACKAGES: OnceLock<Packages> = OnceLock::new();
    PACKAGES.get_or_init(|| {
        let bindir = Options::default_agent()
            .parent()
            .expect("the agent binary is in a directory")
            .to_path_buf();
        let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
        remove_leftovers(tmp);
        let out = tmp.join(format!("packaging-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&out);
        let build = run(Command::new(workspace().join("packaging/build"))
            .arg("--bindir")
            .arg(&bindir)
            .arg("--out")
            .arg(&out));
        assert!(
            build.status.success(),
            "packaging/build failed: {}",
            text(&build.stderr)
        );
        let made: Vec<PathBuf> = text(&build.stdout).lines().map(PathBuf::from).collect();
        let find = |ext: &str| {
            made.iter()
                .find(|p| p.extension().is_some_and(|e| e == ext))
                .unwrap_or_else(|| panic!("packaging/build made no .{ext}: {made:?}"))
                .clone()
        };
        Packages {
            deb: find("deb"),
            rpm: find("rpm"),
        }
    })
}

/// Removes the `packaging-PID*` directories of test processes that are gone.
fn remove_leftovers(tmp: &Path) {
    let Ok(entries) = std::fs::read_dir(tmp) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let pid = name
            .strip_prefix("packaging-")
            .map(|r| r.trim_start_matches(|c: char| !c.is_ascii_digit()))
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<u32>().ok());
        if let Some(pid) = pid
            && pid != std::process::id()
            && !Path::new(&format!("/proc/{pid}")).exists()
        {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

fn run(command: &mut Command) -> Output {
    command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Unpacks the .deb into a new directory on the shared root file system, outside /tmp: the
/// packaged unit's `PrivateTmp=` would hide a binary below /tmp (where a checkout may live) from
/// the agent's own service. Removed when dropped.
fn unpack_deb(deb: &Path) -> Scratch {
    let parent = Path::new("/var/lib/flotilla-tests");
    std::fs::create_dir_all(parent).unwrap();
    let dir = Scratch::under(parent, "packaging-root").unwrap();
    let x = run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(dir.path()));
    assert!(x.status.success(), "dpkg-deb -x: {}", text(&x.stderr));
    dir
}

#[test]
fn the_deb_holds_the_agent_its_unit_config_policy_and_docs_and_lintian_finds_no_error() {
    let p = packages();
    let contents = run(Command::new("dpkg-deb").arg("-c").arg(&p.deb));
    assert!(contents.status.success());
    let contents = text(&contents.stdout);
    for path in [
        "./usr/bin/flotillad",
        "./usr/bin/flotctl",
        "./lib/systemd/system/flotillad.service",
        "./etc/flotilla/flotilla.toml",
        "./usr/lib/sysusers.d/flotilla.conf",
        "./usr/share/dbus-1/system.d/org.flotilla.Agent1.conf",
        "./usr/lib/systemd/resolved.conf.d/flotilla.conf",
        "./usr/share/man/man8/flotillad.8.gz",
        "./usr/share/man/man1/flotctl.1.gz",
        "./usr/share/bash-completion/completions/flotillad",
        "./usr/share/bash-completion/completions/flotctl",
        "./usr/share/zsh/vendor-completions/_flotctl",
        "./usr/share/fish/vendor_completions.d/flotctl.fish",
        "./usr/share/doc/flotillad/copyright",
    ] {
        assert!(
            contents.lines().any(|l| l.ends_with(path)),
            "{path} not in the deb:\n{contents}"
        );
    }
    // Nothing under /var/lib/flotilla: the cluster's data belongs to no package.
    assert!(!contents.contains("./var/lib/flotilla"), "{contents}");

    let field = |name: &str| {
        let out = run(Command::new("dpkg-deb").args(["-f"]).arg(&p.deb).arg(name));
        text(&out.stdout).trim().to_owned()
    };
    assert_eq!(field("Package"), "flotillad");
    assert!(
        field("Depends").contains("libc6 (>= "),
        "{}",
        field("Depends")
    );
    let info = run(Command::new("dpkg-deb")
        .arg("-I")
        .arg(&p.deb)
        .arg("conffiles"));
    assert_eq!(text(&info.stdout).trim(), "/etc/flotilla/flotilla.toml");

    let lintian = run(Command::new("lintian").arg(&p.deb));
    let out = text(&lintian.stdout);
    let errors: Vec<&str> = out.lines().filter(|l| l.starts_with("E:")).collect();
    assert!(
        errors.is_empty(),
        "lintian errors:\n{}\n{}",
        errors.join("\n"),
        text(&lintian.stderr)
    );
}

#[test]
fn the_rpm_lists_the_expected_files_with_the_config_kept_on_upgrade() {
    let p = packages();
    let list = run(Command::new("rpm").arg("-qpl").arg(&p.rpm));
    assert!(list.status.success(), "rpm -qpl: {}", text(&list.stderr));
    let list = text(&list.stdout);
    for path in [
        "/usr/bin/flotillad",
        "/usr/bin/flotctl",
        "/usr/lib/systemd/system/flotillad.service",
        "/etc/flotilla/flotilla.toml",
        "/usr/share/dbus-1/system.d/org.flotilla.Agent1.conf",
        "/usr/lib/systemd/resolved.conf.d/flotilla.conf",
        "/usr/lib/sysusers.d/flotilla.conf",
        "/usr/share/man/man8/flotillad.8.gz",
        "/usr/share/zsh/site-functions/_flotillad",
    ] {
        assert!(
            list.lines().any(|l| l == path),
            "{path} not in the rpm:\n{list}"
        );
    }
    assert!(!list.contains("/var/lib/flotilla"), "{list}");

    let info = text(&run(Command::new("rpm").arg("-qpi").arg(&p.rpm)).stdout);
    for want in ["Name        : flotillad", "License     : Apache-2.0"] {
        assert!(info.contains(want), "{want:?} not in rpm -qpi:\n{info}");
    }
    // %config(noreplace): rpm -qpc lists it, and the admin's edits survive an upgrade.
    let config = text(&run(Command::new("rpm").arg("-qpc").arg(&p.rpm)).stdout);
    assert_eq!(config.trim(), "/etc/flotilla/flotilla.toml");
    let scripts = text(&run(Command::new("rpm").arg("-qp").arg("--scripts").arg(&p.rpm)).stdout);
    assert!(
        scripts.contains("try-restart flotillad.service"),
        "{scripts}"
    );
}

#[test]
fn the_packaged_unit_passes_systemd_analyze_verify_and_security() {
    let scratch = unpack_deb(&packages().deb);
    let root = scratch.path();
    let unit = root.join("lib/systemd/system").join(UNIT);
    let verify = run(Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&unit));
    // The one complaint allowed: the binary is not installed on this host (it is unpacked).
    let complaints: Vec<String> = text(&verify.stderr)
        .lines()
        .filter(|l| !l.contains("/usr/bin/flotillad is not executable"))
        .map(str::to_owned)
        .collect();
    assert!(
        complaints.is_empty(),
        "systemd-analyze verify: {complaints:?}"
    );

    // Overall exposure at most 3.0 ("OK"); systemd-analyze exits non-zero above the threshold.
    let security = run(Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--threshold=30", "--no-pager"])
        .arg(&unit));
    assert!(
        security.status.success(),
        "systemd-analyze security:\n{}{}",
        text(&security.stdout),
        text(&security.stderr)
    );
    let _ = std::fs::remove_dir_all(root);
}

/// Runs `script` as root in a throw-away copy of this host: a private mount namespace whose
/// root is an overlay over `/` (the writes land in an upper directory of this test and vanish
/// with it), with its own empty `/run` and `/tmp` (no systemd, no bus: maintainer scripts skip
/// their systemctl calls). The packages are copied to its `/`. Nothing reaches the host.
fn in_overlay(packages: &Packages, script: &str) -> Output {
    let w = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "packaging-overlay-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos()
    ));
    for d in ["upper", "work", "merged"] {
        std::fs::create_dir_all(w.join(d)).unwrap();
    }
    for p in [&packages.deb, &packages.rpm] {
        std::fs::copy(p, w.join("upper").join(p.file_name().unwrap())).unwrap();
    }
    let setup = r#"set -e
mount --make-rprivate /
mount -t overlay overlay -o "lowerdir=/,upperdir=$W/upper,workdir=$W/work" "$W/merged"
mount -t proc proc "$W/merged/proc"
mount --rbind /dev "$W/merged/dev"
mount -t tmpfs tmpfs "$W/merged/run"
mount -t tmpfs tmpfs "$W/merged/tmp"
exec chroot "$W/merged" /bin/sh -euc "$SCRIPT"
"#;
    let out = run(Command::new("unshare")
        .args(["--mount", "--fork", "sh", "-c", setup])
        .env("W", &w)
        .env("SCRIPT", script)
        .env("DEBIAN_FRONTEND", "noninteractive"));
    let _ = std::fs::remove_dir_all(&w);
    out
}

#[test]
fn install_upgrade_and_removal_keep_the_data_and_the_edited_config() {
    let p = packages();
    let deb = p.deb.file_name().unwrap().to_str().unwrap();
    let rpm = p.rpm.file_name().unwrap().to_str().unwrap();
    let script = format!(
        r#"
dpkg -i /{deb} >/dev/null
test -x /usr/bin/flotillad && test -x /usr/bin/flotctl
test -L /etc/systemd/system/multi-user.target.wants/flotillad.service
getent group flotilla >/dev/null
echo '# edited by the admin' >>/etc/flotilla/flotilla.toml
mkdir -p /var/lib/flotilla && echo raft >/var/lib/flotilla/marker
dpkg -i /{deb} >/dev/null
echo "upgrade: $(tail -n 1 /etc/flotilla/flotilla.toml) $(cat /var/lib/flotilla/marker)"
dpkg -r flotillad >/dev/null
test ! -e /usr/bin/flotillad
echo "remove: $(tail -n 1 /etc/flotilla/flotilla.toml) $(cat /var/lib/flotilla/marker)"
dpkg -P flotillad >/dev/null
echo "purge: $(cat /var/lib/flotilla/marker)"
rpm -i --nodeps /{rpm}
test -x /usr/bin/flotillad
echo '# edited by the admin' >>/etc/flotilla/flotilla.toml
rpm -U --nodeps --replacepkgs /{rpm}
echo "rpm upgrade: $(tail -n 1 /etc/flotilla/flotilla.toml) $(cat /var/lib/flotilla/marker)"
rpm -e --nodeps flotillad
test ! -e /usr/bin/flotillad
echo "rpm remove: $(cat /var/lib/flotilla/marker)"
"#
    );
    let out = in_overlay(p, &script);
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let lines: Vec<String> = text(&out.stdout)
        .lines()
        .filter(|l| l.contains(": "))
        .map(str::to_owned)
        .collect();
    assert_eq!(
        lines,
        [
            "upgrade: # edited by the admin raft",
            "remove: # edited by the admin raft",
            "purge: raft",
            "rpm upgrade: # edited by the admin raft",
            "rpm remove: raft",
        ],
        "{}",
        text(&out.stderr)
    );
}

/// `systemctl show -p PROP --value flotillad.service` inside `node`.
fn show(node: &Node<'_>, prop: &str) -> String {
    node.stdout(&["systemctl", "show", "-p", prop, "--value", UNIT])
        .unwrap_or_default()
}

#[test]
fn the_packaged_unit_forms_a_cluster_shows_status_and_the_watchdog_restarts_a_stopped_agent() {
    let scratch = unpack_deb(&packages().deb);
    let root = scratch.path();
    let agent = root.join("usr/bin/flotillad");
    // The testbed writes each machine's /etc/flotilla/flotilla.toml (name, addresses,
    // initial_cluster): the one step an admin does by hand.
    let tb = Testbed::up(Options::new(3).agent(&agent).agent_stopped()).unwrap();
    let unit = root.join("lib/systemd/system").join(UNIT);
    for n in tb.nodes() {
        let install = format!(
            "cp {unit} /run/systemd/system/{UNIT} && mkdir -p /run/systemd/system/{UNIT}.d && \
             printf '[Service]\\nExecStart=\\nExecStart={agent} --config /etc/flotilla/flotilla.toml\\n' \
             >/run/systemd/system/{UNIT}.d/unpacked.conf && systemctl daemon-reload && \
             systemctl start --no-block {UNIT}",
            unit = unit.display(),
            agent = agent.display(),
        );
        let out = n.exec(&["sh", "-c", &install]).unwrap();
        assert!(out.status.success(), "{}: {}", n.name(), text(&out.stderr));
    }
    for n in tb.nodes() {
        n.wait_active(UNIT, DEADLINE).unwrap();
        // The packaged unit, not the testbed's, is what runs.
        assert_eq!(
            show(&n, "FragmentPath"),
            format!("/run/systemd/system/{UNIT}")
        );
        assert_eq!(show(&n, "Type"), "notify");
        assert_eq!(show(&n, "WatchdogUSec"), "10s");
    }

    // The cluster formed: every member reports the same leader and 3 voters in STATUS=.
    let mut leaders = Vec::new();
    for n in tb.nodes() {
        let status = wait_for(DEADLINE, &format!("STATUS= of {}", n.name()), || {
            let s = show(&n, "StatusText");
            if s.contains("3 voters") && !s.contains("no leader") && !s.contains("(term 0)") {
                Ok(s)
            } else {
                Err(Some(s))
            }
        })
        .unwrap();
        let leader = if status.starts_with("leader ") {
            n.name()
        } else {
            status
                .strip_prefix("follower of ")
                .and_then(|r| r.split_whitespace().next())
                .unwrap_or_else(|| panic!("{}: {status}", n.name()))
                .to_owned()
        };
        leaders.push(leader);
    }
    assert!(
        leaders.iter().all(|l| *l == leaders[0]),
        "members disagree on the leader: {leaders:?}"
    );

    // `systemctl status` shows the line and the unit as running.
    let n1 = tb.node(1);
    let status = n1
        .stdout(&["systemctl", "status", "--no-pager", UNIT])
        .unwrap();
    assert!(status.contains("Active: active (running)"), "{status}");
    assert!(status.contains("Status: \""), "{status}");
    assert!(status.contains("voters"), "{status}");

    // The log went to the journal with structured fields (F_PEER from "flotillad listening").
    let fields = n1
        .stdout(&[
            "journalctl",
            "--no-pager",
            "-u",
            UNIT,
            "-o",
            "verbose",
            "MESSAGE=flotillad listening",
        ])
        .unwrap();
    assert!(fields.contains("F_PEER="), "{fields}");

    // SIGSTOP: no more pings; systemd aborts the agent and starts it again.
    let pid = show(&n1, "MainPID");
    assert_ne!(pid, "0");
    let stop = n1.exec(&["kill", "-STOP", &pid]).unwrap();
    assert!(stop.status.success(), "{}", text(&stop.stderr));
    wait_for(
        WATCHDOG_DEADLINE,
        "the watchdog to restart node1's agent",
        || {
            let (now, restarts, state) = (
                show(&n1, "MainPID"),
                show(&n1, "NRestarts"),
                show(&n1, "ActiveState"),
            );
            if now != pid && now != "0" && restarts != "0" && state == "active" {
                Ok(())
            } else {
                Err(Some(format!(
                    "MainPID={now} NRestarts={restarts} ActiveState={state}"
                )))
            }
        },
    )
    .unwrap();
    let journal = n1.journal(Some(UNIT), 200);
    assert!(journal.contains("Watchdog timeout"), "{journal}");
    // And it rejoined: STATUS= names a leader again.
    wait_for(DEADLINE, "node1 to rejoin", || {
        let s = show(&n1, "StatusText");
        if s.contains("3 voters") && !s.contains("no leader") {
            Ok(())
        } else {
            Err(Some(s))
        }
    })
    .unwrap();

    // `systemctl reload`: SIGHUP, the config is read again and checked, the agent stays up.
    let n3 = tb.node(3);
    let reload = n3.exec(&["systemctl", "reload", UNIT]).unwrap();
    assert!(reload.status.success(), "{}", text(&reload.stderr));
    wait_for(DEADLINE, "node3 to log the reload", || {
        let j = n3.journal(Some(UNIT), 100);
        if j.contains("reloaded /etc/flotilla/flotilla.toml: nothing changed") {
            Ok(())
        } else {
            Err(Some(j))
        }
    })
    .unwrap();
    assert_eq!(show(&n3, "ActiveState"), "active");

    // `systemctl stop`: a graceful stop that ends with status 0, not a kill after the timeout.
    let stop = n3.exec(&["systemctl", "stop", UNIT]).unwrap();
    assert!(stop.status.success(), "{}", text(&stop.stderr));
    assert_eq!(show(&n3, "ActiveState"), "inactive");
    assert_eq!(show(&n3, "Result"), "success");
    assert_eq!(show(&n3, "ExecMainStatus"), "0");
    let journal = n3.journal(Some(UNIT), 100);
    assert!(
        journal
            .lines()
            .any(|l| l.contains(" flotillad[") && l.ends_with(": stopped")),
        "{journal}"
    );

    drop(tb);
    let _ = std::fs::remove_dir_all(root);
}
