//! The reconciler starts a launched unit once per launch: a oneshot that ran to its end is not
//! run again when the reconciler wakes for other reasons, nor when the agent restarts and
//! adopts it; `flotctl restart` runs it again.

use std::time::Duration;

use flotilla_tests::testbed::{Node, Options, Testbed, wait_for};

use crate::units::{flotctl, text, wait_machines_up, write};

const DEADLINE: Duration = Duration::from_secs(60);
const RUNS: &str = "/run/once.runs";
const ONCE: &str = "[Unit]\nDescription=runs once per launch\n\n[Service]\nType=oneshot\nExecStart=/bin/sh -c 'echo ran >> /run/once.runs'\n";
const SLEEPER: &str =
    "[Unit]\nDescription=wakes the reconciler\n\n[Service]\nExecStart=/bin/sleep infinity\n";

/// How many times the oneshot ran.
fn runs(node: &Node<'_>) -> usize {
    node.stdout(&["cat", RUNS])
        .map_or(0, |s| s.lines().filter(|l| *l == "ran").count())
}

/// Waits until the oneshot ran `n` times and systemd shows it finished (inactive).
fn wait_ran(node: &Node<'_>, n: usize) {
    wait_for(DEADLINE, &format!("once.service ran {n} time(s)"), || {
        let state = node
            .stdout(&["systemctl", "is-active", "once.service"])
            .unwrap_or_default();
        match (runs(node), state.trim()) {
            (r, "inactive") if r == n => Ok(()),
            (r, s) => Err(Some(format!("ran {r} time(s), {s}"))),
        }
    })
    .unwrap();
}

/// Starts `file` (a path inside `node`) with flotctl and waits until it is active.
fn start(node: &Node<'_>, file: &str) {
    let out = flotctl(node, &["start", file]);
    assert!(out.status.success(), "flotctl start {file}: {}", text(&out));
}

#[test]
fn a_finished_oneshot_is_not_run_again_until_restarted() {
    let tb = Testbed::up(Options::new(1).agent(Options::default_agent())).unwrap();
    let n = tb.node(1);
    n.wait_active("flotillad.service", DEADLINE).unwrap();
    wait_machines_up(&n, 1);

    write(&n, "/tmp/once.service", ONCE);
    let out = flotctl(&n, &["start", "--no-block", "/tmp/once.service"]);
    assert!(out.status.success(), "flotctl start: {}", text(&out));
    wait_ran(&n, 1);

    // Other units make the reconciler pass again: the finished oneshot stays finished.
    for i in 0..3 {
        let file = format!("/tmp/sleeper{i}.service");
        write(&n, &file, SLEEPER);
        start(&n, &file);
    }
    assert_eq!(runs(&n), 1, "the oneshot ran again on a reconcile pass");

    // A job systemd refuses (RefuseManualStart=) is that unit's failure, reported with it;
    // the reconciler goes on with the others.
    write(
        &n,
        "/tmp/refused.service",
        "[Unit]\nRefuseManualStart=yes\n\n[Service]\nExecStart=/bin/sleep infinity\n",
    );
    let out = flotctl(&n, &["start", "--no-block", "/tmp/refused.service"]);
    assert!(out.status.success(), "{}", text(&out));
    write(&n, "/tmp/sleeper8.service", SLEEPER);
    start(&n, "/tmp/sleeper8.service");
    wait_for(DEADLINE, "refused.service reported refused", || {
        let out = flotctl(&n, &["--output", "json", "list-units"]);
        let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let refused = rows
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| r["unit"] == "refused.service")
            .cloned()
            .unwrap_or_default();
        if refused["result"]
            .as_str()
            .is_some_and(|r| r.starts_with("refused:"))
        {
            Ok(())
        } else {
            Err(Some(text(&out)))
        }
    })
    .unwrap();

    // An agent restart adopts the units as they are: nothing runs again, nothing restarts.
    let main_pid = |name: &str| {
        n.stdout(&["systemctl", "show", "-P", "MainPID", name])
            .unwrap_or_default()
            .trim()
            .to_owned()
    };
    let before: Vec<String> = (0..3)
        .map(|i| main_pid(&format!("sleeper{i}.service")))
        .collect();
    let out = n
        .exec(&["systemctl", "restart", "flotillad.service"])
        .unwrap();
    assert!(out.status.success());
    n.wait_active("flotillad.service", DEADLINE).unwrap();
    write(&n, "/tmp/sleeper9.service", SLEEPER);
    start(&n, "/tmp/sleeper9.service");
    let after: Vec<String> = (0..3)
        .map(|i| main_pid(&format!("sleeper{i}.service")))
        .collect();
    assert_eq!(before, after, "a running unit was restarted on adoption");
    assert_eq!(
        runs(&n),
        1,
        "the oneshot ran again after the agent restarted"
    );

    // A restart asked through the cluster runs it again, once.
    let out = flotctl(&n, &["restart", "once.service"]);
    assert!(out.status.success(), "flotctl restart: {}", text(&out));
    wait_ran(&n, 2);
    write(&n, "/tmp/sleeper10.service", SLEEPER);
    start(&n, "/tmp/sleeper10.service");
    assert_eq!(runs(&n), 2, "the restarted oneshot ran more than once");

    // A stop and a start (a new launch) run it again, even when they come too close together
    // for the reconciler to see the unit stopped.
    let out = flotctl(&n, &["stop", "--no-block", "once.service"]);
    assert!(out.status.success(), "flotctl stop: {}", text(&out));
    let out = flotctl(&n, &["start", "--no-block", "once.service"]);
    assert!(out.status.success(), "flotctl start: {}", text(&out));
    wait_ran(&n, 3);
}

/// The `list-units --output json` row of `unit`, if any.
fn row(node: &Node<'_>, unit: &str) -> serde_json::Value {
    let out = flotctl(node, &["--output", "json", "list-units"]);
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    rows.as_array()
        .into_iter()
        .flatten()
        .find(|r| r["unit"] == unit)
        .cloned()
        .unwrap_or_default()
}

#[test]
fn a_unit_whose_file_is_not_flotillas_is_left_alone_and_reported() {
    let tb = Testbed::up(Options::new(1).agent(Options::default_agent())).unwrap();
    let n = tb.node(1);
    n.wait_active("flotillad.service", DEADLINE).unwrap();
    wait_machines_up(&n, 1);

    // The admin's own file, in the directory flotilla writes to.
    let theirs = "[Service]\nExecStart=/bin/sleep 1000\n";
    write(&n, "/run/systemd/system/mine.service", theirs);
    write(&n, "/tmp/mine.service", SLEEPER);
    let out = flotctl(&n, &["start", "--no-block", "/tmp/mine.service"]);
    assert!(out.status.success(), "flotctl start: {}", text(&out));
    wait_for(DEADLINE, "mine.service reported as not flotilla's", || {
        let r = row(&n, "mine.service");
        if r["active"] == "failed"
            && r["result"].as_str().is_some_and(|s| {
                s.contains("/run/systemd/system/mine.service exists and is not flotilla's")
            })
        {
            Ok(())
        } else {
            Err(Some(r.to_string()))
        }
    })
    .unwrap();
    // Untouched: not started, no drop-in, the file as the admin wrote it.
    let state = n
        .stdout(&["systemctl", "is-active", "mine.service"])
        .unwrap_or_default();
    assert_eq!(state.trim(), "inactive");
    assert_eq!(
        n.stdout(&["cat", "/run/systemd/system/mine.service"])
            .unwrap(),
        theirs.trim_end()
    );
    assert!(
        n.exec(&["test", "-e", "/run/systemd/system/mine.service.d"])
            .unwrap()
            .status
            .code()
            == Some(1),
        "a drop-in directory was made for a unit that is not flotilla's"
    );

    // Once the admin's file is gone, the next pass (any change wakes one) runs flotilla's.
    let out = n.exec(&["rm", "/run/systemd/system/mine.service"]).unwrap();
    assert!(out.status.success());
    write(&n, "/tmp/waker.service", SLEEPER);
    start(&n, "/tmp/waker.service");
    wait_for(DEADLINE, "mine.service run by flotilla", || {
        let r = row(&n, "mine.service");
        if r["active"] == "active" {
            Ok(())
        } else {
            Err(Some(r.to_string()))
        }
    })
    .unwrap();
}
