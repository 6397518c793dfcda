//! The machines of the cluster as the cluster agreed on them: who joined, where, with what
//! metadata, and whether the leader has declared them lost.
//!
//! CONTRACT (the agent codes against exactly these names; bodies are being filled in).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A machine as registered in the replicated state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Machine {
    /// `name` from the machine's config (unique in the cluster).
    pub name: String,
    /// /etc/machine-id of the machine (32 hex digits).
    pub machine_id: String,
    /// The address other machines and clients reach it at (its advertised IP).
    pub addr: String,
    /// `[machine] metadata`.
    pub metadata: BTreeMap<String, String>,
    /// Up or lost, as last committed.
    pub status: Status,
    /// When `status` last changed (the leader's clock, ms since the Unix epoch).
    pub since_ms: u64,
}

/// Liveness as committed by the leader.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Status {
    /// Heartbeats arrive.
    Up,
    /// The leader missed its heartbeats for longer than the configured time.
    Lost,
}

/// A change to the machine registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Change {
    /// A machine announces itself (on start, or when its address or metadata changed), or the
    /// leader saw a lost machine's heartbeats again: status becomes Up.
    Up {
        /// The machine's record (its `status` and `since_ms` are ignored: set to Up / `now_ms`).
        machine: Machine,
        /// The proposer's clock.
        now_ms: u64,
    },
    /// The leader declares a machine lost.
    Lost {
        /// The machine's name.
        name: String,
        /// The leader's clock.
        now_ms: u64,
    },
    /// The machine is removed from the cluster (member remove).
    Remove {
        /// The machine's name.
        name: String,
    },
}

/// All machines by name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Machines {
    /// By name.
    pub by_name: BTreeMap<String, Machine>,
}

impl Machines {
    /// Applies a change; returns whether anything changed (an Up for an identical, already-up
    /// record changes nothing).
    pub fn apply(&mut self, change: &Change) -> bool {
        match change {
            Change::Up { machine, now_ms } => {
                let mut m = machine.clone();
                m.status = Status::Up;
                m.since_ms = *now_ms;
                match self.by_name.get(&m.name) {
                    Some(old) if old.status == Status::Up && same_record(old, &m) => false,
                    _ => {
                        self.by_name.insert(m.name.clone(), m);
                        true
                    }
                }
            }
            Change::Lost { name, now_ms } => match self.by_name.get_mut(name) {
                Some(m) if m.status == Status::Up => {
                    m.status = Status::Lost;
                    m.since_ms = *now_ms;
                    true
                }
                _ => false,
            },
            Change::Remove { name } => self.by_name.remove(name).is_some(),
        }
    }
}

fn same_record(a: &Machine, b: &Machine) -> bool {
    a.machine_id == b.machine_id && a.addr == b.addr && a.metadata == b.metadata
}
