//! The agents on machines that run real systemd: `flotillad` as a Type=notify service in every
//! testbed machine, driven by the real `etcdctl` (v2) from inside the machines, through a power
//! cycle of one machine.

use std::process::Output;
use std::time::Duration;

use flotilla_tests::testbed::{Node, Options, Testbed, wait_for};

const DEADLINE: Duration = Duration::from_secs(30);

/// `ETCDCTL_API=2 etcdctl ARGS...` inside `node`, talking to its own agent on 127.0.0.1:2379.
fn etcdctl(node: &Node<'_>, args: &[&str]) -> Output {
    let mut argv = vec!["etcdctl"];
    argv.extend_from_slice(args);
    node.command(&argv)
        .expect("machine is running")
        .env("ETCDCTL_API", "2")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("etcdctl runs")
}

/// Waits until `etcdctl get KEY` on `node` prints `want`.
fn wait_get(node: &Node<'_>, key: &str, want: &str) {
    wait_for(
        DEADLINE,
        &format!("{key} = {want} on {}", node.name()),
        || {
            let out = etcdctl(node, &["get", key]);
            let got = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            if out.status.success() && got == want {
                Ok(())
            } else {
                Err(Some(format!(
                    "{} {}",
                    got,
                    String::from_utf8_lossy(&out.stderr).trim()
                )))
            }
        },
    )
    .unwrap();
}

#[test]
fn etcdctl_set_on_one_machine_get_on_another_across_a_power_cycle() {
    let tb = Testbed::up(Options::new(3).agent(Options::default_agent())).unwrap();
    let (n1, n2, n3) = (tb.node(1), tb.node(2), tb.node(3));

    // The agent is a notify service: active means it told systemd READY=1.
    for n in tb.nodes() {
        assert_eq!(n.unit_state("flotillad.service").unwrap(), "active");
    }

    let set = etcdctl(&n1, &["set", "/message", "Hello world!"]);
    assert!(
        set.status.success(),
        "etcdctl set failed: {}",
        String::from_utf8_lossy(&set.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&set.stdout), "Hello world!\n");
    wait_get(&n2, "/message", "Hello world!");
    wait_get(&n3, "/message", "Hello world!");

    // One machine of three goes away (whichever it is, leader or not): the others keep serving
    // writes, and the machine catches up when it is back.
    n1.power_off().unwrap();
    wait_for(DEADLINE, "a write with n1 off", || {
        let out = etcdctl(&n2, &["set", "/after", "power-off"]);
        if out.status.success() {
            Ok(())
        } else {
            Err(Some(String::from_utf8_lossy(&out.stderr).trim().to_owned()))
        }
    })
    .unwrap();
    wait_get(&n3, "/after", "power-off");
    n1.power_on().unwrap();
    n1.wait_active("flotillad.service", DEADLINE).unwrap();
    wait_get(&n1, "/after", "power-off");
    wait_get(&n1, "/message", "Hello world!");
}
