//! SIGHUP (`systemctl reload`) applies what can change while the agent runs: a machine's
//! `[machine] metadata` reaches the cluster with the next heartbeat, and units are placed by it.

use std::time::Duration;

use flotilla_tests::testbed::{Options, Testbed, wait_for};

use crate::units::{flotctl, text, wait_machines_up, write};

const DEADLINE: Duration = Duration::from_secs(60);
const PINNED: &str =
    "[Service]\nExecStart=/bin/sleep infinity\n\n[X-Fleet]\nMachineMetadata=role=reloaded\n";

#[test]
fn sighup_applies_new_machine_metadata_and_units_follow_it() {
    let tb = Testbed::up(Options::new(2).agent(Options::default_agent())).unwrap();
    let (n1, n2) = (tb.node(1), tb.node(2));
    for n in tb.nodes() {
        n.wait_active("flotillad.service", DEADLINE).unwrap();
    }
    wait_machines_up(&n1, 2);

    // No machine has the metadata yet: the unit waits, with the reason.
    write(&n1, "/tmp/pinned.service", PINNED);
    let out = flotctl(&n1, &["start", "--no-block", "/tmp/pinned.service"]);
    assert!(out.status.success(), "{}", text(&out));

    // node2's config gains role=reloaded; SIGHUP, and every machine sees it.
    let edit = n2
        .exec(&[
            "sed",
            "-i",
            r#"s/^metadata = .*/metadata = { node = "node2", role = "reloaded" }/"#,
            "/etc/flotilla/flotilla.toml",
        ])
        .unwrap();
    assert!(edit.status.success(), "{}", text(&edit));
    let hup = n2
        .exec(&["systemctl", "kill", "-s", "HUP", "flotillad.service"])
        .unwrap();
    assert!(hup.status.success(), "{}", text(&hup));
    wait_for(DEADLINE, "node1 to list node2's new metadata", || {
        let out = flotctl(&n1, &["list-machines", "--no-legend"]);
        let shown = text(&out);
        if shown
            .lines()
            .any(|l| l.contains("\tnode2\t") && l.contains("role=reloaded"))
        {
            Ok(())
        } else {
            Err(Some(shown))
        }
    })
    .unwrap();
    let journal = n2.journal(Some("flotillad.service"), 50);
    assert!(journal.contains("machine.metadata is now"), "{journal}");
    assert_eq!(
        n2.stdout(&["systemctl", "is-active", "flotillad.service"])
            .unwrap()
            .trim(),
        "active",
        "the agent keeps running"
    );

    // The waiting unit is placed on node2 now, and runs there.
    wait_for(DEADLINE, "pinned.service active on node2", || {
        let state = n2
            .stdout(&["systemctl", "is-active", "pinned.service"])
            .unwrap_or_default();
        if state.trim() == "active" {
            Ok(())
        } else {
            Err(Some(state))
        }
    })
    .unwrap();
}
