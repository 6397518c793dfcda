//! flotilla's replicated state machine: everything the cluster agrees on, applied in log order.
//!
//! # Design
//!
//! [`State`] is a pure, deterministic value: [`State::apply`] takes a committed [`Command`] and
//! returns a [`Response`]; every replica that applies the same commands in the same order holds
//! the same state and returns the same responses. Nothing here reads a clock, a file or the
//! network: a command that depends on time carries the time the leader chose for it
//! (`now_ms`, milliseconds since the Unix epoch), so replicas agree on when a key expired.
//!
//! **Architecture invariant**: this crate knows nothing of Raft, HTTP, D-Bus or async. The agent
//! proposes commands through Raft and calls [`State::apply`] once per committed entry.
//!
//! The key space ([`kv`]) carries its own watch history (the last 1000 events), so a
//! `waitIndex` watch is answered alike by every replica and survives a snapshot.
//!
//! - [`kv`]: the etcd v2 key space.
//! - [`machines`]: the machines, their committed liveness and capacity.
//! - [`units`]: unit files by name (normalized text, content hash), fleet's desired states
//!   and transitions, assignments, restarts, and the states machines report.
//! - [`scheduler`]: [`scheduler::plan`], a pure function of the state that the leader runs
//!   after a unit or machine change; it returns the `Assign`/`Unassign` commands to propose
//!   and the units no machine can take, with the reason (also written to the state, so that
//!   every machine can show it). The leader proposes a plan as one [`units::Change::Plan`]:
//!   applied all or nothing, and refused unless the state's placement revision
//!   ([`units::Units::revision`]) is still the one the plan was made from, so a deposed
//!   leader's plan, or a plan overtaken by a machine loss, never lands.
//!
//! # Current limitations
//!
//! - See [`kv`] for where the key space knowingly differs from etcd.
//! - Placement is greedy and sticky (fleet's): it never rebalances, and it does not search
//!   for a packing that would fit a unit that greedy placement could not.
//! - `MemoryMax=` and `CPUQuota=` are read from `[Service]` only, and a unit without them
//!   counts as needing nothing.
//!
//! # Example usage
//!
//! ```
//! use flotilla_state::kv::{Preconditions, Write, WriteOp};
//! use flotilla_state::{Command, Response, State};
//!
//! let mut state = State::default();
//! let set = WriteOp::Set {
//!     value: "Hello world!".into(),
//!     dir: false,
//!     ttl: None,
//!     refresh: false,
//!     prev: Preconditions::default(),
//! };
//! let now_ms = 1_795_558_649_452;
//! let Response::Kv(Ok(event)) = state.apply(&Command::Kv(Write::new("/message", set, now_ms)))
//! else {
//!     panic!("a set of a new key succeeds")
//! };
//! assert_eq!(event.http_status(), 201);
//! let read = state.kv.get("/message", false, false).unwrap();
//! assert_eq!(
//!     read.render(now_ms, false),
//!     "{\"action\":\"get\",\"node\":{\"key\":\"/message\",\"value\":\"Hello world!\",\
//!      \"modifiedIndex\":1,\"createdIndex\":1}}\n"
//! );
//! ```

pub mod kv;
pub mod machines;
pub mod scheduler;
pub mod units;

use serde::{Deserialize, Serialize};

/// One entry of the replicated log's application payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// A write to the etcd v2 key space.
    Kv(kv::Write),
    /// Remove every key whose expiration is at or before `now_ms` (proposed by the leader only).
    Expire {
        /// The leader's clock when it proposed the expiry.
        now_ms: u64,
    },
    /// A change to the machine registry (join, heartbeat seen again, lost, removed).
    Machine(machines::Change),
    /// A change to the unit registry: submit, desired state, destroy, the scheduler's
    /// assignments, restarts and the states machines report.
    Unit(units::Change),
}

/// What applying a [`Command`] produced.
// A response lives only until the agent answers the client; boxing the event buys nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// The outcome of a [`Command::Kv`] write: its event, or the etcd error.
    Kv(Result<kv::Event, kv::Error>),
    /// The keys a [`Command::Expire`] removed, one event each.
    Expired(Vec<kv::Event>),
    /// Whether a [`Command::Machine`] changed the registry.
    Machine(bool),
    /// Whether a [`Command::Unit`] changed the unit registry, or why it was refused.
    Unit(Result<bool, units::Error>),
}

/// The whole replicated state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// The etcd v2 key space.
    pub kv: kv::Store,
    /// The machines of the cluster.
    pub machines: machines::Machines,
    /// The unit files, their desired states, assignments and reported states.
    pub units: units::Units,
}

impl State {
    /// Applies one committed command. Deterministic: depends only on `self` and `cmd`.
    pub fn apply(&mut self, cmd: &Command) -> Response {
        match cmd {
            Command::Kv(w) => Response::Kv(self.kv.apply(w)),
            Command::Expire { now_ms } => Response::Expired(self.kv.expire(*now_ms)),
            Command::Machine(c) => {
                let changed = self.machines.apply(c);
                if changed {
                    // Every machine change can change a plan (see `units::Units::revision`).
                    self.units.revision += 1;
                    self.units.inputs += 1;
                }
                Response::Machine(changed)
            }
            Command::Unit(c) => Response::Unit(self.units.apply(c, &self.machines)),
        }
    }
}
