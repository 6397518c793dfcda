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
//! - [`sessions`]: the responses of recent proposals by proposer, so that a proposal sent
//!   again returns what its first copy produced instead of applying twice
//!   ([`State::apply_proposal`]).
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
pub mod sessions;
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
    /// The responses of recent proposals, so that a copy is not applied twice.
    pub sessions: sessions::Sessions,
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

    /// Applies one committed proposal at most once: a proposal whose request id was applied
    /// before answers what it answered then (see [`sessions`]). Deterministic, like
    /// [`State::apply`].
    pub fn apply_proposal(&mut self, p: &sessions::Proposal) -> sessions::Outcome {
        let Some(id) = p.id else {
            return sessions::Outcome::Applied(self.apply(&p.command));
        };
        match self.sessions.admit(id, p.first_pending) {
            sessions::Admission::Stale => sessions::Outcome::Stale,
            sessions::Admission::Seen(r) => sessions::Outcome::Replayed(r),
            sessions::Admission::Fresh => {
                let r = self.apply(&p.command);
                self.sessions.record(id, &r);
                sessions::Outcome::Applied(r)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::sessions::{MAX_RESPONSES, MAX_SESSIONS, Outcome, Proposal, RequestId, Session};
    use super::*;
    use crate::kv::{Preconditions, Write, WriteOp};

    const NOW: u64 = 1_795_558_649_452;

    fn session(member: u64) -> Session {
        Session { member, boot: 7 }
    }

    fn proposal(command: Command, s: Session, seq: u64, first_pending: u64) -> Proposal {
        Proposal {
            command,
            id: Some(RequestId { session: s, seq }),
            first_pending,
        }
    }

    fn post(dir: &str) -> Command {
        Command::Kv(Write::new(
            dir,
            WriteOp::CreateInOrder {
                value: "job".into(),
                dir: false,
                ttl: None,
            },
            NOW,
        ))
    }

    fn cas(key: &str, prev: &str, value: &str) -> Command {
        set_if(
            key,
            value,
            Preconditions {
                prev_value: Some(prev.into()),
                ..Preconditions::default()
            },
        )
    }

    fn set(key: &str, value: &str) -> Command {
        set_if(key, value, Preconditions::default())
    }

    fn set_if(key: &str, value: &str, prev: Preconditions) -> Command {
        Command::Kv(Write::new(
            key,
            WriteOp::Set {
                value: value.into(),
                dir: false,
                ttl: None,
                refresh: false,
                prev,
            },
            NOW,
        ))
    }

    fn children(state: &State, dir: &str) -> usize {
        let ev = state.kv.get(dir, true, true).expect("the directory exists");
        ev.to_json(NOW)["node"]["nodes"]
            .as_array()
            .map_or(0, |a| a.len())
    }

    #[test]
    fn an_in_order_key_posted_twice_is_created_once() {
        let mut state = State::default();
        let p = proposal(post("/queue"), session(1), 1, 1);
        let first = state.apply_proposal(&p);
        let again = state.apply_proposal(&p);
        let Outcome::Applied(created) = first else {
            panic!("the first copy applies: {first:?}")
        };
        assert_eq!(again, Outcome::Replayed(created));
        assert_eq!(children(&state, "/queue"), 1);
        assert_eq!(state.kv.index(), 1);
    }

    #[test]
    fn a_compare_and_swap_sent_twice_answers_its_success_twice() {
        let mut state = State::default();
        state.apply(&set("/k", "a"));
        let p = proposal(cas("/k", "a", "b"), session(1), 1, 1);
        let Outcome::Applied(first) = state.apply_proposal(&p) else {
            panic!("the first copy applies")
        };
        assert!(matches!(first, Response::Kv(Ok(_))), "{first:?}");
        // Applied again, the compare would fail ("b" != "a"): the copy answers the success.
        assert_eq!(state.apply_proposal(&p), Outcome::Replayed(first));
        assert_eq!(state.kv.index(), 2);
    }

    #[test]
    fn sessions_and_numbers_are_told_apart() {
        let mut state = State::default();
        for (member, seq) in [(1, 1), (1, 2), (2, 1)] {
            let out = state.apply_proposal(&proposal(post("/q"), session(member), seq, 1));
            assert!(matches!(out, Outcome::Applied(_)), "{out:?}");
        }
        let other_boot = Session { member: 1, boot: 8 };
        let out = state.apply_proposal(&proposal(post("/q"), other_boot, 1, 1));
        assert!(matches!(out, Outcome::Applied(_)), "{out:?}");
        assert_eq!(children(&state, "/q"), 4);
        // Without an id, a command applies each time.
        state.apply_proposal(&Proposal::anonymous(post("/q")));
        state.apply_proposal(&Proposal::anonymous(post("/q")));
        assert_eq!(children(&state, "/q"), 6);
    }

    #[test]
    fn an_acknowledged_response_is_forgotten_and_its_copy_refused() {
        let mut state = State::default();
        let s = session(1);
        let p1 = proposal(post("/q"), s, 1, 1);
        state.apply_proposal(&p1);
        // Sent after the answer to 1 arrived: 1 is acknowledged.
        state.apply_proposal(&proposal(post("/q"), s, 2, 2));
        assert_eq!(state.sessions.responses(), 1);
        assert_eq!(state.apply_proposal(&p1), Outcome::Stale);
        assert_eq!(children(&state, "/q"), 2);
        // An acknowledgement never moves back (requests arrive out of order).
        let late = proposal(post("/q"), s, 3, 1);
        assert!(matches!(state.apply_proposal(&late), Outcome::Applied(_)));
        assert_eq!(state.apply_proposal(&p1), Outcome::Stale);
    }

    #[test]
    fn the_table_is_bounded() {
        let mut state = State::default();
        let s = session(1);
        for seq in 1..=(MAX_RESPONSES as u64 + 2) {
            state.apply_proposal(&proposal(set("/k", "v"), s, seq, 1));
        }
        assert_eq!(state.sessions.responses(), MAX_RESPONSES);
        // The two oldest are forgotten: their copies are refused, not applied again.
        assert_eq!(
            state.apply_proposal(&proposal(set("/k", "v"), s, 2, 1)),
            Outcome::Stale
        );
        for member in 2..=(MAX_SESSIONS as u64 + 5) {
            state.apply_proposal(&proposal(set("/k", "v"), session(member), 1, 1));
        }
        assert_eq!(state.sessions.len(), MAX_SESSIONS);
    }

    #[test]
    fn replicas_agree_through_a_snapshot() {
        let mut leader = State::default();
        let s = session(3);
        let p = proposal(post("/q"), s, 1, 1);
        leader.apply_proposal(&p);
        let bytes = postcard::to_allocvec(&leader).expect("the state encodes");
        let mut restored: State = postcard::from_bytes(&bytes).expect("the state decodes");
        assert_eq!(restored, leader);
        // The copy committed after the snapshot answers alike on both.
        assert_eq!(restored.apply_proposal(&p), leader.apply_proposal(&p));
        assert_eq!(restored, leader);
    }
}
