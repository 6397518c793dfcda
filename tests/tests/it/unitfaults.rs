//! Units through faults on the testbed: several units launched on three machines that run real
//! systemd; the machine running one of them is partitioned from the other two, then healed;
//! then a machine is powered off and on.
//!
//! Checked after each fault is undone: every unit is active on exactly one machine, by
//! `systemctl` inside every machine (not the cluster's word for it), and every machine's view of
//! the cluster (`/flotilla/v1/units`: assigned machine and reported active state) agrees. While
//! a machine is cut off, its units must be rescheduled on, and run by, one machine of the
//! majority side, which the majority's views name; while one is off, the same on the machines
//! left.
//!
//! A second test kills the leader's agent while units are being submitted and placed: every
//! unit still ends up on exactly one machine, and none ever ran on two at once.
//!
//! A partitioned machine cannot learn that its units moved, so it keeps running them until it is
//! healed (as fleet did): the test prints how long after the heal the last duplicate stopped,
//! and how long the majority took to reschedule; figures, not assertions.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use flotilla_tests::testbed::{Node, Options, Testbed, wait_for};

use crate::units::{flotctl, text, wait_machines_up, write};

/// How long a fault's consequences may take (a lost machine is declared after 5 s).
const DEADLINE: Duration = Duration::from_secs(90);
/// The units launched: more than machines, so that some machine runs two.
pub(crate) const UNITS: [&str; 4] = [
    "fault-a.service",
    "fault-b.service",
    "fault-c.service",
    "fault-d.service",
];
const UNIT_TEXT: &str =
    "[Unit]\nDescription=a unit through faults\n\n[Service]\nExecStart=/usr/bin/sleep infinity\n";

/// What `node` says of every unit: name -> (assigned machines, machines reporting it active).
type View = BTreeMap<String, (Vec<String>, Vec<String>)>;

/// The cluster's view from `node`'s own agent.
fn view(node: &Node<'_>) -> Result<View, String> {
    let body = node
        .stdout(&[
            "curl",
            "-sf",
            "--max-time",
            "5",
            "http://127.0.0.1:2379/flotilla/v1/units",
        ])
        .map_err(|e| e.to_string())?;
    let json: serde_json::Value =
        serde_json::from_str(&body).map_err(|e| format!("{}: {e}: {body}", node.name()))?;
    let strings = |v: &serde_json::Value, field: Option<&str>| -> Vec<String> {
        let mut out: Vec<String> = v
            .as_array()
            .into_iter()
            .flatten()
            .filter(|s| field.is_none_or(|_| s["active"] == "active"))
            .filter_map(|s| match field {
                Some(f) => s[f].as_str(),
                None => s.as_str(),
            })
            .map(str::to_owned)
            .collect();
        out.sort();
        out
    };
    Ok(json["units"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|u| {
            let name = u["name"].as_str().unwrap_or_default().to_owned();
            let assigned = strings(&u["machines"], None);
            let active = strings(&u["states"], Some("machine"));
            (name, (assigned, active))
        })
        .collect())
}

/// The machines whose own systemd runs `unit` now, sorted (a machine that is off runs nothing).
fn systemd_runs(machines: &[Node<'_>], unit: &str) -> Vec<String> {
    let mut on: Vec<String> = machines
        .iter()
        .filter(|n| {
            n.stdout(&["systemctl", "is-active", unit])
                .is_ok_and(|s| s == "active")
        })
        .map(Node::name)
        .collect();
    on.sort();
    on
}

/// Waits until every unit runs on exactly one of `running` (by their systemd; the machines not
/// in it run none) and every machine of `asked` assigns it there and reports it active there;
/// returns unit -> machine. `stale`: a machine that is off, whose last report (active) the
/// views may still show beside the real one.
pub(crate) fn wait_exactly_once(
    tb: &Testbed,
    units: &[&str],
    running: &[Node<'_>],
    asked: &[Node<'_>],
    stale: Option<&str>,
    what: &str,
) -> BTreeMap<String, String> {
    let all: Vec<Node<'_>> = tb.nodes().collect();
    wait_for(DEADLINE, what, || {
        let mut placed = BTreeMap::new();
        for &unit in units {
            let on = systemd_runs(&all, unit);
            let [machine] = on.as_slice() else {
                return Err(Some(format!("systemd runs {unit} on {on:?}")));
            };
            if !running.iter().any(|n| n.name() == *machine) {
                return Err(Some(format!("{unit} runs on {machine}")));
            }
            placed.insert(unit.to_owned(), machine.clone());
        }
        for node in asked {
            let seen = view(node).map_err(Some)?;
            for (unit, machine) in &placed {
                let mut with_stale = vec![machine.clone()];
                with_stale.extend(stale.map(str::to_owned));
                with_stale.sort();
                let ok = seen.get(unit).is_some_and(|(assigned, active)| {
                    *assigned == [machine.clone()]
                        && (*active == [machine.clone()] || *active == with_stale)
                });
                if !ok {
                    return Err(Some(format!(
                        "{} says {unit} is (assigned, active) {:?}; systemd runs it on {machine}",
                        node.name(),
                        seen.get(unit)
                    )));
                }
            }
        }
        Ok(placed)
    })
    .unwrap_or_else(|e| panic!("{e}"))
}

/// The units `placed` on `machine`.
fn units_on(placed: &BTreeMap<String, String>, machine: &str) -> Vec<String> {
    placed
        .iter()
        .filter(|(_, m)| *m == machine)
        .map(|(u, _)| u.clone())
        .collect()
}

/// Launches [`UNITS`] through node 1 once every machine's agent is up; returns where each runs.
pub(crate) fn launch_units(tb: &Testbed, nodes: &[Node<'_>]) -> BTreeMap<String, String> {
    for n in nodes {
        n.wait_active("flotillad.service", DEADLINE).unwrap();
    }
    wait_machines_up(&nodes[0], nodes.len());
    let mut argv = vec!["start".to_owned(), "--block-timeout".into(), "60".into()];
    for unit in UNITS {
        let path = format!("/tmp/{unit}");
        write(&nodes[0], &path, UNIT_TEXT);
        argv.push(path);
    }
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let out = flotctl(&nodes[0], &argv);
    assert!(out.status.success(), "start: {}", text(&out));
    wait_exactly_once(tb, &UNITS, nodes, nodes, None, "every unit started once")
}

#[test]
fn units_run_on_exactly_one_machine_after_partitions_and_power_loss() {
    let tb = Testbed::up(Options::new(3).agent(Options::default_agent())).unwrap();
    let nodes: Vec<Node<'_>> = tb.nodes().collect();
    let placed = launch_units(&tb, &nodes);

    // Cut off the machine running the first unit: the majority reschedules its units.
    let cut_name = placed[UNITS[0]].clone();
    let moved = units_on(&placed, &cut_name);
    let (cut, majority): (Vec<Node<'_>>, Vec<Node<'_>>) =
        tb.nodes().partition(|n| n.name() == cut_name);
    let cut = &cut[0];
    let partitioned = Instant::now();
    cut.partition().unwrap();
    wait_for(
        DEADLINE,
        "the cut-off machine's units run on the majority side",
        || {
            for unit in &moved {
                let on = systemd_runs(&majority, unit);
                let [machine] = on.as_slice() else {
                    return Err(Some(format!("the majority runs {unit} on {on:?}")));
                };
                // The cut-off machine's last report (active) stays until it reports again:
                // true, as it runs its copy until it is healed.
                for node in &majority {
                    let seen = view(node).map_err(Some)?;
                    let ok = seen.get(unit).is_some_and(|(assigned, active)| {
                        *assigned == [machine.clone()] && active.contains(machine)
                    });
                    if !ok {
                        return Err(Some(format!(
                            "{} says {unit} is {:?}",
                            node.name(),
                            seen.get(unit)
                        )));
                    }
                }
            }
            Ok(())
        },
    )
    .unwrap();
    let rescheduled_after = partitioned.elapsed();
    let duplicates: Vec<&String> = moved
        .iter()
        .filter(|u| systemd_runs(std::slice::from_ref(cut), u) == [cut_name.clone()])
        .collect();

    // Heal: the cut-off machine learns that its units moved and stops its copies.
    let healed = Instant::now();
    cut.heal().unwrap();
    wait_for(DEADLINE, "the healed machine stops its copies", || {
        let left: Vec<&String> = moved
            .iter()
            .filter(|u| !systemd_runs(std::slice::from_ref(cut), u).is_empty())
            .collect();
        if left.is_empty() {
            Ok(())
        } else {
            Err(Some(format!("{cut_name} still runs {left:?}")))
        }
    })
    .unwrap();
    let duplicates_stopped_after = healed.elapsed();
    let placed = wait_exactly_once(
        &tb,
        &UNITS,
        &nodes,
        &nodes,
        None,
        "every unit once after the heal",
    );
    let converged_after = healed.elapsed();

    // Power off the machine that runs the most units, then on again.
    let off_name = nodes
        .iter()
        .map(Node::name)
        .max_by_key(|m| units_on(&placed, m).len())
        .unwrap();
    let off = tb.node_named(&off_name).unwrap();
    let lost = units_on(&placed, &off_name);
    let survivors: Vec<Node<'_>> = tb.nodes().filter(|n| n.name() != off_name).collect();
    let powered_off = Instant::now();
    off.power_off().unwrap();
    wait_exactly_once(
        &tb,
        &UNITS,
        &survivors,
        &survivors,
        Some(&off_name),
        "every unit once while a machine is off",
    );
    let moved_after_power_off = powered_off.elapsed();
    let shown_on_off: Vec<String> = view(&survivors[0])
        .unwrap_or_default()
        .into_iter()
        .filter(|(_, (_, active))| active.contains(&off_name))
        .map(|(unit, _)| unit)
        .collect();
    off.power_on().unwrap();
    off.wait_active("flotillad.service", DEADLINE).unwrap();
    wait_machines_up(&survivors[0], 3);
    let after_power_on = wait_exactly_once(
        &tb,
        &UNITS,
        &nodes,
        &nodes,
        None,
        "every unit once after power on",
    );

    eprintln!(
        "units: {} on 3 machines {placed:?}\n\
         partition of {cut_name} (ran {moved:?}): rescheduled on the majority after {:.1} s; \
         {} of them still ran on {cut_name} until the heal; its copies stopped {:.1} s after the \
         heal, every view agreed {:.1} s after it\n\
         power-off of {off_name} (ran {lost:?}): moved after {:.1} s, while it was off the \
         cluster still showed {shown_on_off:?} active on it; after power-on: {after_power_on:?}",
        UNITS.len(),
        rescheduled_after.as_secs_f64(),
        duplicates.len(),
        duplicates_stopped_after.as_secs_f64(),
        converged_after.as_secs_f64(),
        moved_after_power_off.as_secs_f64(),
    );
}

/// Whether the agent of `node` says it leads.
fn leads(node: &Node<'_>) -> bool {
    node.stdout(&[
        "curl",
        "-sf",
        "--max-time",
        "2",
        "http://127.0.0.1:2379/v2/stats/self",
    ])
    .ok()
    .and_then(|body| serde_json::from_str::<serde_json::Value>(&body).ok())
    .is_some_and(|j| j["state"] == "StateLeader")
}

/// Units submitted while the leader's agent is killed: the scheduler's plans are fenced (a plan
/// made by a deposed leader never lands), so whatever the new leader plans, every unit ends up
/// assigned to and running on exactly one machine, and no machine's systemd ever ran one that
/// another ran too (sampled throughout, by `systemctl` in every machine).
#[test]
fn units_placed_across_a_leader_change_run_exactly_once() {
    const COUNT: usize = 24;
    let tb = Testbed::up(Options::new(3).agent(Options::default_agent())).unwrap();
    let nodes: Vec<Node<'_>> = tb.nodes().collect();
    for n in &nodes {
        n.wait_active("flotillad.service", DEADLINE).unwrap();
    }
    wait_machines_up(&nodes[0], 3);
    let leader = wait_for(DEADLINE, "a leader", || {
        nodes
            .iter()
            .position(leads)
            .ok_or_else(|| Some("no agent says it leads".to_owned()))
    })
    .unwrap();
    let via = &nodes[(leader + 1) % nodes.len()];
    let names: Vec<String> = (0..COUNT).map(|i| format!("lc-{i}.service")).collect();
    let units: Vec<&str> = names.iter().map(String::as_str).collect();
    let body = serde_json::json!({ "text": UNIT_TEXT, "desired": "launched" }).to_string();

    let twice = std::sync::Mutex::new(Vec::new());
    let submitted = std::sync::atomic::AtomicUsize::new(0);
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        // The submissions, each retried until it is answered (a PUT of the same text and
        // desired state is idempotent): some meet the leader's death.
        let submitter = scope.spawn(|| {
            for unit in &units {
                let url = format!("http://127.0.0.1:2379/flotilla/v1/units/{unit}");
                wait_for(DEADLINE, "a submission to be answered", || {
                    let args = [
                        "curl",
                        "-sf",
                        "--max-time",
                        "10",
                        "-X",
                        "PUT",
                        "-H",
                        "Content-Type: application/json",
                        "-d",
                        &body,
                        &url,
                    ];
                    match via.exec(&args) {
                        Ok(out) if out.status.success() => Ok(()),
                        Ok(out) => Err(Some(format!("{unit}: {}", text(&out)))),
                        Err(e) => Err(Some(e.to_string())),
                    }
                })
                .unwrap();
                submitted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        });
        // Meanwhile, no unit may ever run on two machines.
        let sampler = scope.spawn(|| {
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                let mut on: BTreeMap<String, Vec<String>> = BTreeMap::new();
                for node in &nodes {
                    let Ok(list) = node.stdout(&[
                        "systemctl",
                        "list-units",
                        "--state=active",
                        "--plain",
                        "--no-legend",
                        "lc-*",
                    ]) else {
                        continue;
                    };
                    for unit in list.lines().filter_map(|l| l.split_whitespace().next()) {
                        on.entry(unit.to_owned()).or_default().push(node.name());
                    }
                }
                for (unit, machines) in on {
                    if machines.len() > 1 {
                        twice
                            .lock()
                            .unwrap()
                            .push(format!("{unit} on {machines:?}"));
                    }
                }
            }
        });
        // Kill the leader's agent once a third of the units are in, then start it again.
        wait_for(DEADLINE, "a third of the units submitted", || {
            if submitted.load(std::sync::atomic::Ordering::SeqCst) >= COUNT / 3 {
                Ok(())
            } else {
                Err(None)
            }
        })
        .unwrap();
        let out = nodes[leader]
            .exec(&["systemctl", "kill", "-s", "KILL", "flotillad.service"])
            .unwrap();
        assert!(out.status.success(), "systemctl kill: {}", text(&out));
        wait_for(DEADLINE, "the killed agent to be gone", || {
            match nodes[leader].unit_state("flotillad.service") {
                Ok(s) if s == "inactive" || s == "failed" => Ok(()),
                Ok(s) => Err(Some(s)),
                Err(e) => Err(Some(e.to_string())),
            }
        })
        .unwrap();
        // Another machine leads (and plans) before the old leader is back.
        let successor = wait_for(DEADLINE, "another leader", || {
            nodes
                .iter()
                .enumerate()
                .find(|(i, n)| *i != leader && leads(n))
                .map(|(_, n)| n.name())
                .ok_or(None)
        })
        .unwrap();
        let out = nodes[leader]
            .exec(&["systemctl", "start", "flotillad.service"])
            .unwrap();
        assert!(out.status.success(), "systemctl start: {}", text(&out));
        submitter.join().unwrap();
        let placed = wait_exactly_once(
            &tb,
            &units,
            &nodes,
            &nodes,
            None,
            "every unit once after the leader change",
        );
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        sampler.join().unwrap();
        let new_leader = nodes.iter().position(leads);
        let mut per_machine: BTreeMap<String, usize> = BTreeMap::new();
        for machine in placed.values() {
            *per_machine.entry(machine.clone()).or_default() += 1;
        }
        eprintln!(
            "leader change: {} killed after {} of {COUNT} units were submitted, {successor} led \
             next, now {:?} leads; placed {per_machine:?}",
            nodes[leader].name(),
            COUNT / 3,
            new_leader.map(|i| nodes[i].name())
        );
    });
    let twice = twice.into_inner().unwrap();
    assert!(
        twice.is_empty(),
        "units ran on two machines at once: {twice:?}"
    );
}
