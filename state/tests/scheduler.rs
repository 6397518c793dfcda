//! The scheduler against fleet's rules, one table row per option, and its invariants as
//! properties: deterministic, a fixpoint once applied, one machine per non-global unit,
//! conflicts never violated, a lost machine's units moved when there is room.

use std::collections::BTreeMap;

use flotilla_state::machines::{Change as MachineChange, Machine, Status};
use flotilla_state::scheduler::{Plan, SchedulerConfig, plan};
use flotilla_state::units::{Change, Desired, glob_matches};
use flotilla_state::{Command, Response, State};
use proptest::prelude::*;

const NOW: u64 = 1_795_558_649_452;

/// The machine id of a test machine: its name, zero-padded to 32 characters.
fn machine_id(name: &str) -> String {
    format!("{name:0>32}")
}

fn apply(state: &mut State, cmd: Command) {
    match state.apply(&cmd) {
        Response::Unit(Err(e)) => panic!("{cmd:?}: {e}"),
        Response::Unit(Ok(_)) | Response::Machine(_) => {}
        other => panic!("{cmd:?}: {other:?}"),
    }
}

/// Registers machine `name` with `metadata` (`k=v,k=v`) and, if given, its capacity
/// (memory in MiB, CPUs).
fn add_machine(state: &mut State, name: &str, metadata: &str, capacity: Option<(u64, u32)>) {
    let metadata: BTreeMap<String, String> = metadata
        .split(',')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').expect("k=v");
            (k.to_owned(), v.to_owned())
        })
        .collect();
    apply(
        state,
        Command::Machine(MachineChange::Up {
            machine: Machine {
                name: name.into(),
                machine_id: machine_id(name),
                addr: "10.213.0.11".into(),
                metadata,
                status: Status::Up,
                since_ms: 0,
            },
            now_ms: NOW,
        }),
    );
    if let Some((mib, cpus)) = capacity {
        apply(
            state,
            Command::Machine(MachineChange::Capacity {
                name: name.into(),
                memory_bytes: mib << 20,
                cpus,
            }),
        );
    }
}

/// Submits and starts `name`. `body` is `[X-Fleet]` lines, then optionally `|` and more
/// `[Service]` lines.
fn add_unit(state: &mut State, name: &str, body: &str) {
    let (fleet, service) = body.split_once('|').unwrap_or((body, ""));
    let text = format!(
        "[Service]\nExecStart=/bin/sleep infinity\n{}\n[X-Fleet]\n{}\n",
        service.replace(';', "\n"),
        fleet.replace(';', "\n")
    );
    apply(
        state,
        Command::Unit(Change::Submit {
            name: name.into(),
            text: Some(text),
            replace: false,
        }),
    );
    apply(
        state,
        Command::Unit(Change::SetDesired {
            name: name.into(),
            desired: Desired::Launched,
        }),
    );
}

/// Plans, applies the plan (as the leader proposes it: one atomic, fenced command), and
/// checks that planning again changes nothing.
fn settle(state: &mut State, config: &SchedulerConfig) -> Plan {
    let p = plan(state, config);
    if let Some(cmd) = p.command() {
        apply(state, cmd);
    }
    let again = plan(state, config);
    assert_eq!(again.commands, [], "a second plan is empty");
    assert_eq!(again.unschedulable, p.unschedulable);
    let in_state: Vec<(String, String)> = state
        .units
        .unschedulable
        .iter()
        .map(|(u, r)| (u.clone(), r.clone()))
        .collect();
    assert_eq!(in_state, p.unschedulable, "every machine sees the reasons");
    p
}

/// Where each unit is: `n1`, `n1 n2`, or `!reason` when unschedulable.
fn placements(state: &State, p: &Plan) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (unit, machines) in &state.units.assignments {
        out.insert(
            unit.clone(),
            machines.iter().cloned().collect::<Vec<_>>().join(" "),
        );
    }
    for (unit, reason) in &p.unschedulable {
        let entry = out.entry(unit.clone()).or_default();
        if !entry.is_empty() {
            entry.push(' ');
        }
        entry.push('!');
        entry.push_str(reason);
    }
    out
}

struct Row {
    title: &'static str,
    /// `name metadata [mem_mib cpus]`, metadata `-` for none.
    machines: &'static [&'static str],
    /// `(name, body)` as [`add_unit`] takes it, submitted and started in this order, with a
    /// plan applied after each when `one_by_one`.
    units: &'static [(&'static str, &'static str)],
    one_by_one: bool,
    max_units: Option<usize>,
    want: &'static [(&'static str, &'static str)],
}

fn run(row: &Row) {
    let mut state = State::default();
    for m in row.machines {
        let parts: Vec<&str> = m.split_whitespace().collect();
        let metadata = if parts[1] == "-" { "" } else { parts[1] };
        let capacity =
            (parts.len() == 4).then(|| (parts[2].parse().unwrap(), parts[3].parse().unwrap()));
        add_machine(&mut state, parts[0], metadata, capacity);
    }
    let config = SchedulerConfig {
        max_units_per_machine: row.max_units,
    };
    let mut p = Plan::default();
    for (name, body) in row.units {
        add_unit(&mut state, name, body);
        if row.one_by_one {
            p = settle(&mut state, &config);
        }
    }
    if !row.one_by_one {
        p = settle(&mut state, &config);
    }
    let got = placements(&state, &p);
    let want: BTreeMap<String, String> = row
        .want
        .iter()
        .map(|(u, w)| ((*u).to_owned(), (*w).to_owned()))
        .collect();
    assert_eq!(got, want, "{}", row.title);
}

#[test]
fn fleet_options() {
    let rows = [
        Row {
            title: "least loaded, ties by machine name",
            machines: &["n2 -", "n1 -", "n3 -"],
            units: &[
                ("a.service", ""),
                ("b.service", ""),
                ("c.service", ""),
                ("d.service", ""),
            ],
            one_by_one: false,
            max_units: None,
            want: &[
                ("a.service", "n1"),
                ("b.service", "n2"),
                ("c.service", "n3"),
                ("d.service", "n1"),
            ],
        },
        Row {
            title: "MachineID",
            machines: &["n1 -", "n2 -"],
            units: &[
                ("a.service", "MachineID=000000000000000000000000000000n2"),
                ("b.service", "MachineID=000000000000000000000000000000n2"),
                ("c.service", "MachineID=ffffffffffffffffffffffffffffffff"),
            ],
            one_by_one: false,
            max_units: None,
            want: &[
                ("a.service", "n2"),
                ("b.service", "n2"),
                (
                    "c.service",
                    "!no up machine has MachineID=ffffffffffffffffffffffffffffffff",
                ),
            ],
        },
        Row {
            title: "the old name X-ConditionMachineID",
            machines: &["n1 -", "n2 -"],
            units: &[(
                "a.service",
                "X-ConditionMachineID=000000000000000000000000000000n2",
            )],
            one_by_one: false,
            max_units: None,
            want: &[("a.service", "n2")],
        },
        Row {
            title: "MachineMetadata: same key OR, different keys AND",
            machines: &[
                "n1 region=east,disk=ssd",
                "n2 region=west,disk=hdd",
                "n3 region=west,disk=ssd",
            ],
            units: &[
                (
                    "a.service",
                    "MachineMetadata=region=east;MachineMetadata=region=west;MachineMetadata=disk=ssd",
                ),
                ("b.service", "MachineMetadata=region=west"),
                ("c.service", "MachineMetadata=\"region=west\" \"disk=hdd\""),
                ("d.service", "MachineMetadata=region=north"),
            ],
            one_by_one: false,
            max_units: None,
            want: &[
                ("a.service", "n1"),
                ("b.service", "n2"),
                ("c.service", "n2"),
                (
                    "d.service",
                    "!no machine matches MachineMetadata=region=north",
                ),
            ],
        },
        Row {
            title: "MachineOf follows its peer, waits for it, and follows templates' instances",
            machines: &["n1 -", "n2 -", "n3 -"],
            units: &[
                ("a.service", ""),
                ("b.service", ""),
                ("c.service", "MachineOf=b.service"),
                ("d.service", "MachineOf=ghost.service"),
                ("e.service", "MachineOf=a.service;MachineOf=b.service"),
            ],
            one_by_one: false,
            max_units: None,
            want: &[
                ("a.service", "n1"),
                ("b.service", "n2"),
                ("c.service", "n2"),
                (
                    "d.service",
                    "!waits for MachineOf=ghost.service, which does not exist",
                ),
                (
                    "e.service",
                    "!no machine that runs MachineOf=a.service b.service can take it",
                ),
            ],
        },
        Row {
            title: "MachineOf placed before its peer in name order still lands with it",
            machines: &["n1 -", "n2 -"],
            units: &[
                ("x.service", ""),
                ("a.service", "MachineOf=z.service"),
                ("z.service", ""),
            ],
            one_by_one: false,
            max_units: None,
            want: &[
                ("a.service", "n2"),
                ("x.service", "n1"),
                ("z.service", "n2"),
            ],
        },
        Row {
            title: "Conflicts both ways",
            machines: &["n1 -", "n2 -"],
            units: &[
                ("web@1.service", "Conflicts=web@*.service"),
                ("web@2.service", "Conflicts=web@*.service"),
                ("web@3.service", "Conflicts=web@*.service"),
                ("other.service", ""),
            ],
            one_by_one: false,
            max_units: None,
            want: &[
                ("other.service", "n1"),
                ("web@1.service", "n2"),
                ("web@2.service", "n1"),
                (
                    "web@3.service",
                    "!conflicts with web@1.service, web@2.service on every candidate machine",
                ),
            ],
        },
        Row {
            title: "Conflicts of a unit already placed keep a newcomer away",
            machines: &["n1 -", "n2 -"],
            units: &[
                ("lonely.service", "Conflicts=*"),
                ("b.service", ""),
                ("c.service", ""),
            ],
            one_by_one: true,
            max_units: None,
            want: &[
                ("b.service", "n2"),
                ("c.service", "n2"),
                ("lonely.service", "n1"),
            ],
        },
        Row {
            title: "Global on every machine that matches",
            machines: &["n1 role=web", "n2 role=db", "n3 role=web"],
            units: &[
                ("g.service", "Global=true;MachineMetadata=role=web"),
                ("all.service", "Global=yes"),
                ("none.service", "Global=true;MachineMetadata=role=cache"),
            ],
            one_by_one: false,
            max_units: None,
            want: &[
                ("all.service", "n1 n2 n3"),
                ("g.service", "n1 n3"),
                (
                    "none.service",
                    "!no machine matches MachineMetadata=role=cache",
                ),
            ],
        },
        Row {
            title: "Replaces: the replaced unit moves away",
            machines: &["n1 -", "n2 -"],
            units: &[
                ("old.service", "MachineID=000000000000000000000000000000n1"),
                (
                    "new.service",
                    "Replaces=old.service;MachineID=000000000000000000000000000000n1",
                ),
                ("free.service", "Replaces=nothing.service"),
            ],
            one_by_one: true,
            max_units: None,
            want: &[
                ("free.service", "n2"),
                ("new.service", "n1"),
                (
                    "old.service",
                    "!is replaced by new.service on every candidate machine",
                ),
            ],
        },
        Row {
            title: "Replaces moves the replaced unit to another machine",
            machines: &["n1 -", "n2 -"],
            units: &[
                ("old.service", ""),
                ("pad.service", ""),
                ("new.service", "Replaces=old*"),
            ],
            one_by_one: true,
            max_units: None,
            want: &[
                ("new.service", "n1"),
                ("old.service", "n2"),
                ("pad.service", "n2"),
            ],
        },
        Row {
            title: "memory and CPUs against capacity",
            machines: &["n1 - 1024 2", "n2 - 512 1"],
            units: &[
                ("big.service", "|MemoryMax=768M"),
                ("cpu.service", "|CPUQuota=150%"),
                ("huge.service", "|MemoryMax=2G"),
                ("greedy.service", "|CPUQuota=300%"),
                ("half.service", "|MemoryMax=50%"),
            ],
            one_by_one: false,
            max_units: None,
            want: &[
                ("big.service", "n1"),
                ("cpu.service", "n1"),
                ("greedy.service", "!needs 3 CPUs, most free is 1 on n2"),
                ("half.service", "n2"),
                (
                    "huge.service",
                    "!needs 2G memory, largest free is 256M on n1",
                ),
            ],
        },
        Row {
            title: "per-machine cap",
            machines: &["n1 -", "n2 -"],
            units: &[
                ("a.service", ""),
                ("b.service", ""),
                ("c.service", ""),
                ("d.service", ""),
                ("e.service", ""),
            ],
            one_by_one: false,
            max_units: Some(2),
            want: &[
                ("a.service", "n1"),
                ("b.service", "n2"),
                ("c.service", "n1"),
                ("d.service", "n2"),
                (
                    "e.service",
                    "!every candidate machine already runs the maximum of 2 units",
                ),
            ],
        },
        Row {
            title: "a global unit that does not fit everywhere says where",
            machines: &["n1 - 1024 4", "n2 - 256 4"],
            units: &[("g.service", "Global=true|MemoryMax=512M")],
            one_by_one: false,
            max_units: None,
            want: &[(
                "g.service",
                "n1 !not placed on every machine: n2: needs 512M memory, 256M free",
            )],
        },
    ];
    for row in &rows {
        run(row);
    }
}

#[test]
fn nothing_runs_without_machines_and_inactive_units_are_not_placed() {
    let mut state = State::default();
    add_unit(&mut state, "a.service", "");
    let p = settle(&mut state, &SchedulerConfig::default());
    assert_eq!(
        p.unschedulable,
        [("a.service".to_owned(), "no machine is up".to_owned())]
    );
    add_machine(&mut state, "n1", "", None);
    settle(&mut state, &SchedulerConfig::default());
    assert!(state.units.is_assigned("a.service", "n1"));
    apply(
        &mut state,
        Command::Unit(Change::SetDesired {
            name: "a.service".into(),
            desired: Desired::Inactive,
        }),
    );
    let p = settle(&mut state, &SchedulerConfig::default());
    assert_eq!(
        p.commands,
        [Command::Unit(Change::Unassign {
            name: "a.service".into(),
            machine: "n1".into()
        })]
    );
    assert!(state.units.assignments.is_empty());
}

#[test]
fn a_lost_machine_loses_its_units_and_does_not_get_them_back() {
    let mut state = State::default();
    let config = SchedulerConfig::default();
    for n in ["n1", "n2", "n3"] {
        add_machine(&mut state, n, "", None);
    }
    for u in ["a", "b", "c", "d", "e", "f"] {
        add_unit(&mut state, &format!("{u}.service"), "");
    }
    add_unit(&mut state, "g.service", "Global=true");
    settle(&mut state, &config);
    let on_n1: Vec<String> = state
        .units
        .assigned_to("n1")
        .map(|u| u.name.clone())
        .collect();
    assert_eq!(on_n1, ["a.service", "d.service", "g.service"]);
    apply(
        &mut state,
        Command::Machine(MachineChange::Lost {
            name: "n1".into(),
            now_ms: NOW + 10_000,
        }),
    );
    let p = settle(&mut state, &config);
    assert_eq!(p.unschedulable, []);
    assert_eq!(state.units.assigned_to("n1").count(), 0);
    assert!(state.units.is_assigned("a.service", "n2"));
    assert!(state.units.is_assigned("d.service", "n3"));
    // Back again: it gets nothing back but the global unit.
    add_machine(&mut state, "n1", "", None);
    let p = settle(&mut state, &config);
    assert_eq!(
        p.commands,
        [Command::Unit(Change::Assign {
            name: "g.service".into(),
            machine: "n1".into()
        })]
    );
}

#[test]
fn replaced_content_that_now_conflicts_moves() {
    let mut state = State::default();
    let config = SchedulerConfig::default();
    add_machine(&mut state, "n1", "", None);
    add_machine(&mut state, "n2", "", None);
    add_unit(
        &mut state,
        "a.service",
        "MachineID=000000000000000000000000000000n1",
    );
    add_unit(
        &mut state,
        "b.service",
        "MachineID=000000000000000000000000000000n1",
    );
    settle(&mut state, &config);
    apply(
        &mut state,
        Command::Unit(Change::Submit {
            name: "b.service".into(),
            text: Some("[Service]\nExecStart=/bin/true\n[X-Fleet]\nConflicts=a.service\n".into()),
            replace: true,
        }),
    );
    let p = settle(&mut state, &config);
    assert!(state.units.is_assigned("a.service", "n1"));
    assert!(state.units.is_assigned("b.service", "n2"), "{p:?}");
}

#[test]
fn state_with_units_round_trips_through_postcard() {
    let mut state = State::default();
    add_machine(&mut state, "n1", "region=east", Some((1024, 2)));
    add_unit(
        &mut state,
        "a.service",
        "MachineMetadata=region=east|MemoryMax=1G;CPUQuota=50%",
    );
    settle(&mut state, &SchedulerConfig::default());
    apply(
        &mut state,
        Command::Unit(Change::Restart {
            name: "a.service".into(),
            machine: "n1".into(),
        }),
    );
    let bytes = postcard::to_allocvec(&state).unwrap();
    assert_eq!(postcard::from_bytes::<State>(&bytes).unwrap(), state);
    let resp = state.apply(&Command::Unit(Change::Destroy {
        name: "ghost.service".into(),
    }));
    let bytes = postcard::to_allocvec(&resp).unwrap();
    assert_eq!(postcard::from_bytes::<Response>(&bytes).unwrap(), resp);
    let Response::Unit(Err(e)) = resp else {
        panic!("{resp:?}")
    };
    assert_eq!(
        e.to_string(),
        "unit 'ghost.service' does not exist: submit it first"
    );
}

// ---- properties ----

const NAMES: &[&str] = &[
    "a.service",
    "b.service",
    "web@1.service",
    "web@2.service",
    "web@3.service",
    "db.service",
    "cache.service",
    "x.service",
];

const OPTIONS: &[&str] = &[
    "",
    "",
    "",
    "Conflicts=web@*.service",
    "Conflicts=a.service",
    "MachineOf=db.service",
    "MachineOf=a.service",
    "MachineMetadata=region=east",
    "MachineMetadata=region=west;MachineMetadata=disk=ssd",
    "Global=true",
    "Global=true;MachineMetadata=region=west",
    "Replaces=b.service",
    "Replaces=web@1.service",
    "MachineID=000000000000000000000000000000n2",
    "|MemoryMax=300M",
    "|CPUQuota=150%",
    "|MemoryMax=50%;CPUQuota=50%",
    "Conflicts=*|MemoryMax=100M",
];

const METADATA: &[&str] = &["", "region=east", "region=west", "region=west,disk=ssd"];

#[derive(Debug, Clone)]
struct Scenario {
    /// (metadata, capacity) for n0, n1, …
    machines: Vec<(&'static str, Option<(u64, u32)>)>,
    units: Vec<(&'static str, &'static str)>,
    max_units: Option<usize>,
}

fn scenario() -> impl Strategy<Value = Scenario> {
    let machine = (
        prop::sample::select(METADATA),
        prop::option::of((prop::sample::select(&[256u64, 1024, 4096][..]), 1u32..4)),
    );
    let unit = (prop::sample::select(NAMES), prop::sample::select(OPTIONS));
    (
        prop::collection::vec(machine, 1..5),
        prop::collection::vec(unit, 0..12),
        prop::option::of(1usize..5),
    )
        .prop_map(|(machines, units, max_units)| Scenario {
            machines,
            units,
            max_units,
        })
}

fn build(s: &Scenario) -> (State, SchedulerConfig) {
    let mut state = State::default();
    for (i, (metadata, capacity)) in s.machines.iter().enumerate() {
        add_machine(&mut state, &format!("n{i}"), metadata, *capacity);
    }
    for (name, body) in &s.units {
        if state.units.by_name.contains_key(*name) {
            continue;
        }
        // Combinations fleet refuses are refused at submit: skip them.
        let (fleet, service) = body.split_once('|').unwrap_or((body, ""));
        let text = format!(
            "[Service]\nExecStart=/bin/true\n{}\n[X-Fleet]\n{}\n",
            service.replace(';', "\n"),
            fleet.replace(';', "\n")
        );
        let r = state.apply(&Command::Unit(Change::Submit {
            name: (*name).into(),
            text: Some(text),
            replace: false,
        }));
        if matches!(r, Response::Unit(Ok(true))) {
            apply(
                &mut state,
                Command::Unit(Change::SetDesired {
                    name: (*name).into(),
                    desired: Desired::Launched,
                }),
            );
        }
    }
    let config = SchedulerConfig {
        max_units_per_machine: s.max_units,
    };
    (state, config)
}

fn check_invariants(state: &State) {
    let units = &state.units;
    for (name, machines) in &units.assignments {
        let unit = &units.by_name[name];
        assert!(
            unit.requirements.global || machines.len() == 1,
            "{name} on {machines:?}"
        );
        for m in machines {
            assert_eq!(
                state.machines.by_name[m].status,
                Status::Up,
                "{name} on lost {m}"
            );
            let others: Vec<&String> = units
                .assignments
                .iter()
                .filter(|(o, set)| *o != name && set.contains(m))
                .map(|(o, _)| o)
                .collect();
            for other in others {
                let theirs = &units.by_name[other].requirements;
                assert!(
                    !unit
                        .requirements
                        .conflicts
                        .iter()
                        .any(|g| glob_matches(g, other))
                        && !theirs.conflicts.iter().any(|g| glob_matches(g, name)),
                    "{name} and {other} conflict on {m}"
                );
            }
            for peer in &unit.requirements.machine_of {
                assert!(
                    units.is_assigned(peer, m),
                    "{name} without its peer {peer} on {m}"
                );
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn plans_are_deterministic_fixpoints_that_keep_the_rules(s in scenario()) {
        let (mut state, config) = build(&s);
        let first = plan(&state, &config);
        prop_assert_eq!(&first, &plan(&state.clone(), &config));
        // The commands one by one and the plan as one command leave the same state.
        let mut one_by_one = state.clone();
        for cmd in &first.commands {
            apply(&mut one_by_one, cmd.clone());
        }
        if let Some(cmd) = first.command() {
            apply(&mut state, cmd);
        }
        prop_assert_eq!(&one_by_one.units.assignments, &state.units.assignments);
        prop_assert_eq!(&one_by_one.units.unschedulable, &state.units.unschedulable);
        let second = plan(&state, &config);
        prop_assert_eq!(second.commands, vec![]);
        check_invariants(&state);
    }

    #[test]
    fn losing_a_machine_moves_its_units_when_there_is_room(s in scenario(), lost in 0usize..4) {
        let (mut state, config) = build(&s);
        settle(&mut state, &config);
        let lost = format!("n{}", lost % s.machines.len());
        let before: Vec<String> = state
            .units
            .assigned_to(&lost)
            .filter(|u| !u.requirements.global)
            .map(|u| u.name.clone())
            .collect();
        apply(&mut state, Command::Machine(MachineChange::Lost { name: lost.clone(), now_ms: NOW }));
        let p = settle(&mut state, &config);
        prop_assert_eq!(state.units.assigned_to(&lost).count(), 0);
        check_invariants(&state);
        // Every unit that was there runs elsewhere, or the plan says why not.
        for name in before {
            let placed = state.units.assignments.contains_key(&name);
            let reported = p.unschedulable.iter().any(|(u, _)| *u == name);
            prop_assert!(placed || reported, "{} vanished without a reason", name);
        }
    }
}

#[test]
fn losing_a_machine_with_room_elsewhere_moves_everything() {
    let mut state = State::default();
    let config = SchedulerConfig::default();
    for n in 0..4 {
        add_machine(&mut state, &format!("n{n}"), "", Some((4096, 8)));
    }
    for u in 0..40 {
        add_unit(
            &mut state,
            &format!("u{u}.service"),
            "|MemoryMax=64M;CPUQuota=10%",
        );
    }
    settle(&mut state, &config);
    let on_n2 = state.units.assigned_to("n2").count();
    assert_eq!(on_n2, 10);
    apply(
        &mut state,
        Command::Machine(MachineChange::Lost {
            name: "n2".into(),
            now_ms: NOW,
        }),
    );
    let p = settle(&mut state, &config);
    assert_eq!(p.unschedulable, []);
    assert_eq!(
        p.commands.len(),
        2 * on_n2,
        "one unassign and one assign per unit"
    );
    assert_eq!(state.units.assignments.len(), 40);
}

/// The refusal a command met, if any.
fn refusal(state: &mut State, cmd: &Command) -> Option<String> {
    match state.apply(cmd) {
        Response::Unit(Err(e)) => Some(e.to_string()),
        _ => None,
    }
}

#[test]
fn a_plan_applies_only_at_the_revision_it_was_made_from() {
    let mut state = State::default();
    let config = SchedulerConfig::default();
    for n in ["n1", "n2", "n3"] {
        add_machine(&mut state, n, "", None);
    }
    for u in ["a", "b", "c"] {
        add_unit(&mut state, &format!("{u}.service"), "");
    }
    // Two leaders plan from the same state (or one leader, deposed, and its successor).
    let old_leader = plan(&state, &config);
    let new_leader = plan(&state, &config);
    assert_eq!(old_leader.base, state.units.revision);
    apply(
        &mut state,
        new_leader.command().expect("something to place"),
    );
    let settled = state.clone();
    let refused = refusal(&mut state, &old_leader.command().unwrap());
    assert_eq!(
        refused.as_deref(),
        Some(
            format!(
                "the scheduler's plan is stale: made at revision {}, the state is at {}",
                old_leader.base, settled.units.revision
            )
            .as_str()
        )
    );
    assert_eq!(state, settled, "a refused plan changes nothing");

    // A machine lost after planning fences the plan out: it would still use that machine.
    add_unit(&mut state, "d.service", "");
    let before_loss = plan(&state, &config);
    assert!(state.units.assigned_to("n1").count() > 0);
    apply(
        &mut state,
        Command::Machine(MachineChange::Lost {
            name: "n1".into(),
            now_ms: NOW,
        }),
    );
    assert!(refusal(&mut state, &before_loss.command().unwrap()).is_some());
    // A heartbeat that changes nothing does not: only committed changes count.
    let p = plan(&state, &config);
    add_machine(&mut state, "n2", "", None);
    // Units submitted and started after the plan do not make it stale: it is still right
    // for the units it covers, and the next plan places the new one.
    add_unit(&mut state, "e.service", "");
    apply(&mut state, p.command().unwrap());
    assert_eq!(state.units.assigned_to("n1").count(), 0);
    assert!(!state.units.assignments.contains_key("e.service"));
    settle(&mut state, &config);
    assert!(state.units.assignments.contains_key("e.service"));
    check_invariants(&state);

    // Destroying or stopping a unit does (its place may be what a plan counted on).
    add_unit(&mut state, "f.service", "");
    let p = plan(&state, &config);
    apply(
        &mut state,
        Command::Unit(Change::SetDesired {
            name: "f.service".into(),
            desired: Desired::Inactive,
        }),
    );
    assert!(refusal(&mut state, &p.command().unwrap()).is_some());
    settle(&mut state, &config);
    assert!(!state.units.assignments.contains_key("f.service"));
}

#[test]
fn a_plan_is_applied_whole_or_not_at_all() {
    let mut state = State::default();
    add_machine(&mut state, "n1", "", None);
    add_unit(&mut state, "a.service", "");
    let base = state.units.revision;
    let before = state.clone();
    let assign = |name: &str, machine: &str| Change::Assign {
        name: name.into(),
        machine: machine.into(),
    };
    for (changes, why) in [
        (
            vec![assign("a.service", "n1"), assign("ghost.service", "n1")],
            "the scheduler's plan is invalid: unit 'ghost.service' does not exist",
        ),
        (
            vec![assign("a.service", "n1"), assign("a.service", "n9")],
            "the scheduler's plan is invalid: machine 'n9' is not a member of the cluster",
        ),
        (
            vec![
                assign("a.service", "n1"),
                Change::Destroy {
                    name: "a.service".into(),
                },
            ],
            "the scheduler's plan is invalid: a plan cannot carry Destroy",
        ),
    ] {
        let cmd = Command::Unit(Change::Plan { base, changes });
        assert_eq!(refusal(&mut state, &cmd).as_deref(), Some(why));
        assert_eq!(state, before, "nothing of a refused plan is applied");
    }
    let cmd = Command::Unit(Change::Plan {
        base,
        changes: vec![assign("a.service", "n1")],
    });
    assert_eq!(state.apply(&cmd), Response::Unit(Ok(true)));
    assert_eq!(state.units.revision, base + 1);
    assert!(state.units.is_assigned("a.service", "n1"));
}

#[test]
fn only_what_a_plan_reads_asks_for_a_new_plan() {
    use flotilla_state::scheduler::needs_plan;
    use flotilla_state::units::Reported;
    let mut state = State::default();
    let config = SchedulerConfig::default();
    assert!(needs_plan(&state, None), "never planned");
    add_machine(&mut state, "n1", "", None);
    add_unit(&mut state, "a.service", "");
    settle(&mut state, &config);
    let last = Some(state.units.inputs);
    assert!(!needs_plan(&state, last));
    // A report, a restart and a rolling restart change nothing a plan reads.
    apply(
        &mut state,
        Command::Unit(Change::ReportState {
            machine: "n1".into(),
            name: "a.service".into(),
            state: Some(Reported {
                active: "active".into(),
                main_pid: 7,
                ..Reported::default()
            }),
        }),
    );
    apply(
        &mut state,
        Command::Unit(Change::RollingRestart {
            name: "a.service".into(),
        }),
    );
    assert_eq!(state.units.by_name["a.service"].restarts["n1"], 1);
    assert!(!needs_plan(&state, last));
    assert_eq!(plan(&state, &config).commands, []);
    // A new unit does, and so does a machine change.
    add_unit(&mut state, "b.service", "");
    assert!(needs_plan(&state, last));
    settle(&mut state, &config);
    let last = Some(state.units.inputs);
    add_machine(&mut state, "n2", "", Some((1024, 2)));
    assert!(needs_plan(&state, last));
}
