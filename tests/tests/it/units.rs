//! Units scheduled across machines that run real systemd: fleet's walk-through with `flotctl`
//! (start, list-units, status, journal, destroy) on three machines, a malformed unit refused
//! at submit, and a unit moved off a machine that is powered off.

use std::path::PathBuf;
use std::process::{Output, Stdio};
use std::time::Duration;

use flotilla_tests::testbed::{Node, Options, Testbed, wait_for};

const DEADLINE: Duration = Duration::from_secs(60);
const UNIT: &str = "hello.service";
const HELLO: &str = "[Unit]\nDescription=Hello Fleet\n\n[Service]\nExecStart=/usr/bin/bash -c \"while true; do echo 'Hello Fleet'; sleep 1; done\"\n";

/// `flotctl` built next to the agent (target/debug), visible inside the machines.
fn flotctl_path() -> PathBuf {
    Options::default_agent().with_file_name("flotctl")
}

/// `flotctl ARGS` on `node`, against its own agent's HTTP API.
fn flotctl(node: &Node<'_>, args: &[&str]) -> Output {
    let path = flotctl_path();
    let mut argv = vec![path.to_str().unwrap()];
    argv.extend_from_slice(args);
    node.command(&argv)
        .expect("the machine runs")
        .env_remove("FLOTCTL_ENDPOINT")
        .stdin(Stdio::null())
        .output()
        .expect("flotctl runs")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Writes `text` to `path` inside `node` (its own /tmp).
fn write(node: &Node<'_>, path: &str, text: &str) {
    let mut child = node
        .command(&["tee", path])
        .unwrap()
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success());
}

fn is_active(node: &Node<'_>) -> bool {
    node.stdout(&["systemctl", "is-active", UNIT])
        .is_ok_and(|s| s.trim() == "active")
}

fn has_file(node: &Node<'_>) -> bool {
    node.exec(&["test", "-e", "/run/systemd/system/hello.service"])
        .is_ok_and(|o| o.status.success())
}

/// The machine `list-units` on `node` shows the unit active on.
fn active_on(node: &Node<'_>) -> Result<String, Option<String>> {
    let out = flotctl(node, &["list-units", "--no-legend"]);
    let shown = text(&out);
    for line in shown.lines() {
        let cols: Vec<&str> = line.split_whitespace().collect();
        if cols.len() == 4 && cols[0] == UNIT && cols[2] == "active" && cols[3] == "running" {
            return Ok(cols[1].to_owned());
        }
    }
    Err(Some(shown))
}

/// Waits until `node`'s agent lists `n` machines up (registered by their heartbeats).
fn wait_machines_up(node: &Node<'_>, n: usize) {
    wait_for(DEADLINE, "every machine registered", || {
        let out = flotctl(
            node,
            &["list-machines", "--no-legend", "--fields", "name,status"],
        );
        let shown = text(&out);
        if shown
            .lines()
            .filter(|l| l.trim_end().ends_with("up"))
            .count()
            == n
        {
            Ok(())
        } else {
            Err(Some(shown))
        }
    })
    .unwrap();
}

#[test]
fn start_list_status_journal_move_and_destroy_a_unit_across_machines() {
    let tb = Testbed::up(Options::new(3).agent(Options::default_agent())).unwrap();
    let n1 = tb.node(1);
    for n in tb.nodes() {
        n.wait_active("flotillad.service", DEADLINE).unwrap();
    }
    wait_machines_up(&tb.node(1), 3);

    // A malformed unit is refused at submit, with file:line.
    write(
        &n1,
        "/tmp/broken.service",
        "[Unit]\nDescription=broken\n[Service]\nExecStart=relative/path\n",
    );
    let out = flotctl(&n1, &["submit", "/tmp/broken.service"]);
    assert!(!out.status.success(), "a malformed unit was accepted");
    assert!(
        text(&out).contains("broken.service:4:"),
        "no file:line diagnostic: {}",
        text(&out)
    );

    // Start blocks until the unit is active on the machine the scheduler picked.
    write(&n1, "/tmp/hello.service", HELLO);
    let out = flotctl(
        &n1,
        &["start", "--block-timeout", "60", "/tmp/hello.service"],
    );
    assert!(out.status.success(), "start failed: {}", text(&out));
    let running: Vec<String> = tb.nodes().filter(is_active).map(|n| n.name()).collect();
    assert_eq!(running.len(), 1, "runs on {running:?}");
    let first = running[0].clone();

    // Every machine lists it on that machine.
    for n in tb.nodes() {
        let on = wait_for(DEADLINE, "list-units shows the unit active", || {
            active_on(&n)
        })
        .unwrap();
        assert_eq!(on, first);
    }
    let other = tb.nodes().find(|n| n.name() != first).unwrap();

    // status and journal come from the machine that runs it, asked from another one.
    let out = flotctl(&other, &["status", UNIT]);
    assert!(out.status.success(), "status failed: {}", text(&out));
    assert!(
        text(&out).contains("active (running)"),
        "status: {}",
        text(&out)
    );
    wait_for(DEADLINE, "Hello Fleet in the journal", || {
        let out = flotctl(&other, &["journal", "--lines", "5", UNIT]);
        if out.status.success() && text(&out).contains("Hello Fleet") {
            Ok(())
        } else {
            Err(Some(text(&out)))
        }
    })
    .unwrap();

    // An agent restart adopts the running unit: same main process, no restart.
    let runner = tb.node_named(&first).unwrap();
    let pid = || {
        runner
            .stdout(&["systemctl", "show", "-P", "MainPID", UNIT])
            .unwrap()
    };
    let before = pid();
    assert_ne!(before.trim(), "0");
    runner.stop_agent().unwrap();
    runner.start_agent().unwrap();
    wait_for(DEADLINE, "the restarted agent lists the unit", || {
        active_on(&runner)
    })
    .unwrap();
    assert_eq!(
        pid(),
        before,
        "the agent restarted a running unit it should adopt"
    );

    // stop keeps it loaded where it is; start runs it again there.
    let out = flotctl(&other, &["stop", UNIT]);
    assert!(out.status.success(), "stop failed: {}", text(&out));
    assert!(!is_active(&runner) && has_file(&runner));
    let out = flotctl(&other, &["start", UNIT]);
    assert!(out.status.success(), "start failed: {}", text(&out));
    assert!(is_active(&runner));

    // The machine that runs it goes away: the leader declares it lost and the unit moves.
    runner.power_off().unwrap();
    let survivor = tb.nodes().find(|n| n.name() != first).unwrap();
    let moved = wait_for(
        DEADLINE,
        "the unit moved to another machine",
        || match active_on(&survivor) {
            Ok(m) if m != first => Ok(m),
            Ok(m) => Err(Some(format!("still on {m}"))),
            Err(e) => Err(e),
        },
    )
    .unwrap();
    let target = tb.node_named(&moved).unwrap();
    wait_for(DEADLINE, "systemd runs the moved unit", || {
        if is_active(&target) {
            Ok(())
        } else {
            Err(None)
        }
    })
    .unwrap();

    // Destroy: no unit file and no running unit on any machine that is up.
    let out = flotctl(&survivor, &["destroy", UNIT]);
    assert!(out.status.success(), "destroy failed: {}", text(&out));
    for n in tb.nodes().filter(|n| n.name() != first) {
        wait_for(DEADLINE, "the unit is gone", || {
            if !has_file(&n) && !is_active(&n) {
                Ok(())
            } else {
                Err(Some(n.name()))
            }
        })
        .unwrap();
    }
    let out = flotctl(&survivor, &["list-units", "--no-legend"]);
    assert!(!text(&out).contains(UNIT), "still listed: {}", text(&out));
}

/// `curl ARGS` on `node` against its own agent: (status code, body).
fn curl(node: &Node<'_>, args: &[&str]) -> (String, String) {
    let mut argv = vec!["curl", "-s", "-w", "\n%{http_code}"];
    argv.extend_from_slice(args);
    let out = node.stdout(&argv).unwrap();
    let (body, code) = out.trim_end().rsplit_once('\n').unwrap_or(("", out.trim()));
    (code.to_owned(), body.to_owned())
}

#[test]
fn fleets_v1_api_creates_reports_and_destroys_a_unit() {
    let tb = Testbed::up(Options::new(3).agent(Options::default_agent())).unwrap();
    let (n1, n2) = (tb.node(1), tb.node(2));
    for n in tb.nodes() {
        n.wait_active("flotillad.service", DEADLINE).unwrap();
    }
    wait_machines_up(&tb.node(1), 3);
    let url = "http://127.0.0.1:2379/fleet/v1/units/sleeper.service";
    let body = r#"{"desiredState":"launched","options":[{"section":"Service","name":"ExecStart","value":"/usr/bin/sleep 3000"}]}"#;
    let put = [
        "-X",
        "PUT",
        "-H",
        "Content-Type: application/json",
        url,
        "-d",
    ];
    let mut args = put.to_vec();
    args.push(body);
    assert_eq!(curl(&n1, &args).0, "201");

    // A malformed unit is a 400 with fleet's error entity.
    let bad = r#"{"desiredState":"launched","options":[{"section":"Service","name":"ExecStart","value":"relative/path"}]}"#;
    let mut args = put.to_vec();
    args[4] = "http://127.0.0.1:2379/fleet/v1/units/bad.service";
    args.push(bad);
    let (code, text) = curl(&n1, &args);
    assert_eq!(code, "400");
    let err: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(err["error"]["code"], 400);
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("bad.service:2:"),
        "{text}"
    );

    // Another machine sees it launched, with its state from the machine that runs it.
    wait_for(DEADLINE, "sleeper.service launched", || {
        let (_, text) = curl(
            &n2,
            &["http://127.0.0.1:2379/fleet/v1/units/sleeper.service"],
        );
        let unit: serde_json::Value =
            serde_json::from_str(&text).map_err(|_| Some(text.clone()))?;
        if unit["currentState"] == "launched"
            && unit["options"][0]["value"] == "/usr/bin/sleep 3000"
        {
            Ok(())
        } else {
            Err(Some(text))
        }
    })
    .unwrap();
    let (_, text) = curl(
        &n2,
        &["http://127.0.0.1:2379/fleet/v1/state?unitName=sleeper.service"],
    );
    let states: serde_json::Value = serde_json::from_str(&text).unwrap();
    let states = states["states"].as_array().unwrap();
    assert_eq!(states.len(), 1, "{text}");
    assert_eq!(states[0]["systemdActiveState"], "active");
    let (_, text) = curl(&n2, &["http://127.0.0.1:2379/fleet/v1/machines"]);
    let machines: serde_json::Value = serde_json::from_str(&text).unwrap();
    let ids: Vec<&str> = machines["machines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 3);
    assert!(ids.contains(&states[0]["machineID"].as_str().unwrap()));

    assert_eq!(curl(&n2, &["-X", "DELETE", url]).0, "204");
    assert_eq!(curl(&n2, &["-X", "DELETE", url]).0, "404");
    for n in tb.nodes() {
        wait_for(DEADLINE, "sleeper.service gone", || {
            let active = n
                .stdout(&["systemctl", "is-active", "sleeper.service"])
                .unwrap_or_default();
            if active.trim() != "active" {
                Ok(())
            } else {
                Err(Some(n.name()))
            }
        })
        .unwrap();
    }
}
