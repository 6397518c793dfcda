//! The registry's rules, as tables: each row a sequence of changes and what each returns.

use super::*;
use crate::machines::{Change as MachineChange, Machine, Status};

const WEB: &str = "[Service]\nExecStart=/bin/sleep infinity\n";
const WEB2: &str = "[Service]\nExecStart=/bin/sleep 1000\n";
const TEMPLATE: &str = "[Service]\nExecStart=/bin/echo %i\n\n[X-Fleet]\nConflicts=app@*.service\n";

fn machines() -> Machines {
    let mut m = Machines::default();
    m.apply(&MachineChange::Up {
        machine: Machine {
            name: "n1".into(),
            machine_id: "0".repeat(32),
            addr: "10.0.0.1".into(),
            metadata: BTreeMap::new(),
            status: Status::Up,
            since_ms: 0,
        },
        now_ms: 1,
    });
    m
}

fn submit(name: &str, text: Option<&str>, replace: bool) -> Change {
    Change::Submit {
        name: name.into(),
        text: text.map(Into::into),
        replace,
    }
}

fn desired(name: &str, desired: Desired) -> Change {
    Change::SetDesired {
        name: name.into(),
        desired,
    }
}

fn verb(name: &str, transition: Transition) -> Change {
    Change::Transition {
        name: name.into(),
        transition,
    }
}

fn assign(name: &str, machine: &str) -> Change {
    Change::Assign {
        name: name.into(),
        machine: machine.into(),
    }
}

/// What a row expects of one change: changed, unchanged, or an error whose message contains
/// the text.
#[derive(Debug)]
enum Want {
    Changed,
    Same,
    Err(&'static str),
}

fn run(rows: &[(&str, Vec<(Change, Want)>)]) -> Units {
    let m = machines();
    let mut last = Units::default();
    for (title, steps) in rows {
        let mut units = Units::default();
        for (i, (change, want)) in steps.iter().enumerate() {
            let before = units.clone();
            let got = units.apply(change, &m);
            match (want, &got) {
                (Want::Changed, Ok(true)) | (Want::Same, Ok(false)) => {}
                (Want::Err(text), Err(e)) if e.to_string().contains(text) => {
                    assert_eq!(
                        units, before,
                        "{title}, step {i}: a refused change changes nothing"
                    );
                }
                _ => panic!("{title}, step {i}: {change:?}: wanted {want:?}, got {got:?}"),
            }
        }
        last = units;
    }
    last
}

fn submit_then(name: &str, text: &str, replace: bool, then: Then) -> Change {
    Change::SubmitThen {
        name: name.into(),
        text: Some(text.into()),
        replace,
        then,
    }
}

#[test]
fn transitions() {
    use Transition::*;
    use Want::*;
    run(&[
        (
            "submit-then submits and moves in one change, and is idempotent",
            vec![
                (
                    submit_then("web.service", WEB, false, Then::Transition(Start)),
                    Changed,
                ),
                (
                    submit_then("web.service", WEB, false, Then::Desired(Desired::Launched)),
                    Same,
                ),
                (verb("web.service", Start), Same),
                (
                    submit_then("web.service", WEB2, true, Then::Desired(Desired::Launched)),
                    Changed,
                ),
            ],
        ),
        (
            "submit-then is refused whole when its move is refused",
            vec![
                (
                    submit_then("new.service", WEB, false, Then::Transition(Stop)),
                    Err("new.service"),
                ),
                (submit("web.service", Some(WEB), false), Changed),
                (
                    submit_then("web.service", WEB2, true, Then::Transition(Stop)),
                    Err("web.service"),
                ),
                (
                    submit_then("app@.service", TEMPLATE, false, Then::Transition(Start)),
                    Err("app@.service"),
                ),
                (
                    submit_then("web.service", WEB2, false, Then::Transition(Start)),
                    Err("already exists with different content"),
                ),
            ],
        ),
        (
            "submit twice with the same content is no change",
            vec![
                (submit("web.service", Some(WEB), false), Changed),
                (
                    submit(
                        "web.service",
                        Some("# comment\n[Service]\nExecStart=/bin/sleep infinity\n"),
                        false,
                    ),
                    Same,
                ),
            ],
        ),
        (
            "different content needs replace",
            vec![
                (submit("web.service", Some(WEB), false), Changed),
                (
                    submit("web.service", Some(WEB2), false),
                    Err("unit 'web.service' already exists with different content"),
                ),
                (submit("web.service", Some(WEB2), true), Changed),
            ],
        ),
        (
            "malformed units are refused with file:line:column",
            vec![(
                submit(
                    "bad.service",
                    Some("[Service]\nExecStart=relative/path\n"),
                    false,
                ),
                Err("bad.service:2:"),
            )],
        ),
        (
            "bad names are refused",
            vec![(
                submit("web", Some(WEB), false),
                Err("unit name 'web' has no type suffix"),
            )],
        ),
        (
            "unknown X-Fleet keys are refused",
            vec![(
                submit(
                    "x.service",
                    Some("[Service]\nExecStart=/bin/true\n[X-Fleet]\nBogus=1\n"),
                    false,
                ),
                Err("unrecognized requirement 'Bogus'"),
            )],
        ),
        (
            "load, start, stop, unload",
            vec![
                (submit("web.service", Some(WEB), false), Changed),
                (
                    verb("web.service", Stop),
                    Err("unit 'web.service' is inactive: nothing to stop"),
                ),
                (verb("web.service", Load), Changed),
                (verb("web.service", Load), Same),
                (verb("web.service", Start), Changed),
                (verb("web.service", Stop), Changed),
                (verb("web.service", Stop), Same),
                (verb("web.service", Start), Changed),
                (verb("web.service", Unload), Changed),
                (desired("web.service", Desired::Launched), Changed),
            ],
        ),
        (
            "a global unit can be stopped from inactive, as fleetctl allows",
            vec![
                (
                    submit(
                        "g.service",
                        Some("[Service]\nExecStart=/bin/true\n[X-Fleet]\nGlobal=true\n"),
                        false,
                    ),
                    Changed,
                ),
                (verb("g.service", Stop), Changed),
            ],
        ),
        (
            "unknown units",
            vec![
                (
                    verb("ghost.service", Start),
                    Err("unit 'ghost.service' does not exist"),
                ),
                (
                    Change::Destroy {
                        name: "ghost.service".into(),
                    },
                    Err("does not exist"),
                ),
                (assign("ghost.service", "n1"), Err("does not exist")),
            ],
        ),
        (
            "templates cannot be loaded or started, their instances can",
            vec![
                (submit("app@.service", Some(TEMPLATE), false), Changed),
                (
                    verb("app@.service", Start),
                    Err(
                        "unit 'app@.service' is a template: load or start an instance of it such as 'app@1.service'",
                    ),
                ),
                (verb("app@.service", Load), Err("is a template")),
                (verb("app@.service", Unload), Same),
                (assign("app@.service", "n1"), Err("is a template")),
                (verb("app@1.service", Start), Changed),
                (verb("app@1.service", Start), Same),
                (submit("app@2.service", None, false), Changed),
                (submit("app@2.service", None, false), Same),
            ],
        ),
        (
            "instances need their template",
            vec![
                (
                    verb("app@1.service", Start),
                    Err("neither does its template 'app@.service'"),
                ),
                (
                    submit("app@1.service", None, false),
                    Err("neither does its template"),
                ),
                (
                    submit("web.service", None, false),
                    Err("is not a template instance"),
                ),
            ],
        ),
        (
            "assignments need a member machine",
            vec![
                (submit("web.service", Some(WEB), false), Changed),
                (
                    assign("web.service", "n9"),
                    Err("machine 'n9' is not a member"),
                ),
                (assign("web.service", "n1"), Changed),
                (assign("web.service", "n1"), Same),
                (
                    Change::Unassign {
                        name: "web.service".into(),
                        machine: "n1".into(),
                    },
                    Changed,
                ),
                (
                    Change::Unassign {
                        name: "web.service".into(),
                        machine: "n1".into(),
                    },
                    Same,
                ),
            ],
        ),
        (
            "restarts need an assignment",
            vec![
                (submit("web.service", Some(WEB), false), Changed),
                (
                    Change::Restart {
                        name: "web.service".into(),
                        machine: "n1".into(),
                    },
                    Err("unit 'web.service' is not assigned to machine 'n1'"),
                ),
                (assign("web.service", "n1"), Changed),
                (
                    Change::Restart {
                        name: "web.service".into(),
                        machine: "n1".into(),
                    },
                    Changed,
                ),
            ],
        ),
        (
            "reports only when changed, and only for existing units",
            vec![
                (report("web.service", Some("active")), Same),
                (submit("web.service", Some(WEB), false), Changed),
                (report("web.service", Some("active")), Changed),
                (report("web.service", Some("active")), Same),
                (report("web.service", Some("failed")), Changed),
                (report("web.service", None), Changed),
                (report("web.service", None), Same),
            ],
        ),
        (
            "destroy removes everything",
            vec![
                (submit("web.service", Some(WEB), false), Changed),
                (assign("web.service", "n1"), Changed),
                (report("web.service", Some("active")), Changed),
                (
                    Change::Destroy {
                        name: "web.service".into(),
                    },
                    Changed,
                ),
            ],
        ),
    ]);
}

fn report(name: &str, active: Option<&str>) -> Change {
    Change::ReportState {
        machine: "n1".into(),
        name: name.into(),
        state: active.map(|a| Reported {
            load: "loaded".into(),
            active: a.into(),
            sub: "running".into(),
            since_ms: 5,
            main_pid: 42,
            result: "success".into(),
            restart_generation: 0,
        }),
    }
}

#[test]
fn destroy_leaves_nothing_behind() {
    let m = machines();
    let mut u = Units::default();
    for c in [
        submit("web.service", Some(WEB), false),
        assign("web.service", "n1"),
        report("web.service", Some("active")),
        Change::Destroy {
            name: "web.service".into(),
        },
    ] {
        u.apply(&c, &m).unwrap();
    }
    // Only the counters remember the unit was there.
    assert_eq!(u.revision, 2, "the assignment and the destroy");
    assert_eq!(
        u,
        Units {
            revision: 2,
            inputs: 3,
            ..Units::default()
        }
    );
}

#[test]
fn every_launch_has_its_own_number() {
    let m = machines();
    let mut u = Units::default();
    let launch = |u: &Units| u.by_name["web.service"].launch;
    u.apply(&submit("web.service", Some(WEB), false), &m)
        .unwrap();
    assert_eq!(launch(&u), 0, "submitted, never launched");
    u.apply(&desired("web.service", Desired::Launched), &m)
        .unwrap();
    assert_eq!(launch(&u), 1);
    // Launched again while launched: the same launch.
    u.apply(&verb("web.service", Transition::Start), &m)
        .unwrap();
    assert_eq!(launch(&u), 1);
    // A stop and a start: a new launch, even if no machine saw the stop.
    u.apply(&verb("web.service", Transition::Stop), &m).unwrap();
    assert_eq!(launch(&u), 1);
    u.apply(&verb("web.service", Transition::Start), &m)
        .unwrap();
    assert_eq!(launch(&u), 2);
    // Destroyed and started again with the same text: a new launch too.
    u.apply(
        &Change::Destroy {
            name: "web.service".into(),
        },
        &m,
    )
    .unwrap();
    u.apply(&submit("web.service", Some(WEB), false), &m)
        .unwrap();
    u.apply(&verb("web.service", Transition::Start), &m)
        .unwrap();
    assert_eq!(launch(&u), 3);
}

#[test]
fn instances_take_the_template_text_with_their_own_specifiers() {
    let m = machines();
    let mut u = Units::default();
    u.apply(&submit("app@.service", Some(TEMPLATE), false), &m)
        .unwrap();
    u.apply(&verb("app@web.service", Transition::Start), &m)
        .unwrap();
    let inst = &u.by_name["app@web.service"];
    assert_eq!(inst.desired, Desired::Launched);
    assert_eq!(inst.text, u.by_name["app@.service"].text);
    assert_eq!(inst.requirements.conflicts, ["app@*.service"]);
    assert_eq!(u.by_name["app@.service"].desired, Desired::Inactive);
}

#[test]
fn replace_keeps_desired_state_and_assignments() {
    let m = machines();
    let mut u = Units::default();
    u.apply(&submit("web.service", Some(WEB), false), &m)
        .unwrap();
    u.apply(&verb("web.service", Transition::Start), &m)
        .unwrap();
    u.apply(&assign("web.service", "n1"), &m).unwrap();
    let old = u.by_name["web.service"].hash.clone();
    u.apply(&submit("web.service", Some(WEB2), true), &m)
        .unwrap();
    let unit = &u.by_name["web.service"];
    assert_ne!(unit.hash, old);
    assert_eq!(unit.text, "[Service]\nExecStart=/bin/sleep 1000\n");
    assert_eq!(unit.desired, Desired::Launched);
    assert!(u.is_assigned("web.service", "n1"));
}

#[test]
fn malformed_units_list_every_diagnostic() {
    let m = machines();
    let mut u = Units::default();
    let err = u
        .apply(
            &submit(
                "bad.service",
                Some("[Service]\nExecStart=relative/path\n[X-Fleet]\nMachineID=a\nConflicts=b*\n"),
                false,
            ),
            &m,
        )
        .unwrap_err();
    let Error::Malformed { name, diagnostics } = &err else {
        panic!("{err:?}")
    };
    assert_eq!(name, "bad.service");
    assert!(diagnostics.len() >= 2, "{diagnostics:?}");
    assert!(
        diagnostics.iter().all(|d| d.starts_with("bad.service:")),
        "{diagnostics:?}"
    );
    assert!(
        diagnostics
            .iter()
            .any(|d| d.contains("MachineID cannot be used with Conflicts")),
        "{diagnostics:?}"
    );
}

#[test]
fn resource_limits_are_read_from_the_service_section() {
    let cases: &[(&str, Option<Memory>, Option<u64>)] = &[
        ("", None, None),
        (
            "MemoryMax=512M\nCPUQuota=50%\n",
            Some(Memory::Bytes(512 << 20)),
            Some(500),
        ),
        (
            "MemoryMax=2G\nCPUQuota=200%\n",
            Some(Memory::Bytes(2 << 30)),
            Some(2000),
        ),
        (
            "MemoryMax=1.5K\nCPUQuota=12.5%\n",
            Some(Memory::Bytes(1536)),
            Some(125),
        ),
        ("MemoryMax=4096\n", Some(Memory::Bytes(4096)), None),
        ("MemoryMax=25%\n", Some(Memory::Basis(2500)), None),
        ("MemoryMax=infinity\n", None, None),
        ("MemoryMax=1G\nMemoryMax=\n", None, None),
    ];
    for (extra, memory, cpu) in cases {
        let text = format!("[Service]\nExecStart=/bin/true\n{extra}");
        let c = check("r.service", &text).unwrap();
        assert_eq!(
            (c.requirements.memory_max, c.requirements.cpu_millis),
            (*memory, *cpu),
            "{extra}"
        );
    }
    assert_eq!(Memory::Basis(2500).on(8 << 30), 2 << 30);
}

#[test]
fn sizes_print_as_systemd_prints_them() {
    assert_eq!(format_bytes(512 << 20), "512M");
    assert_eq!(format_bytes(3 << 29), "1.5G");
    assert_eq!(format_bytes(100), "100B");
    assert_eq!(format_cpus(2000), "2");
    assert_eq!(format_cpus(500), "0.5");
    assert_eq!(format_cpus(125), "0.125");
}

#[test]
fn desired_state_names_are_fleets() {
    for d in [Desired::Inactive, Desired::Loaded, Desired::Launched] {
        assert_eq!(d.as_str().parse::<Desired>(), Ok(d));
    }
    assert_eq!(
        "running".parse::<Desired>().unwrap_err().to_string(),
        "unknown desired state 'running': expected inactive, loaded or launched"
    );
}

#[test]
fn rolling_restart_goes_machine_by_machine() {
    let mut m = machines();
    let mut second = m.by_name["n1"].clone();
    second.name = "n0".into();
    m.apply(&MachineChange::Up {
        machine: second,
        now_ms: 1,
    });
    let mut u = Units::default();
    let g = "[Service]\nExecStart=/bin/true\n[X-Fleet]\nGlobal=true\n";
    u.apply(&submit("g.service", Some(g), false), &m).unwrap();
    u.apply(&assign("g.service", "n1"), &m).unwrap();
    u.apply(&assign("g.service", "n0"), &m).unwrap();
    assert_eq!(u.rolling_restart("g.service").unwrap(), ["n0", "n1"]);
    u.apply(
        &Change::Restart {
            name: "g.service".into(),
            machine: "n0".into(),
        },
        &m,
    )
    .unwrap();
    assert!(!u.restart_done("g.service", "n0"), "nothing reported yet");
    let mut state = Reported {
        active: "active".into(),
        ..Reported::default()
    };
    let rep = |state: &Reported| Change::ReportState {
        machine: "n0".into(),
        name: "g.service".into(),
        state: Some(state.clone()),
    };
    u.apply(&rep(&state), &m).unwrap();
    assert!(!u.restart_done("g.service", "n0"), "old generation");
    state.restart_generation = 1;
    state.active = "activating".into();
    u.apply(&rep(&state), &m).unwrap();
    assert!(!u.restart_done("g.service", "n0"), "not active yet");
    state.active = "active".into();
    u.apply(&rep(&state), &m).unwrap();
    assert!(u.restart_done("g.service", "n0"));
    assert!(matches!(
        u.rolling_restart("nope.service"),
        Err(Error::NotFound(_))
    ));
}

/// A report of `name` on `machine`: its active state, main PID and restart generation.
fn reported(name: &str, machine: &str, active: &str, pid: u32, generation: u64) -> Change {
    Change::ReportState {
        machine: machine.into(),
        name: name.into(),
        state: Some(Reported {
            load: "loaded".into(),
            active: active.into(),
            sub: "running".into(),
            since_ms: 5,
            main_pid: pid,
            result: "success".into(),
            restart_generation: generation,
        }),
    }
}

/// The restart generation asked of each (unit, machine), in that order.
fn generations(u: &Units) -> Vec<(String, String, u64)> {
    u.by_name
        .values()
        .flat_map(|r| {
            r.restarts
                .iter()
                .map(|(m, g)| (r.name.clone(), m.clone(), *g))
        })
        .collect()
}

fn three_machines() -> Machines {
    let mut m = machines();
    for name in ["n2", "n3"] {
        let mut other = m.by_name["n1"].clone();
        other.name = name.into();
        m.apply(&MachineChange::Up {
            machine: other,
            now_ms: 1,
        });
    }
    m
}

#[test]
fn a_rolling_restart_asks_one_machine_at_a_time_and_moves_on_by_itself() {
    let m = three_machines();
    let mut u = Units::default();
    let g = "[Service]\nExecStart=/bin/sleep infinity\n[X-Fleet]\nGlobal=true\n";
    let roll = Change::RollingRestart {
        name: "g.service".into(),
    };
    u.apply(&submit("g.service", Some(g), false), &m).unwrap();
    assert_eq!(
        u.apply(&roll, &m),
        Err(Error::NotLaunched("g.service".into()))
    );
    u.apply(&desired("g.service", Desired::Launched), &m)
        .unwrap();
    assert_eq!(
        u.apply(&roll, &m),
        Err(Error::NotPlaced("g.service".into()))
    );
    for n in ["n1", "n2", "n3"] {
        u.apply(&assign("g.service", n), &m).unwrap();
        u.apply(&reported("g.service", n, "active", 100, 0), &m)
            .unwrap();
    }
    let revision = u.revision;
    assert_eq!(u.apply(&roll, &m), Ok(true));
    assert_eq!(u.apply(&roll, &m), Ok(false), "already under way");
    assert_eq!(u.revision, revision, "a restart does not fence plans");
    let g1 = |m: &str, g| ("g.service".to_owned(), m.to_owned(), g);
    assert_eq!(generations(&u), [g1("n1", 1)]);
    // The machine took the generation, but the old process is still the one reported.
    u.apply(&reported("g.service", "n1", "active", 100, 1), &m)
        .unwrap();
    u.apply(&reported("g.service", "n1", "deactivating", 100, 1), &m)
        .unwrap();
    u.apply(&reported("g.service", "n1", "activating", 0, 1), &m)
        .unwrap();
    assert_eq!(generations(&u), [g1("n1", 1)], "n2 waits for n1");
    // "active" with no main process yet (a stale state beside ExecStartPre=): still waiting.
    u.apply(&reported("g.service", "n1", "active", 0, 1), &m)
        .unwrap();
    assert_eq!(generations(&u), [g1("n1", 1)], "no new process yet");
    // Active again with a new process: the next machine's turn.
    u.apply(&reported("g.service", "n1", "active", 101, 1), &m)
        .unwrap();
    assert_eq!(generations(&u), [g1("n1", 1), g1("n2", 1)]);
    assert_eq!(u.rolling["g.service"].from_pid, 100);
    // A machine that lost the unit meanwhile is skipped.
    u.apply(
        &Change::Unassign {
            name: "g.service".into(),
            machine: "n3".into(),
        },
        &m,
    )
    .unwrap();
    u.apply(&reported("g.service", "n2", "active", 102, 1), &m)
        .unwrap();
    assert_eq!(generations(&u), [g1("n1", 1), g1("n2", 1)]);
    assert!(u.rolling.is_empty(), "the rollout is over");
}

#[test]
fn a_rolling_restart_of_a_template_restarts_its_instances_and_stops_at_a_failure() {
    let m = three_machines();
    let mut u = Units::default();
    let t = "[Service]\nExecStart=/bin/sleep infinity\n";
    u.apply(&submit("web@.service", Some(t), false), &m)
        .unwrap();
    for (i, n) in [("1", "n1"), ("2", "n2"), ("3", "n3")] {
        let name = format!("web@{i}.service");
        u.apply(&desired(&name, Desired::Launched), &m).unwrap();
        u.apply(&assign(&name, n), &m).unwrap();
    }
    // Not launched: not part of the rollout.
    u.apply(&desired("web@4.service", Desired::Loaded), &m)
        .unwrap();
    u.apply(&assign("web@4.service", "n1"), &m).unwrap();
    let roll = Change::RollingRestart {
        name: "web@.service".into(),
    };
    assert_eq!(u.apply(&roll, &m), Ok(true));
    assert_eq!(
        u.rolling["web@.service"].steps,
        [
            ("web@1.service".to_owned(), "n1".to_owned()),
            ("web@2.service".to_owned(), "n2".to_owned()),
            ("web@3.service".to_owned(), "n3".to_owned()),
        ]
    );
    // Nothing was reported before: any active report of the new generation ends the step.
    u.apply(&reported("web@1.service", "n1", "active", 7, 1), &m)
        .unwrap();
    assert_eq!(u.by_name["web@2.service"].restarts["n2"], 1);
    // web@2 fails after its restart: web@3 keeps running untouched.
    u.apply(&reported("web@2.service", "n2", "failed", 0, 1), &m)
        .unwrap();
    assert!(u.rolling.is_empty());
    assert!(u.by_name["web@3.service"].restarts.is_empty());
    assert_eq!(
        u.apply(
            &Change::RollingRestart {
                name: "nope@.service".into()
            },
            &m
        ),
        Err(Error::NotFound("nope@.service".into()))
    );
    // Stopping a unit mid-rollout skips it; destroying the rolled name ends the rollout.
    assert_eq!(u.apply(&roll, &m), Ok(true));
    u.apply(&verb("web@1.service", Transition::Stop), &m)
        .unwrap();
    assert_eq!(u.by_name["web@2.service"].restarts["n2"], 2);
    u.apply(
        &Change::Destroy {
            name: "web@.service".into(),
        },
        &m,
    )
    .unwrap();
    assert!(u.rolling.is_empty());
}

#[test]
fn reports_of_one_pass_apply_as_one_change() {
    let m = three_machines();
    let mut u = Units::default();
    for name in ["a.service", "b.service"] {
        u.apply(&submit(name, Some(WEB), false), &m).unwrap();
        u.apply(&desired(name, Desired::Launched), &m).unwrap();
        u.apply(&assign(name, "n1"), &m).unwrap();
    }
    let state = |active: &str| Reported {
        active: active.into(),
        ..Reported::default()
    };
    let batch = |states: Vec<(&str, Option<Reported>)>| Change::ReportStates {
        machine: "n1".into(),
        states: states.into_iter().map(|(n, s)| (n.to_owned(), s)).collect(),
    };
    let one_by_one = {
        let mut v = u.clone();
        v.apply(&reported("a.service", "n1", "active", 0, 0), &m)
            .unwrap();
        v
    };
    assert_eq!(
        u.apply(
            &batch(vec![
                ("a.service", Some(state("active"))),
                ("gone.service", Some(state("active"))),
            ]),
            &m
        ),
        Ok(true)
    );
    assert_eq!(u.reported["a.service"]["n1"].active, "active");
    assert!(!u.reported.contains_key("gone.service"), "a destroyed unit");
    assert_eq!(
        u.apply(&batch(vec![("a.service", Some(state("active")))]), &m),
        Ok(false)
    );
    assert_eq!(
        u.revision, one_by_one.revision,
        "reports do not fence plans"
    );
    assert_eq!(
        u.apply(&batch(vec![("a.service", None)]), &m),
        Ok(true),
        "forgotten"
    );
    assert!(u.reported.is_empty());
}
