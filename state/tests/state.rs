//! The replicated state as the agent uses it: commands applied in log order, snapshots through
//! postcard, and determinism (same commands, same state and responses on every replica).

use std::collections::BTreeMap;

use flotilla_state::kv::{Preconditions, Write, WriteOp};
use flotilla_state::machines::{Change, Machine, Status};
use flotilla_state::{Command, Response, State, units};
use proptest::prelude::*;

/// 2026-11-24T22:17:29.452Z.
const NOW: u64 = 1_795_558_649_452;

fn set(key: &str, value: &str, ttl: Option<u64>, now_ms: u64) -> Command {
    Command::Kv(Write::new(
        key,
        WriteOp::Set {
            value: value.into(),
            dir: false,
            ttl,
            refresh: false,
            prev: Preconditions::default(),
        },
        now_ms,
    ))
}

fn machine(name: &str) -> Machine {
    Machine {
        name: name.into(),
        machine_id: format!("{:0>32}", name.len()),
        addr: "10.213.0.11".into(),
        metadata: BTreeMap::from([("region".to_owned(), "east".to_owned())]),
        status: Status::Up,
        since_ms: 0,
    }
}

fn roundtrip(state: &State) -> State {
    let bytes = postcard::to_allocvec(state).expect("state serializes");
    postcard::from_bytes(&bytes).expect("state deserializes")
}

#[test]
fn populated_state_round_trips_through_postcard() {
    let mut state = State::default();
    let commands = [
        set("/message", "Hello world!", None, NOW),
        set("/dir/sub/key", "x", Some(60), NOW),
        set("/_hidden", "h", None, NOW),
        Command::Kv(Write::new(
            "/queue",
            WriteOp::CreateInOrder {
                value: "job".into(),
                dir: false,
                ttl: None,
            },
            NOW,
        )),
        Command::Kv(Write::new(
            "/empty",
            WriteOp::Set {
                value: String::new(),
                dir: true,
                ttl: Some(1),
                refresh: false,
                prev: Preconditions::default(),
            },
            NOW,
        )),
        Command::Expire {
            now_ms: NOW + 1_000,
        },
        Command::Machine(Change::Up {
            machine: machine("node1"),
            now_ms: NOW,
        }),
        Command::Machine(Change::Up {
            machine: machine("node2"),
            now_ms: NOW,
        }),
        Command::Machine(Change::Lost {
            name: "node2".into(),
            now_ms: NOW + 5,
        }),
    ];
    for cmd in &commands {
        state.apply(cmd);
    }
    let back = roundtrip(&state);
    assert_eq!(back, state);
    assert_eq!(back.kv.index(), 6);
    assert_eq!(back.kv.next_expiry(), Some(NOW + 60_000));
    assert_eq!(
        back.kv
            .get("/dir/sub/key", false, false)
            .unwrap()
            .node
            .value
            .as_deref(),
        Some("x")
    );
    assert_eq!(
        back.kv
            .watch_history("/empty", false, 1)
            .unwrap()
            .unwrap()
            .etcd_index,
        6
    );
    assert_eq!(back.machines.by_name["node2"].status, Status::Lost);
    // And it keeps working the same after the round trip.
    let mut a = state.clone();
    let mut b = back;
    let next = set("/message", "again", None, NOW + 2_000);
    assert_eq!(a.apply(&next), b.apply(&next));
    assert_eq!(a, b);
}

#[test]
fn commands_and_responses_round_trip_through_postcard() {
    let mut state = State::default();
    let cmd = set("/k", "v", Some(5), NOW);
    let bytes = postcard::to_allocvec(&cmd).unwrap();
    assert_eq!(postcard::from_bytes::<Command>(&bytes).unwrap(), cmd);
    let resp = state.apply(&cmd);
    let bytes = postcard::to_allocvec(&resp).unwrap();
    assert_eq!(postcard::from_bytes::<Response>(&bytes).unwrap(), resp);
    let err = state.apply(&Command::Kv(Write::new(
        "/k",
        WriteOp::Set {
            value: "x".into(),
            dir: false,
            ttl: None,
            refresh: false,
            prev: Preconditions {
                prev_exist: Some(false),
                ..Preconditions::default()
            },
        },
        NOW,
    )));
    let bytes = postcard::to_allocvec(&err).unwrap();
    assert_eq!(postcard::from_bytes::<Response>(&bytes).unwrap(), err);
    assert!(matches!(err, Response::Kv(Err(_))));
}

const KEYS: &[&str] = &[
    "/a", "/a/b", "/a/b/c", "/a/_x", "/b", "/_h", "/q", "/", "/a/../b",
];
const VALUES: &[&str] = &["", "v", "w", "a<b"];

fn key() -> impl Strategy<Value = String> {
    prop::sample::select(KEYS).prop_map(str::to_owned)
}

fn value() -> impl Strategy<Value = String> {
    prop::sample::select(VALUES).prop_map(str::to_owned)
}

fn preconditions() -> impl Strategy<Value = Preconditions> {
    (
        prop::option::of(any::<bool>()),
        prop::option::of(value()),
        prop::option::of(0u64..12),
    )
        .prop_map(|(prev_exist, prev_value, prev_index)| Preconditions {
            prev_exist,
            prev_value,
            prev_index,
        })
}

/// One step: a command and how far the clock moves before it.
fn step() -> impl Strategy<Value = (u64, Command)> {
    let ttl = prop::option::of(0u64..4);
    let op = prop_oneof![
        (
            value(),
            any::<bool>(),
            ttl.clone(),
            any::<bool>(),
            preconditions()
        )
            .prop_map(|(value, dir, ttl, refresh, prev)| WriteOp::Set {
                value,
                dir,
                ttl,
                refresh,
                prev
            }),
        (value(), any::<bool>(), ttl).prop_map(|(value, dir, ttl)| WriteOp::CreateInOrder {
            value,
            dir,
            ttl
        }),
        (any::<bool>(), any::<bool>(), preconditions()).prop_map(|(dir, recursive, prev)| {
            WriteOp::Delete {
                dir,
                recursive,
                prev,
            }
        }),
    ];
    let kv = (key(), op).prop_map(|(key, op)| (key, op));
    (
        0u64..2_500,
        prop_oneof![
            6 => kv.prop_map(|(key, op)| Command::Kv(Write::new(key, op, 0))),
            1 => Just(Command::Expire { now_ms: 0 }),
            1 => prop::sample::select(&["n1", "n2"][..]).prop_map(|n| Command::Machine(Change::Up { machine: machine(n), now_ms: 0 })),
            1 => prop::sample::select(&["n1", "n2"][..]).prop_map(|n| Command::Machine(Change::Lost { name: n.into(), now_ms: 0 })),
            3 => unit_change().prop_map(Command::Unit),
        ],
    )
}

/// Changes to the unit registry, over a few names, texts and machines.
fn unit_change() -> impl Strategy<Value = units::Change> {
    let name = prop::sample::select(&["a.service", "t@.service", "t@1.service", "bad"][..]);
    let machine = prop::sample::select(&["n1", "n2", "n9"][..]);
    let text = prop::option::of(prop::sample::select(
        &[
            "[Service]\nExecStart=/bin/true\n",
            "[Service]\nExecStart=/bin/false\n[X-Fleet]\nGlobal=true\n",
            "[Service]\nExecStart=relative/path\n",
        ][..],
    ));
    let desired = prop::sample::select(
        &[
            units::Desired::Inactive,
            units::Desired::Loaded,
            units::Desired::Launched,
        ][..],
    );
    prop_oneof![
        (name.clone(), text, any::<bool>()).prop_map(|(name, text, replace)| {
            units::Change::Submit {
                name: name.into(),
                text: text.map(Into::into),
                replace,
            }
        }),
        (name.clone(), desired).prop_map(|(name, desired)| units::Change::SetDesired {
            name: name.into(),
            desired
        }),
        name.clone()
            .prop_map(|name| units::Change::Destroy { name: name.into() }),
        (name.clone(), machine.clone(), any::<bool>()).prop_map(|(name, machine, on)| {
            let (name, machine) = (name.into(), machine.into());
            if on {
                units::Change::Assign { name, machine }
            } else {
                units::Change::Unassign { name, machine }
            }
        }),
        (name, machine, prop::option::of(0u64..3)).prop_map(|(name, machine, since)| {
            units::Change::ReportState {
                machine: machine.into(),
                name: name.into(),
                state: since.map(|since_ms| units::Reported {
                    active: "active".into(),
                    since_ms,
                    ..units::Reported::default()
                }),
            }
        }),
    ]
}

/// Gives each command the clock of its place in the sequence.
fn timed(steps: &[(u64, Command)]) -> Vec<Command> {
    let mut now = NOW;
    steps
        .iter()
        .map(|(advance, cmd)| {
            now += advance;
            let mut cmd = cmd.clone();
            match &mut cmd {
                Command::Kv(w) => w.now_ms = now,
                Command::Expire { now_ms } => *now_ms = now,
                Command::Machine(Change::Up { now_ms, .. } | Change::Lost { now_ms, .. }) => {
                    *now_ms = now
                }
                Command::Machine(Change::Remove { .. } | Change::Capacity { .. })
                | Command::Unit(_) => {}
            }
            cmd
        })
        .collect()
}

/// What a client could observe of a state: reads, watch answers, expiry, rendered JSON.
fn observe(state: &State) -> Vec<String> {
    let mut seen = Vec::new();
    for key in KEYS {
        seen.push(match state.kv.get(key, true, true) {
            Ok(e) => e.render(NOW, false),
            Err(e) => e.render(),
        });
        for since in [0, 1, 5, 20] {
            seen.push(format!("{:?}", state.kv.watch_history(key, true, since)));
        }
    }
    seen.push(format!("{:?} {}", state.kv.next_expiry(), state.kv.index()));
    seen
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Two replicas applying the same commands hold equal states and answer alike, and a
    /// snapshot (postcard round trip) taken anywhere on the way changes nothing.
    #[test]
    fn replicas_agree(steps in prop::collection::vec(step(), 1..60), cut in any::<prop::sample::Index>()) {
        let commands = timed(&steps);
        let cut = cut.index(commands.len());
        let mut a = State::default();
        let mut b = State::default();
        for (i, cmd) in commands.iter().enumerate() {
            if i == cut {
                b = roundtrip(&b);
                prop_assert_eq!(&a, &b);
            }
            let ra = a.apply(cmd);
            let rb = b.apply(cmd);
            prop_assert_eq!(&ra, &rb);
            if let Response::Kv(Ok(event)) = &ra {
                prop_assert_eq!(event.etcd_index, a.kv.index());
            }
        }
        prop_assert_eq!(&a, &b);
        prop_assert_eq!(observe(&a), observe(&b));
        prop_assert_eq!(&roundtrip(&a), &a);
    }

    /// A failed write leaves the state as it was; a successful one moves the index by one.
    #[test]
    fn index_moves_by_one_per_successful_write(steps in prop::collection::vec(step(), 1..60)) {
        let mut state = State::default();
        for cmd in timed(&steps) {
            let before = state.clone();
            match state.apply(&cmd) {
                Response::Kv(Ok(_)) => prop_assert_eq!(state.kv.index(), before.kv.index() + 1),
                Response::Kv(Err(_)) => prop_assert_eq!(&state, &before),
                Response::Expired(events) => {
                    prop_assert_eq!(state.kv.index(), before.kv.index() + events.len() as u64);
                }
                Response::Machine(changed) | Response::Unit(Ok(changed)) => {
                    prop_assert_eq!(changed, state != before)
                }
                Response::Unit(Err(_)) => prop_assert_eq!(&state, &before),
            }
        }
    }
}
