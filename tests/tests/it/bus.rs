//! `org.flotilla.Agent1` on the system bus of machines that run real systemd and dbus-daemon,
//! driven by clients we did not write (`busctl`, `dbus-send`), then by `flotctl`, as root and as
//! an unprivileged user, with the bus policy the package installs (see `testbed/boot.sh`):
//! keys, machines, members, and units (fleet's verbs, `UnitStateChanged`, status and journal
//! from the machine that runs the unit, the README's walk-through over D-Bus).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::units::write;
use flotilla_dbus::agent1::{self, Agent1Proxy};
use flotilla_tests::testbed::{Node, Options, Testbed, wait_for, wait_until};
use futures::StreamExt;
use serde_json::{Value, json};

const DEADLINE: Duration = Duration::from_secs(30);
/// What makes a command run as an unprivileged user that exists on the host.
const NOBODY: &[&str] = &[
    "setpriv",
    "--reuid=nobody",
    "--regid=nogroup",
    "--clear-groups",
];

/// Fields `from..to` of a structure busctl printed as a JSON array.
fn slice(v: &Value, from: usize, to: usize) -> Value {
    Value::Array(v.as_array().expect("a structure")[from..to].to_vec())
}

fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).trim().to_owned()
}

/// `busctl --system --json=short ARGS` on `node` (as `nobody` if asked); the decoded reply.
fn busctl(node: &Node<'_>, nobody: bool, args: &[&str]) -> Result<Value, String> {
    let mut argv: Vec<&str> = if nobody { NOBODY.to_vec() } else { Vec::new() };
    argv.extend(["busctl", "--system", "--json=short"]);
    argv.extend_from_slice(args);
    let out = node.exec(&argv).expect("the machine runs");
    if !out.status.success() {
        return Err(text(&out.stderr));
    }
    let stdout = text(&out.stdout);
    if stdout.is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_str(&stdout).map_err(|e| format!("busctl printed {stdout:?}: {e}"))
}

/// `busctl call` of an `org.flotilla.Agent1` method; the reply's values.
fn call(node: &Node<'_>, nobody: bool, method: &str, args: &[&str]) -> Result<Value, String> {
    let mut argv = vec![
        "call",
        agent1::NAME,
        agent1::PATH,
        agent1::INTERFACE,
        method,
    ];
    argv.extend_from_slice(args);
    busctl(node, nobody, &argv).map(|v| v["data"].clone())
}

/// A property through `busctl get-property`.
fn property(node: &Node<'_>, nobody: bool, name: &str) -> Value {
    let argv = [
        "get-property",
        agent1::NAME,
        agent1::PATH,
        agent1::INTERFACE,
        name,
    ];
    busctl(node, nobody, &argv).unwrap()["data"].clone()
}

/// `dbus-send` of a method call: it prints the D-Bus name of an error, which busctl does not.
fn dbus_send(node: &Node<'_>, nobody: bool, method: &str, args: &[&str]) -> Output {
    let member = format!("{}.{method}", agent1::INTERFACE);
    let dest = format!("--dest={}", agent1::NAME);
    let mut argv: Vec<&str> = if nobody { NOBODY.to_vec() } else { Vec::new() };
    argv.extend([
        "dbus-send",
        "--system",
        "--print-reply",
        &dest,
        agent1::PATH,
    ]);
    argv.push(&member);
    argv.extend_from_slice(args);
    node.exec(&argv).expect("the machine runs")
}

/// The `<interface name="org.flotilla.Agent1">` element of an introspection document.
fn agent1_interface(xml: &str) -> &str {
    let start = xml
        .find("<interface name=\"org.flotilla.Agent1\">")
        .expect("the interface is declared");
    let end = start + xml[start..].find("</interface>").expect("it ends") + "</interface>".len();
    &xml[start..end]
}

/// `flotctl` built next to the agent (target/debug), visible inside the machines.
fn flotctl_path() -> PathBuf {
    Options::default_agent().with_file_name("flotctl")
}

/// `flotctl ARGS` on `node`, as root or `nobody`.
fn flotctl(node: &Node<'_>, nobody: bool, args: &[&str]) -> Output {
    let path = flotctl_path();
    let mut argv: Vec<&str> = if nobody { NOBODY.to_vec() } else { Vec::new() };
    argv.push(path.to_str().unwrap());
    argv.extend_from_slice(args);
    node.command(&argv)
        .expect("the machine runs")
        .env_remove("FLOTCTL_ENDPOINT")
        .stdin(Stdio::null())
        .output()
        .expect("flotctl runs")
}

/// `busctl monitor` of everything to and from the agent on `node`: its JSON lines, and the
/// process (killed by the caller).
pub(crate) fn monitor(node: &Node<'_>) -> (std::process::Child, mpsc::Receiver<Value>) {
    let mut child = node
        .command(&[
            "busctl",
            "--system",
            "--json=short",
            "monitor",
            agent1::NAME,
        ])
        .unwrap()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(msg) = serde_json::from_str::<Value>(&line)
                && tx.send(msg).is_err()
            {
                return;
            }
        }
    });
    (child, rx)
}

fn agents() -> Options {
    Options::new(3).agent(Options::default_agent())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busctl_introspects_calls_every_method_and_receives_key_changed() {
    let tb = Testbed::up(agents()).unwrap();
    let (n1, n2) = (tb.node(1), tb.node(2));

    // Introspection: the live object declares exactly the committed XML.
    let out = n1
        .exec(&[
            "busctl",
            "--system",
            "introspect",
            "--xml-interface",
            agent1::NAME,
            agent1::PATH,
        ])
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let live = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        agent1_interface(&live),
        agent1_interface(agent1::INTROSPECTION),
        "the served interface differs from dbus/org.flotilla.Agent1.xml: update both together"
    );

    // Keys: write on node1, read on node2.
    let set = call(
        &n1,
        false,
        "SetKey",
        &["ssa{sv}", "/message", "Hello world!", "0"],
    )
    .unwrap();
    assert_eq!(
        slice(&set[0], 0, 3),
        json!(["/message", "Hello world!", false])
    );
    let index = set[0][4].as_u64().unwrap();
    let got = wait_for(DEADLINE, "/message on node2", || {
        call(&n2, false, "GetKey", &["sb", "/message", "false"]).map_err(Some)
    })
    .unwrap();
    assert_eq!(got[0][1], "Hello world!");
    assert_eq!(got[0][4], index);
    let quorum = call(&n2, false, "GetKey", &["sb", "/message", "true"]).unwrap();
    assert_eq!(quorum[0][1], "Hello world!");

    // Options: a TTL, a failed compare-and-swap, a directory.
    let ttl = call(
        &n1,
        false,
        "SetKey",
        &["ssa{sv}", "/dir/ttl", "x", "1", "ttl", "t", "300"],
    )
    .unwrap();
    let left = ttl[0][5].as_i64().unwrap();
    assert!((1..=300).contains(&left), "ttl {left}");
    let cas = call(
        &n1,
        false,
        "SetKey",
        &["ssa{sv}", "/message", "y", "1", "prevValue", "s", "wrong"],
    );
    assert!(
        cas.unwrap_err().contains("compare failed"),
        "compare-and-swap"
    );
    call(
        &n1,
        false,
        "SetKey",
        &["ssa{sv}", "/dir/sub", "", "1", "dir", "b", "true"],
    )
    .unwrap();
    call(&n1, false, "SetKey", &["ssa{sv}", "/dir/sub/k", "v", "0"]).unwrap();
    let listed = call(&n1, false, "ListKeys", &["sbb", "/dir", "true", "false"]).unwrap();
    let keys: Vec<&str> = listed[0]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n[0].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["/dir/sub", "/dir/sub/k", "/dir/ttl"]);
    let unknown = call(
        &n1,
        false,
        "SetKey",
        &["ssa{sv}", "/message", "z", "1", "colour", "s", "red"],
    );
    assert!(unknown.unwrap_err().contains("unknown option \"colour\""));

    // Named errors with messages a person understands.
    let missing = dbus_send(&n2, false, "GetKey", &["string:/nope", "boolean:false"]);
    assert!(!missing.status.success());
    assert_eq!(
        text(&missing.stderr),
        "Error org.flotilla.Agent1.Error.KeyNotFound: key /nope not found"
    );
    let not_empty = call(
        &n1,
        false,
        "DeleteKey",
        &["sa{sv}", "/dir/sub", "1", "dir", "b", "true"],
    );
    assert!(
        not_empty
            .unwrap_err()
            .contains("directory /dir/sub is not empty")
    );
    let deleted = call(&n1, false, "DeleteKey", &["sa{sv}", "/dir/sub/k", "0"]).unwrap();
    assert_eq!(slice(&deleted[0], 0, 2), json!(["/dir/sub/k", "v"]));

    // Machines: every machine registered, this one with its own machine id.
    let machine_id = n2.stdout(&["cat", "/etc/machine-id"]).unwrap();
    assert_eq!(property(&n2, false, "MachineId"), machine_id);
    let me = wait_for(DEADLINE, "node2 in the machine registry", || {
        call(&n2, false, "GetMachine", &["s", ""]).map_err(Some)
    })
    .unwrap();
    assert_eq!(
        slice(&me[0], 0, 3),
        json!(["node2", machine_id, n2.addr().to_string()])
    );
    assert_eq!(me[0][4], "up");
    let machines = wait_for(DEADLINE, "three machines registered", || {
        let m = call(&n1, false, "ListMachines", &[]).map_err(Some)?;
        if m[0].as_array().map(Vec::len) == Some(3) {
            Ok(m)
        } else {
            Err(Some(m.to_string()))
        }
    })
    .unwrap();
    let names: Vec<&str> = machines[0]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m[0].as_str().unwrap())
        .collect();
    assert_eq!(names, ["node1", "node2", "node3"]);
    let missing = dbus_send(&n1, false, "GetMachine", &["string:node9"]);
    assert_eq!(
        text(&missing.stderr),
        "Error org.flotilla.Agent1.Error.MachineNotFound: machine node9 is not registered in the cluster"
    );

    // Cluster: members, leader, health, and the properties agree.
    let members = call(&n1, false, "ListMembers", &[]).unwrap();
    let members = members[0].as_array().unwrap().clone();
    assert_eq!(members.len(), 3);
    let leaders: Vec<&Value> = members.iter().filter(|m| m[5] == true).collect();
    assert_eq!(leaders.len(), 1, "{members:?}");
    assert_eq!(property(&n1, false, "Leader"), leaders[0][1]);
    let mut names = property(&n1, false, "Members").as_array().unwrap().clone();
    names.sort_by_key(|n| n.to_string());
    assert_eq!(
        names,
        json!(["node1", "node2", "node3"])
            .as_array()
            .unwrap()
            .clone()
    );
    assert_eq!(property(&n1, false, "Version"), env!("CARGO_PKG_VERSION"));
    let health = call(&tb.node(3), false, "Health", &[]).unwrap();
    assert_eq!(slice(&health[0], 0, 2), json!([true, "ok"]));
    let peer = format!(
        "http://{}:2380",
        std::net::Ipv4Addr::new(10, 213, tb.id(), 99)
    );
    let added = call(&n1, false, "AddMember", &["ss", "node9", &peer]).unwrap();
    assert_eq!(slice(&added[0], 1, 3), json!(["node9", peer]));
    assert_eq!(added[0][4], false, "a new member is a learner");
    call(&n1, false, "RemoveMember", &["s", "node9"]).unwrap();
    let gone = dbus_send(&n1, false, "RemoveMember", &["string:node9"]);
    assert!(
        text(&gone.stderr)
            .starts_with("Error org.flotilla.Agent1.Error.MemberNotFound: no member node9"),
        "{}",
        text(&gone.stderr)
    );

    // KeyChanged: a connection watches /watched; busctl monitor receives the signals.
    let bus = n1.bus().await.unwrap();
    let agent = Agent1Proxy::new(&bus).await.unwrap();
    let mut changes = agent.receive_key_changed().await.unwrap();
    agent.watch_keys("/watched").await.unwrap();
    let (mut monitor, messages) = monitor(&n1);
    // busctl monitor may start after a write: write again until it sees one.
    let mut n = 0;
    let seen = wait_for(DEADLINE, "busctl monitor to receive KeyChanged", || {
        n += 1;
        let value = format!("v{n}");
        call(
            &n1,
            false,
            "SetKey",
            &["ssa{sv}", "/watched/a", &value, "0"],
        )
        .map_err(Some)?;
        call(
            &n1,
            false,
            "SetKey",
            &["ssa{sv}", "/elsewhere", &value, "0"],
        )
        .map_err(Some)?;
        match messages.try_iter().find(|m| m["member"] == "KeyChanged") {
            Some(msg) => Ok(msg),
            None => Err(None),
        }
    })
    .unwrap();
    let _ = monitor.kill();
    let _ = monitor.wait();
    assert_eq!(seen["type"], "signal");
    assert_eq!(seen["path"], agent1::PATH);
    assert_eq!(seen["payload"]["type"], "ss(ssbttx)");
    assert_eq!(seen["payload"]["data"][0], "/watched/a");
    assert_eq!(seen["payload"]["data"][1], "set");
    // The watching connection got the same, and nothing outside its prefix.
    let first = tokio::time::timeout(DEADLINE, changes.next())
        .await
        .expect("KeyChanged within the deadline")
        .unwrap();
    let args = first.args().unwrap();
    assert_eq!((*args.key(), *args.action()), ("/watched/a", "set"));
    assert_eq!(args.node().value, "v1");
    agent.unwatch_keys("/watched").await.unwrap();
    let again = agent.unwatch_keys("/watched").await.unwrap_err();
    assert_eq!(again.name(), "org.flotilla.Agent1.Error.InvalidArgument");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flotctl_walks_keys_and_members_over_dbus_and_http() {
    let tb = Testbed::up(agents()).unwrap();
    let (n1, n2, n3) = (tb.node(1), tb.node(2), tb.node(3));
    assert!(
        flotctl_path().exists(),
        "build flotctl first (cargo build -p flotilla-cli)"
    );

    let set = flotctl(&n1, false, &["kv", "set", "/message", "Hello world!"]);
    assert_eq!(
        (set.status.code(), text(&set.stdout)),
        (Some(0), "Hello world!".into())
    );
    wait_for(DEADLINE, "flotctl kv get on node2", || {
        let get = flotctl(&n2, false, &["kv", "get", "/message"]);
        if get.status.success() && text(&get.stdout) == "Hello world!" {
            Ok(())
        } else {
            Err(Some(text(&get.stderr)))
        }
    })
    .unwrap();

    // Errors: one line on stderr, etcdctl's exit codes.
    let missing = flotctl(&n2, false, &["kv", "get", "/nope"]);
    assert_eq!(missing.status.code(), Some(4));
    assert_eq!(text(&missing.stderr), "Error:  key /nope not found");
    let exists = flotctl(&n2, false, &["kv", "mk", "/message", "again"]);
    assert_eq!(exists.status.code(), Some(4));
    assert_eq!(text(&exists.stderr), "Error:  key /message already exists");
    assert_eq!(
        flotctl(&n1, false, &["kv", "mkdir", "/d"]).status.code(),
        Some(0)
    );
    let dir = flotctl(&n1, false, &["kv", "get", "/d"]);
    assert_eq!(
        (dir.status.code(), text(&dir.stderr)),
        (Some(1), "/d: is a directory".into())
    );
    assert!(
        flotctl(&n1, false, &["kv", "set", "/d/k", "1"])
            .status
            .success()
    );
    let ls = flotctl(&n1, false, &["kv", "ls", "--recursive", "-p", "/"]);
    assert_eq!(text(&ls.stdout), "/d/\n/d/k\n/message");
    let json = flotctl(&n1, false, &["--output", "json", "kv", "get", "/d/k"]);
    let v: Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(
        (&v["action"], &v["node"]["value"]),
        (&json!("get"), &json!("1"))
    );
    let rm = flotctl(&n1, false, &["kv", "rm", "/d/k"]);
    assert_eq!(text(&rm.stdout), "PrevNode.Value: 1");

    // A watch over D-Bus ends with the first change under its key.
    let path = flotctl_path();
    let watch = n3
        .command(&[path.to_str().unwrap(), "kv", "watch", "--recursive", "/w"])
        .unwrap()
        .env_remove("FLOTCTL_ENDPOINT")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = watch.id();
    let (done_tx, done) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = done_tx.send(watch.wait_with_output());
    });
    // The watch subscribes some time after it starts: write until it reports a change.
    let mut n = 0;
    let out = wait_for(DEADLINE, "flotctl kv watch to print a change", || {
        n += 1;
        flotctl(&n1, false, &["kv", "set", "/w/k", &format!("v{n}")]);
        done.try_recv().map_err(|_| None)
    })
    .unwrap_or_else(|e| {
        kill(pid);
        panic!("{e}")
    })
    .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let printed = text(&out.stdout);
    assert!(
        printed.starts_with("[set] /w/k\nv"),
        "flotctl kv watch printed {printed:?}"
    );

    // Members: a fleetctl-style table, the same over D-Bus and over HTTP from the host.
    let table = flotctl(
        &n1,
        false,
        &[
            "member",
            "list",
            "--no-legend",
            "--fields",
            "name,role",
            "--full",
        ],
    );
    let mut rows: Vec<String> = text(&table.stdout)
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    rows.sort();
    assert_eq!(rows, ["node1 voter", "node2 voter", "node3 voter"]);
    let endpoint = format!("http://{}:2379", n2.addr());
    let over_http = std::process::Command::new(flotctl_path())
        .args([
            "--endpoint",
            &endpoint,
            "--output",
            "json",
            "member",
            "list",
        ])
        .output()
        .unwrap();
    assert!(over_http.status.success(), "{}", text(&over_http.stderr));
    let over_bus = flotctl(&n1, false, &["--output", "json", "member", "list"]);
    let names = |o: &Output| {
        let v: Value = serde_json::from_slice(&o.stdout).unwrap();
        let mut n: Vec<String> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|m| format!("{}={}", m["name"], m["id"]))
            .collect();
        n.sort();
        n
    };
    assert_eq!(names(&over_http), names(&over_bus));
    let http_get = std::process::Command::new(flotctl_path())
        .args(["--endpoint", &endpoint, "kv", "get", "/message"])
        .output()
        .unwrap();
    assert_eq!(text(&http_get.stdout), "Hello world!");
    let removed = flotctl(&n1, false, &["member", "remove", "node9"]);
    assert_eq!(removed.status.code(), Some(1));
    assert!(
        text(&removed.stderr).starts_with("flotctl: cannot remove member node9: no member node9"),
        "{}",
        text(&removed.stderr)
    );
}

/// Kills the process this test started (by its pid) when it did not end in time.
fn kill(pid: u32) {
    let _ = std::process::Command::new("kill")
        .arg(pid.to_string())
        .status();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unprivileged_user_reads_but_cannot_change_and_leader_changes_are_signalled() {
    let tb = Testbed::up(agents()).unwrap();
    let n1 = tb.node(1);
    call(
        &n1,
        false,
        "SetKey",
        &["ssa{sv}", "/message", "root wrote this", "0"],
    )
    .unwrap();

    // Reads are for everyone.
    let got = call(&n1, true, "GetKey", &["sb", "/message", "false"]).unwrap();
    assert_eq!(got[0][1], "root wrote this");
    assert!(call(&n1, true, "ListMembers", &[]).is_ok());
    assert!(!property(&n1, true, "Leader").as_str().unwrap().is_empty());
    let read = flotctl(&n1, true, &["kv", "get", "/message"]);
    assert_eq!(text(&read.stdout), "root wrote this");

    // Changes are not: the bus policy refuses them...
    let by_bus = dbus_send(&n1, true, "RemoveMember", &["string:node3"]);
    assert!(
        text(&by_bus.stderr).starts_with("Error org.freedesktop.DBus.Error.AccessDenied"),
        "{}",
        text(&by_bus.stderr)
    );
    let set = flotctl(&n1, true, &["kv", "set", "/message", "nobody wrote this"]);
    assert_eq!(set.status.code(), Some(4));
    let err = text(&set.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with(
            "Error:  the bus policy refuses this call: it changes the cluster and needs root or \
             the group flotilla"
        ),
        "{err}"
    );

    // ...and so does the agent when a permissive bus configuration lets the call through.
    n1.exec(&[
        "sh",
        "-c",
        "echo '<busconfig><policy user=\"nobody\"><allow send_destination=\"org.flotilla.Agent1\"/></policy></busconfig>' \
         > /etc/dbus-1/system.d/zz-permissive.conf",
    ])
    .unwrap();
    busctl(
        &n1,
        false,
        &[
            "call",
            "org.freedesktop.DBus",
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus",
            "ReloadConfig",
        ],
    )
    .unwrap();
    let by_agent = wait_for(DEADLINE, "the permissive policy to be loaded", || {
        let out = dbus_send(&n1, true, "RemoveMember", &["string:node3"]);
        let err = text(&out.stderr);
        if err.starts_with("Error org.freedesktop.DBus.Error.AccessDenied") {
            Err(Some(err))
        } else {
            Ok(err)
        }
    })
    .unwrap();
    assert_eq!(
        by_agent,
        "Error org.flotilla.Agent1.Error.AccessDenied: RemoveMember changes the cluster: it needs root or the group flotilla, and uid 65534 is neither"
    );
    let refused = call(
        &n1,
        true,
        "SetKey",
        &["ssa{sv}", "/message", "nobody wrote this", "0"],
    );
    assert!(refused.unwrap_err().contains("uid 65534 is neither"));
    let start = dbus_send(&n1, true, "StartUnit", &["string:hello.service"]);
    assert_eq!(
        text(&start.stderr),
        "Error org.flotilla.Agent1.Error.AccessDenied: StartUnit changes the cluster: it needs root or the group flotilla, and uid 65534 is neither"
    );
    let after = call(&n1, false, "GetKey", &["sb", "/message", "true"]).unwrap();
    assert_eq!(after[0][1], "root wrote this");
    assert_eq!(
        call(&n1, false, "ListMembers", &[]).unwrap()[0]
            .as_array()
            .unwrap()
            .len(),
        3
    );

    // LeaderChanged and PropertiesChanged(Leader) when the leader goes away.
    let leader = property(&n1, false, "Leader").as_str().unwrap().to_owned();
    let follower = tb.nodes().find(|n| n.name() != leader).unwrap();
    let bus = follower.bus().await.unwrap();
    let agent = Agent1Proxy::builder(&bus)
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await
        .unwrap();
    let mut changes = agent.receive_leader_change().await.unwrap();
    // Property streams follow PropertiesChanged through the proxy's property cache.
    let cached = Agent1Proxy::new(&bus).await.unwrap();
    let mut leader_prop = cached.receive_leader_changed().await;
    tb.node_named(&leader).unwrap().stop_agent().unwrap();
    // Without its agent, a machine's flotctl says so in one line.
    let orphan = flotctl(
        &tb.node_named(&leader).unwrap(),
        false,
        &["kv", "get", "/message"],
    );
    assert_eq!(orphan.status.code(), Some(4));
    let err = text(&orphan.stderr);
    assert!(
        err.contains("no agent on the system bus (org.flotilla.Agent1 has no owner)"),
        "{err}"
    );
    let new_leader = tokio::time::timeout(DEADLINE, async {
        while let Some(signal) = changes.next().await {
            let args = signal.args().unwrap();
            if !args.name().is_empty() && *args.name() != leader {
                return args.name().to_string();
            }
        }
        panic!("the LeaderChanged stream ended")
    })
    .await
    .expect("LeaderChanged to a new leader within the deadline");
    tokio::time::timeout(DEADLINE, async {
        while let Some(change) = leader_prop.next().await {
            if change.get().await.ok().as_deref() == Some(new_leader.as_str()) {
                return;
            }
        }
        panic!("the Leader property stream ended")
    })
    .await
    .expect("PropertiesChanged for Leader within the deadline");
    assert_eq!(agent.leader().await.unwrap(), new_leader);
}

const HELLO: &str = "[Unit]\nDescription=Hello Fleet\n\n[Service]\nExecStart=/usr/bin/bash -c \"while true; do echo 'Hello Fleet'; sleep 1; done\"\n";

/// The rows of `flotctl list-units --no-legend` on `node`, columns joined by one space.
fn list_units(node: &Node<'_>) -> Result<Vec<String>, Option<String>> {
    let out = flotctl(node, false, &["list-units", "--no-legend"]);
    if !out.status.success() {
        return Err(Some(text(&out.stderr)));
    }
    Ok(text(&out.stdout)
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn units_over_busctl_signal_their_states_and_flotctl_walks_them_over_dbus() {
    let tb = Testbed::up(agents()).unwrap();
    let (n1, n2, n3) = (tb.node(1), tb.node(2), tb.node(3));
    wait_for(DEADLINE, "three machines up", || {
        let m = call(&n1, false, "ListMachines", &[]).map_err(Some)?;
        let up = m[0]
            .as_array()
            .map_or(0, |a| a.iter().filter(|m| m[4] == "up").count());
        if up == 3 {
            Ok(())
        } else {
            Err(Some(m.to_string()))
        }
    })
    .unwrap();

    // A malformed unit is refused with a named error and file:line:column.
    let broken = dbus_send(
        &n1,
        false,
        "SubmitUnit",
        &[
            "string:broken.service",
            "string:[Service]\nExecStart=relative/path\n",
            "boolean:false",
        ],
    );
    let err = text(&broken.stderr);
    assert!(
        err.starts_with(
            "Error org.flotilla.Agent1.Error.InvalidUnit: unit 'broken.service' is malformed"
        ),
        "{err}"
    );
    assert!(err.contains("broken.service:2:"), "{err}");
    let missing = dbus_send(&n2, false, "StartUnit", &["string:nope.service"]);
    assert_eq!(
        text(&missing.stderr),
        "Error org.flotilla.Agent1.Error.UnitNotFound: unit 'nope.service' does not exist: submit it first"
    );

    // busctl monitor on node2 is ready once it sees a call of ours.
    let (mut mon, seen) = monitor(&n2);
    wait_for(DEADLINE, "busctl monitor to see a ListUnits call", || {
        call(&n2, false, "ListUnits", &[]).map_err(Some)?;
        while let Ok(msg) = seen.try_recv() {
            if msg["member"] == "ListUnits" {
                return Ok(());
            }
        }
        Err(None)
    })
    .unwrap();

    // Submit and start through busctl on node1.
    let submitted = call(
        &n1,
        false,
        "SubmitUnit",
        &["ssb", "hello.service", HELLO, "false"],
    )
    .unwrap();
    assert_eq!(submitted, json!([true]));
    let started = call(&n1, false, "StartUnit", &["s", "hello.service"]).unwrap();
    assert_eq!(started, json!([true]));

    // Every agent signals the state its machine reports: node2's agent too.
    let signal = wait_for(DEADLINE, "UnitStateChanged active on node2's bus", || {
        while let Ok(msg) = seen.try_recv() {
            if msg["member"] == "UnitStateChanged" && msg["payload"]["data"][3] == "active" {
                return Ok(msg);
            }
        }
        Err(None)
    });
    let _ = mon.kill();
    let _ = mon.wait();
    let signal = signal.unwrap();
    assert_eq!(signal["type"], "signal");
    assert_eq!(signal["path"], agent1::PATH);
    assert_eq!(signal["payload"]["type"], "sssss");
    let data = &signal["payload"]["data"];
    assert_eq!(data[0], "hello.service");
    assert_eq!(slice(data, 2, 5), json!(["loaded", "active", "running"]));
    let machine = data[1].as_str().unwrap().to_owned();
    assert!(
        tb.node_named(&machine).is_ok(),
        "signalled machine {machine}"
    );

    // ListUnits on node3 shows it active there, as fleetctl's columns.
    let rows = wait_for(DEADLINE, "ListUnits on node3 to show it active", || {
        let u = call(&n3, false, "ListUnits", &[]).map_err(Some)?;
        if u[0][0][4] == "active" {
            Ok(u)
        } else {
            Err(Some(u.to_string()))
        }
    })
    .unwrap();
    assert_eq!(
        slice(&rows[0][0], 0, 6),
        json!([
            "hello.service",
            machine,
            "launched",
            "loaded",
            "active",
            "running"
        ])
    );
    assert!(rows[0][0][8].as_u64().unwrap() > 0, "a main pid");
    let files = call(&n3, false, "ListUnitFiles", &[]).unwrap();
    assert_eq!(
        slice(&files[0][0], 2, 5),
        json!(["launched", "launched", [machine]])
    );

    // Status and journal lines come from the machine that runs it, asked from another one.
    let other = tb.nodes().find(|n| n.name() != machine).unwrap();
    let status = call(&other, false, "UnitStatus", &["s", "hello.service"]).unwrap();
    assert_eq!(status[0][0], machine);
    let out = status[0][1].as_str().unwrap();
    assert!(out.contains("hello.service - Hello Fleet"), "{out}");
    assert!(out.contains("Active: active (running)"), "{out}");
    let journal = wait_for(DEADLINE, "journal lines of hello.service", || {
        let j = call(&other, false, "JournalLines", &["su", "hello.service", "3"]).map_err(Some)?;
        if j[0][1].as_str().unwrap_or_default().contains("Hello Fleet") {
            Ok(j)
        } else {
            Err(Some(j.to_string()))
        }
    })
    .unwrap();
    assert_eq!(journal[0][0], machine);
    assert!(
        journal[0][1].as_str().unwrap().lines().count() <= 3,
        "{journal}"
    );

    // A rolling restart: the unit runs again with another main pid.
    let pid = rows[0][0][8].as_u64().unwrap();
    let restarted = call(&n2, false, "RestartUnit", &["s", "hello.service"]).unwrap();
    assert_eq!(restarted, json!([true]));
    wait_for(DEADLINE, "hello.service active with a new main pid", || {
        let u = call(&n3, false, "ListUnits", &[]).map_err(Some)?;
        let row = &u[0][0];
        if row[4] == "active" && row[8].as_u64().is_some_and(|p| p != 0 && p != pid) {
            Ok(())
        } else {
            Err(Some(row.to_string()))
        }
    })
    .unwrap();

    // An unprivileged user reads units but may not change them.
    let listed = call(&other, true, "ListUnits", &[]).unwrap();
    assert_eq!(listed[0][0][0], "hello.service");
    // ... and its status, without the journal lines, which only root, the flotilla group and
    // the journal's groups read (as journalctl allows).
    let status = call(&other, true, "UnitStatus", &["s", "hello.service"]).unwrap();
    let out = status[0][1].as_str().unwrap();
    assert!(out.contains("Active: active (running)"), "{out}");
    assert!(
        out.contains("Journal lines left out") && !out.contains(": Hello Fleet"),
        "{out}"
    );
    for (method, args) in [
        ("JournalLines", &["string:hello.service", "uint32:3"][..]),
        (
            "JournalAfter",
            &["string:hello.service", "string:", "uint32:3"][..],
        ),
    ] {
        let refused = dbus_send(&other, true, method, args);
        assert!(
            text(&refused.stderr).starts_with("Error org.flotilla.Agent1.Error.AccessDenied"),
            "{method}: {}",
            text(&refused.stderr)
        );
    }
    let refused = dbus_send(&other, true, "StartUnit", &["string:hello.service"]);
    assert!(
        text(&refused.stderr).starts_with("Error org.freedesktop.DBus.Error.AccessDenied"),
        "{}",
        text(&refused.stderr)
    );
    let by_flotctl = flotctl(&other, true, &["stop", "hello.service"]);
    assert_eq!(by_flotctl.status.code(), Some(1));
    let err = text(&by_flotctl.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("flotctl: the bus policy refuses this call"),
        "{err}"
    );

    // Destroyed through busctl: it runs nowhere, and the agents say so.
    call(&n1, false, "DestroyUnit", &["s", "hello.service"]).unwrap();
    wait_until(DEADLINE, "hello.service gone from ListUnits", || {
        call(&n2, false, "ListUnits", &[]).is_ok_and(|u| u == json!([[]]))
    })
    .unwrap();

    // The README's walk-through with flotctl, over D-Bus (no --endpoint).
    write(&n1, "/tmp/hello.service", HELLO);
    let start = flotctl(
        &n1,
        false,
        &["start", "--block-timeout", "60", "/tmp/hello.service"],
    );
    assert!(start.status.success(), "{}", text(&start.stderr));
    let rows = wait_for(
        DEADLINE,
        "flotctl list-units on node2 to show it running",
        || {
            let rows = list_units(&n2)?;
            if rows.len() == 1 && rows[0].ends_with(" active running") {
                Ok(rows)
            } else {
                Err(Some(format!("{rows:?}")))
            }
        },
    )
    .unwrap();
    let on = rows[0].split(' ').nth(1).unwrap().to_owned();
    assert!(tb.node_named(&on).is_ok(), "{rows:?}");
    let status = flotctl(&n3, false, &["status", "hello.service"]);
    assert!(status.status.success(), "{}", text(&status.stderr));
    assert!(text(&status.stdout).contains("Active: active (running)"));
    let journal = wait_for(DEADLINE, "flotctl journal to show lines", || {
        let j = flotctl(&n3, false, &["journal", "-n", "5", "hello.service"]);
        let out = text(&j.stdout);
        if j.status.success() && out.contains("Hello Fleet") {
            Ok(out)
        } else {
            Err(Some(format!("{out} {}", text(&j.stderr))))
        }
    })
    .unwrap();
    assert!(journal.lines().count() <= 5, "{journal}");

    // The same answers over HTTP (--endpoint) as over D-Bus.
    let endpoint = format!("http://{}:2379", n2.addr());
    for args in [
        &["--output", "json", "list-unit-files"][..],
        &["list-machines", "--full"][..],
        &[
            "list-units",
            "--fields",
            "unit,machine,load,desired,hash",
            "--full",
        ][..],
    ] {
        let bus = flotctl(&n2, false, args);
        let mut over_http = vec!["--endpoint", &endpoint];
        over_http.extend_from_slice(args);
        let http = flotctl(&n2, false, &over_http);
        assert!(bus.status.success(), "{}", text(&bus.stderr));
        assert_eq!(text(&bus.stdout), text(&http.stdout), "{args:?}");
    }

    let destroy = flotctl(&n1, false, &["destroy", "hello.service"]);
    assert_eq!(text(&destroy.stdout), "Destroyed hello.service");
    wait_for(DEADLINE, "flotctl list-units to show nothing", || {
        let rows = list_units(&n2)?;
        if rows.is_empty() {
            Ok(())
        } else {
            Err(Some(format!("{rows:?}")))
        }
    })
    .unwrap();
    let gone = flotctl(&n2, false, &["status", "hello.service"]);
    assert_eq!(gone.status.code(), Some(1));
    assert_eq!(
        text(&gone.stderr),
        "flotctl: unit 'hello.service' does not exist: submit it first"
    );
}
