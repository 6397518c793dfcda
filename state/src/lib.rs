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
//! # Current limitations
//!
//! The key space ([`kv`]) and the machine registry ([`machines`]); units follow.

pub mod kv;
pub mod machines;

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
}

/// What applying a [`Command`] produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// The outcome of a [`Command::Kv`] write: its event, or the etcd error.
    Kv(Result<kv::Event, kv::Error>),
    /// The keys a [`Command::Expire`] removed, one event each.
    Expired(Vec<kv::Event>),
    /// Whether a [`Command::Machine`] changed the registry.
    Machine(bool),
}

/// The whole replicated state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// The etcd v2 key space.
    pub kv: kv::Store,
    /// The machines of the cluster.
    pub machines: machines::Machines,
}

impl State {
    /// Applies one committed command. Deterministic: depends only on `self` and `cmd`.
    pub fn apply(&mut self, cmd: &Command) -> Response {
        match cmd {
            Command::Kv(w) => Response::Kv(self.kv.apply(w)),
            Command::Expire { now_ms } => Response::Expired(self.kv.expire(*now_ms)),
            Command::Machine(c) => Response::Machine(self.machines.apply(c)),
        }
    }
}
