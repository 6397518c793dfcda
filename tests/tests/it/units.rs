//! Units scheduled across machines that run real systemd: fleet's walk-through with `flotctl`
//! (start, list-units, status, journal, destroy) on three machines, a malformed unit refused
//! at submit, and a unit moved off a machine that is powered off; every `[X-Fleet]` option,
//! templates and instances, capacity (MemoryMax= against each machine's memory and its
//! agents' slice limit), the per-machine cap and rolling restarts timed by systemd itself.

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
pub(crate) fn flotctl(node: &Node<'_>, args: &[&str]) -> Output {
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

pub(crate) fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Writes `text` to `path` inside `node` (its own /tmp).
pub(crate) fn write(node: &Node<'_>, path: &str, text: &str) {
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
pub(crate) fn wait_machines_up(node: &Node<'_>, n: usize) {
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

    // journal -f: the last line, then new ones as they come, until it is stopped.
    {
        use std::io::BufRead as _;
        let mut argv = vec![flotctl_path().to_str().unwrap().to_owned()];
        argv.extend(["journal", "-f", "-n", "1", UNIT].map(String::from));
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let mut child = other
            .command(&argv)
            .unwrap()
            .env_remove("FLOTCTL_ENDPOINT")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let mut seen = Vec::new();
        let followed = wait_for(DEADLINE, "journal -f to print new lines", || {
            while let Ok(line) = rx.try_recv() {
                seen.push(line);
            }
            if seen.iter().filter(|l| l.contains("Hello Fleet")).count() >= 4 {
                Ok(())
            } else {
                Err(Some(seen.join("\n")))
            }
        });
        let _ = child.kill();
        let _ = child.wait();
        followed.unwrap();
    }

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

/// `GET /flotilla/v1/units` on `node`: every unit with its machines and unschedulable reason.
fn units_json(node: &Node<'_>) -> serde_json::Value {
    let (code, body) = curl(node, &["http://127.0.0.1:2379/flotilla/v1/units"]);
    assert_eq!(code, "200", "{body}");
    serde_json::from_str(&body).unwrap()
}

/// Where the cluster placed `name` (machine names, sorted) and why not (more), if it says.
fn placement(node: &Node<'_>, name: &str) -> (Vec<String>, Option<String>) {
    let all = units_json(node);
    let unit = all["units"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == name)
        .cloned()
        .unwrap_or_default();
    let mut machines: Vec<String> = unit["machines"]
        .as_array()
        .map(|m| {
            m.iter()
                .filter_map(|m| m.as_str())
                .map(String::from)
                .collect()
        })
        .unwrap_or_default();
    machines.sort();
    (machines, unit["unschedulable"].as_str().map(String::from))
}

/// The machines whose own systemd runs `name`, sorted.
fn systemd_runs(tb: &Testbed, name: &str) -> Vec<String> {
    let mut on: Vec<String> = tb
        .nodes()
        .filter(|n| {
            n.stdout(&["systemctl", "is-active", name])
                .is_ok_and(|s| s.trim() == "active")
        })
        .map(|n| n.name())
        .collect();
    on.sort();
    on
}

/// Waits until the cluster assigns `name` to exactly `machines` and their systemd runs it
/// there and nowhere else.
fn wait_runs_on(tb: &Testbed, name: &str, machines: &[&str]) {
    let asked = tb.node(1);
    wait_for(DEADLINE, &format!("{name} runs on {machines:?}"), || {
        let (placed, why) = placement(&asked, name);
        let running = systemd_runs(tb, name);
        if placed == machines && running == machines {
            Ok(())
        } else {
            Err(Some(format!(
                "assigned to {placed:?}, systemd runs it on {running:?}, unschedulable: {why:?}"
            )))
        }
    })
    .unwrap();
}

/// Waits until `name` is on no machine and its reason contains `why`; returns the reason.
fn wait_unschedulable(tb: &Testbed, name: &str, why: &str) -> String {
    let asked = tb.node(1);
    let reason = wait_for(
        DEADLINE,
        &format!("{name} unschedulable: {why}"),
        || match placement(&asked, name) {
            (placed, Some(reason)) if placed.is_empty() && reason.contains(why) => Ok(reason),
            other => Err(Some(format!("{other:?}"))),
        },
    )
    .unwrap();
    assert_eq!(systemd_runs(tb, name), Vec::<String>::new());
    // `flotctl status` of a unit no machine can take says why, not only that it runs nowhere.
    let status = flotctl(&asked, &["status", name]);
    assert!(!status.status.success(), "status: {}", text(&status));
    assert!(
        text(&status).contains(&format!("unit '{name}' cannot be placed: {reason}")),
        "status: {}",
        text(&status)
    );
    reason
}

/// Writes unit `name` with `[X-Fleet]` lines `fleet` (and more `[Service]` lines) to /tmp on
/// node 1.
fn unit_file(tb: &Testbed, name: &str, service: &str, fleet: &str) -> String {
    let path = format!("/tmp/{name}");
    write(
        &tb.node(1),
        &path,
        &format!("[Service]\nExecStart=/usr/bin/sleep infinity\n{service}\n[X-Fleet]\n{fleet}\n"),
    );
    path
}

/// `flotctl start ARGS` on node 1; `block`: wait until active.
fn start(tb: &Testbed, args: &[&str], block: bool) {
    let mut argv = vec!["start"];
    if !block {
        argv.push("--no-block");
    }
    argv.extend_from_slice(args);
    let out = flotctl(&tb.node(1), &argv);
    assert!(out.status.success(), "start {args:?}: {}", text(&out));
}

/// How many units `list-units` shows on each machine.
fn units_per_machine(node: &Node<'_>) -> std::collections::BTreeMap<String, usize> {
    let out = flotctl(
        node,
        &["list-units", "--no-legend", "--fields", "unit,machine"],
    );
    assert!(out.status.success(), "list-units: {}", text(&out));
    let mut per = std::collections::BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if let Some(machine) = line.split_whitespace().nth(1) {
            *per.entry(machine.to_owned()).or_insert(0) += 1;
        }
    }
    per
}

/// The machines' metadata in this test: two regions, two disk kinds.
const METADATA: [&str; 3] = [
    r#"{ node = "node1", region = "east", disk = "ssd" }"#,
    r#"{ node = "node2", region = "west", disk = "ssd" }"#,
    r#"{ node = "node3", region = "west", disk = "hdd" }"#,
];
/// `[scheduler] max_units_per_machine` in this test.
const CAP: usize = 8;

#[test]
fn every_x_fleet_option_capacity_and_the_per_machine_cap_on_real_machines() {
    let tb = Testbed::up(
        Options::new(3)
            .agent(Options::default_agent())
            .agent_stopped(),
    )
    .unwrap();
    for (n, metadata) in tb.nodes().zip(METADATA) {
        let config = "/etc/flotilla/flotilla.toml";
        let sed = format!("s/^metadata = .*/metadata = {metadata}/");
        assert!(
            n.exec(&["sed", "-i", &sed, config])
                .unwrap()
                .status
                .success()
        );
        let cap = format!("\n[scheduler]\nmax_units_per_machine = {CAP}\n");
        let append = format!("printf '{cap}' >> {config}");
        assert!(n.exec(&["sh", "-c", &append]).unwrap().status.success());
        n.start_agent().unwrap();
    }
    for n in tb.nodes() {
        n.wait_active("flotillad.service", DEADLINE).unwrap();
    }
    let n1 = tb.node(1);
    wait_machines_up(&n1, 3);
    let id2 = tb.node(2).stdout(&["cat", "/etc/machine-id"]).unwrap();
    let id2 = id2.trim();

    // Capacity: every machine committed its memory, so no machine can take 100T.
    let big = unit_file(&tb, "big.service", "MemoryMax=100T", "");
    start(&tb, &[&big], false);
    let why = wait_unschedulable(&tb, "big.service", "needs 100T memory, largest free is");
    assert!(why.contains(" on node"), "{why}");
    // flotctl shows the reason too, from any machine.
    let out = flotctl(
        &tb.node(3),
        &["list-unit-files", "--no-legend", "--fields", "unit,reason"],
    );
    let shown = text(&out);
    assert!(
        shown
            .lines()
            .any(|l| l.starts_with("big.service") && l.contains("needs 100T memory")),
        "list-unit-files: {shown}"
    );

    // The memory limit of the agents' slice counts where it is lower, and a change of it is
    // proposed: a unit that fits no more is taken off, and comes back once it fits again.
    let pinned = unit_file(
        &tb,
        "pinned.service",
        "MemoryMax=2G",
        "MachineMetadata=node=node3",
    );
    start(&tb, &[&pinned], true);
    wait_runs_on(&tb, "pinned.service", &["node3"]);
    let slice_memory = |max: &str| {
        let property = format!("MemoryMax={max}");
        let argv = [
            "systemctl",
            "set-property",
            "--runtime",
            "system.slice",
            &property,
        ];
        let out = tb.node(3).exec(&argv).unwrap();
        assert!(out.status.success(), "{}", text(&out));
    };
    slice_memory("1G");
    wait_unschedulable(
        &tb,
        "pinned.service",
        "needs 2G memory, largest free is 1G on node3",
    );
    slice_memory("infinity");
    wait_runs_on(&tb, "pinned.service", &["node3"]);

    // Global=: on every machine.
    // Units restarted below take a second to start, so that overlapping restarts would show.
    let slow = "ExecStartPre=/usr/bin/sleep 1";
    let global = unit_file(&tb, "global.service", slow, "Global=true");
    start(&tb, &[&global], true);
    wait_runs_on(&tb, "global.service", &["node1", "node2", "node3"]);

    // MachineMetadata=: values of one key OR-ed, different keys AND-ed (as global units, so
    // every machine that matches takes them).
    let or = unit_file(
        &tb,
        "or.service",
        "",
        "Global=true\nMachineMetadata=node=node1\nMachineMetadata=node=node3",
    );
    let and = unit_file(
        &tb,
        "and.service",
        "",
        "Global=true\nMachineMetadata=region=west\nMachineMetadata=disk=ssd",
    );
    start(&tb, &[&or, &and], true);
    wait_runs_on(&tb, "or.service", &["node1", "node3"]);
    wait_runs_on(&tb, "and.service", &["node2"]);
    let nowhere = unit_file(&tb, "nowhere.service", "", "MachineMetadata=region=north");
    start(&tb, &[&nowhere], false);
    wait_unschedulable(
        &tb,
        "nowhere.service",
        "no machine matches MachineMetadata=region=north",
    );

    // MachineID= and MachineOf=.
    let id = unit_file(&tb, "id.service", "", &format!("MachineID={id2}"));
    let follower = unit_file(&tb, "follower.service", "", "MachineOf=id.service");
    start(&tb, &[&id, &follower], true);
    wait_runs_on(&tb, "id.service", &["node2"]);
    wait_runs_on(&tb, "follower.service", &["node2"]);

    // A template and its instances; Conflicts= globs keep them apart.
    let web = unit_file(&tb, "web@.service", slow, "Conflicts=web@*.service");
    let out = flotctl(&n1, &["submit", &web]);
    assert!(out.status.success(), "submit: {}", text(&out));
    let out = flotctl(&n1, &["start", "web@.service"]);
    assert!(!out.status.success(), "a template was started");
    start(
        &tb,
        &["web@1.service", "web@2.service", "web@3.service"],
        true,
    );
    let mut webs: Vec<String> = (1..=3)
        .flat_map(|i| placement(&n1, &format!("web@{i}.service")).0)
        .collect();
    webs.sort();
    assert_eq!(
        webs,
        ["node1", "node2", "node3"],
        "instances share a machine"
    );
    start(&tb, &["web@4.service"], false);
    wait_unschedulable(
        &tb,
        "web@4.service",
        "conflicts with web@1.service, web@2.service, web@3.service on every candidate machine",
    );
    // The other way: a unit without Conflicts= cannot join one whose glob names it.
    let picky = unit_file(
        &tb,
        "picky.service",
        "",
        "MachineMetadata=region=east\nConflicts=lonely*",
    );
    start(&tb, &[&picky], true);
    wait_runs_on(&tb, "picky.service", &["node1"]);
    let lonely = unit_file(&tb, "lonely.service", "", "MachineMetadata=region=east");
    start(&tb, &[&lonely], false);
    wait_unschedulable(
        &tb,
        "lonely.service",
        "conflicts with picky.service on every candidate machine",
    );

    // Replaces=: the replacing unit takes the machine, the replaced one moves away.
    let old = unit_file(&tb, "old.service", "", "MachineMetadata=region=west");
    start(&tb, &[&old], true);
    let (was, _) = placement(&n1, "old.service");
    assert_eq!(was.len(), 1);
    let there = tb.node_named(&was[0]).unwrap();
    let there_id = there.stdout(&["cat", "/etc/machine-id"]).unwrap();
    let new = unit_file(
        &tb,
        "new.service",
        "",
        &format!("MachineID={}\nReplaces=old.service", there_id.trim()),
    );
    start(&tb, &[&new], true);
    wait_runs_on(&tb, "new.service", &[was[0].as_str()]);
    let other_west = if was[0] == "node2" { "node3" } else { "node2" };
    wait_runs_on(&tb, "old.service", &[other_west]);

    // MemoryMax= as a share of each machine's capacity: 60% fits once per machine.
    let half = unit_file(&tb, "half@.service", "MemoryMax=60%", "");
    let out = flotctl(&n1, &["submit", &half]);
    assert!(out.status.success(), "submit: {}", text(&out));
    start(
        &tb,
        &["half@1.service", "half@2.service", "half@3.service"],
        true,
    );
    let mut halves: Vec<String> = (1..=3)
        .flat_map(|i| placement(&n1, &format!("half@{i}.service")).0)
        .collect();
    halves.sort();
    assert_eq!(halves, ["node1", "node2", "node3"]);
    start(&tb, &["half@4.service"], false);
    wait_unschedulable(&tb, "half@4.service", "memory, largest free is");

    // Rolling restarts, one machine at a time: of a global unit (machines in name order) and
    // of a template (every started instance, in name order).
    let steps: Vec<(String, String)> = ["node1", "node2", "node3"]
        .iter()
        .map(|m| ("global.service".to_owned(), (*m).to_owned()))
        .collect();
    rolling_restart(&tb, "global.service", &steps);
    let steps: Vec<(String, String)> = (1..=3)
        .map(|i| {
            let unit = format!("web@{i}.service");
            let on = placement(&n1, &unit).0.remove(0);
            (unit, on)
        })
        .collect();
    rolling_restart(&tb, "web@.service", &steps);
    let out = flotctl(&n1, &["restart", "nowhere.service"]);
    assert!(!out.status.success(), "restart of a unit that runs nowhere");

    // The per-machine cap: fill every machine up to it; one more is refused with the reason.
    let per = units_per_machine(&n1);
    let used: usize = per.values().sum();
    assert!(per.values().all(|&n| n <= CAP), "{per:?}");
    let fill = unit_file(&tb, "fill@.service", "", "");
    let out = flotctl(&n1, &["submit", &fill]);
    assert!(out.status.success(), "submit: {}", text(&out));
    let free = 3 * CAP - used;
    let names: Vec<String> = (1..=free + 1)
        .map(|i| format!("fill@{i}.service"))
        .collect();
    let args: Vec<&str> = names.iter().map(String::as_str).collect();
    start(&tb, &args, false);
    let last = &names[free];
    wait_for(DEADLINE, "every machine at the cap", || {
        let per = units_per_machine(&n1);
        let active = systemd_units_active(&tb);
        if per.values().all(|&n| n == CAP) && per.len() == 3 && active == 3 * CAP {
            Ok(())
        } else {
            Err(Some(format!("{per:?}, {active} active")))
        }
    })
    .unwrap();
    let unplaced: Vec<&String> = names
        .iter()
        .filter(|n| placement(&n1, n).0.is_empty())
        .collect();
    assert_eq!(unplaced.len(), 1, "{unplaced:?}");
    let reason = wait_unschedulable(&tb, unplaced[0], "");
    assert_eq!(
        reason,
        format!("every candidate machine already runs the maximum of {CAP} units"),
        "{last}"
    );
}

/// How many units flotilla wrote are active in the machines' own systemd, all together.
fn systemd_units_active(tb: &Testbed) -> usize {
    tb.nodes()
        .map(|n| {
            let out = n
                .stdout(&[
                    "sh",
                    "-c",
                    "cd /run/systemd/system && grep -l '^# Managed by flotilla' *.service \
                     | xargs -r systemctl is-active | grep -cx active || true",
                ])
                .unwrap_or_default();
            out.trim().parse::<usize>().unwrap_or(0)
        })
        .sum()
}

/// `unit`'s (ActiveExitTimestampMonotonic, ActiveEnterTimestampMonotonic, MainPID) in the
/// systemd of machine `on` (the machines share one kernel, so one monotonic clock).
fn timestamps(tb: &Testbed, unit: &str, on: &str) -> (u64, u64, u64) {
    let node = tb.node_named(on).unwrap();
    let out = node
        .stdout(&[
            "systemctl",
            "show",
            "-p",
            "ActiveExitTimestampMonotonic",
            "-p",
            "ActiveEnterTimestampMonotonic",
            "-p",
            "MainPID",
            unit,
        ])
        .unwrap();
    let value = |key: &str| -> u64 {
        out.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {key} in {out}"))
    };
    (
        value("ActiveExitTimestampMonotonic"),
        value("ActiveEnterTimestampMonotonic"),
        value("MainPID"),
    )
}

/// `flotctl restart name`, then checks with systemd's own timestamps that every step (unit
/// on machine, in `steps` order) was restarted, each only after the previous one was
/// active again.
fn rolling_restart(tb: &Testbed, name: &str, steps: &[(String, String)]) {
    let before: Vec<(u64, u64, u64)> = steps
        .iter()
        .map(|(unit, on)| timestamps(tb, unit, on))
        .collect();
    let out = flotctl(&tb.node(1), &["restart", name]);
    assert!(out.status.success(), "restart {name}: {}", text(&out));
    let after = wait_for(DEADLINE, &format!("every step of {name} restarted"), || {
        let now: Vec<(u64, u64, u64)> = steps
            .iter()
            .map(|(unit, on)| timestamps(tb, unit, on))
            .collect();
        let done = now
            .iter()
            .zip(&before)
            .all(|(n, b)| n.1 > b.1 && n.2 != b.2 && n.2 != 0);
        if done {
            Ok(now)
        } else {
            Err(Some(format!("{now:?}")))
        }
    })
    .unwrap();
    for (i, ((unit, on), (exit, enter, _))) in steps.iter().zip(&after).enumerate() {
        assert!(
            *exit >= before[i].1 && exit <= enter,
            "{unit} on {on}: stopped at {exit}, active again at {enter}"
        );
        if i > 0 {
            let previous_active = after[i - 1].1;
            assert!(
                *exit >= previous_active,
                "{unit} on {on} was stopped at {exit}, before {} on {} was active again at \
                 {previous_active}: the restarts overlap",
                steps[i - 1].0,
                steps[i - 1].1
            );
        }
    }
}
