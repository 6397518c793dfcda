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
    /// What the machine offers to units (its agent proposes it after `Up`, and again when it
    /// changed); the scheduler places units against it. A machine without one is unlimited.
    Capacity {
        /// The machine's name (must be registered).
        name: String,
        /// Memory units may use, in bytes.
        memory_bytes: u64,
        /// CPUs units may use.
        cpus: u32,
    },
}

/// What a machine offers to units.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capacity {
    /// Memory units may use, in bytes.
    pub memory_bytes: u64,
    /// CPUs units may use.
    pub cpus: u32,
}

/// All machines by name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Machines {
    /// By name.
    pub by_name: BTreeMap<String, Machine>,
    /// Capacity by machine name (kept while a machine is lost, dropped when it is removed).
    pub capacity: BTreeMap<String, Capacity>,
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
            Change::Remove { name } => {
                self.capacity.remove(name);
                self.by_name.remove(name).is_some()
            }
            Change::Capacity {
                name,
                memory_bytes,
                cpus,
            } => {
                if !self.by_name.contains_key(name) {
                    return false;
                }
                let c = Capacity {
                    memory_bytes: *memory_bytes,
                    cpus: *cpus,
                };
                self.capacity.insert(name.clone(), c) != Some(c)
            }
        }
    }
}

fn same_record(a: &Machine, b: &Machine) -> bool {
    a.machine_id == b.machine_id && a.addr == b.addr && a.metadata == b.metadata
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine(name: &str, addr: &str) -> Machine {
        Machine {
            name: name.into(),
            machine_id: "0123456789abcdef0123456789abcdef".into(),
            addr: addr.into(),
            metadata: BTreeMap::from([("region".to_owned(), "east".to_owned())]),
            // Ignored by Change::Up.
            status: Status::Lost,
            since_ms: 7,
        }
    }

    fn up(name: &str, addr: &str, now_ms: u64) -> Change {
        Change::Up {
            machine: machine(name, addr),
            now_ms,
        }
    }

    #[test]
    fn up_registers_with_status_up_at_now() {
        let mut m = Machines::default();
        assert!(m.apply(&up("node1", "10.0.0.1", 100)));
        let node = &m.by_name["node1"];
        assert_eq!((node.status, node.since_ms), (Status::Up, 100));
    }

    #[test]
    fn identical_up_changes_nothing() {
        let mut m = Machines::default();
        m.apply(&up("node1", "10.0.0.1", 100));
        let before = m.clone();
        assert!(!m.apply(&up("node1", "10.0.0.1", 200)));
        assert_eq!(m, before, "since_ms is kept");
    }

    #[test]
    fn changed_address_or_metadata_is_a_change() {
        let mut m = Machines::default();
        m.apply(&up("node1", "10.0.0.1", 100));
        assert!(m.apply(&up("node1", "10.0.0.2", 200)));
        assert_eq!(
            (
                m.by_name["node1"].addr.as_str(),
                m.by_name["node1"].since_ms
            ),
            ("10.0.0.2", 200)
        );
        let mut other = machine("node1", "10.0.0.2");
        other.metadata.insert("disk".into(), "ssd".into());
        assert!(m.apply(&Change::Up {
            machine: other,
            now_ms: 300
        }));
        assert_eq!(m.by_name["node1"].metadata.len(), 2);
    }

    #[test]
    fn lost_then_up_again() {
        let mut m = Machines::default();
        m.apply(&up("node1", "10.0.0.1", 100));
        assert!(m.apply(&Change::Lost {
            name: "node1".into(),
            now_ms: 500
        }));
        assert_eq!(
            (m.by_name["node1"].status, m.by_name["node1"].since_ms),
            (Status::Lost, 500)
        );
        // Lost twice is no change; the first time is kept.
        assert!(!m.apply(&Change::Lost {
            name: "node1".into(),
            now_ms: 600
        }));
        assert_eq!(m.by_name["node1"].since_ms, 500);
        // Seen again with the same record: up again.
        assert!(m.apply(&up("node1", "10.0.0.1", 700)));
        assert_eq!(
            (m.by_name["node1"].status, m.by_name["node1"].since_ms),
            (Status::Up, 700)
        );
    }

    #[test]
    fn unknown_machines_are_no_change() {
        let mut m = Machines::default();
        assert!(!m.apply(&Change::Lost {
            name: "ghost".into(),
            now_ms: 1
        }));
        assert!(!m.apply(&Change::Remove {
            name: "ghost".into()
        }));
        assert!(m.by_name.is_empty());
    }

    #[test]
    fn capacity_needs_a_registered_machine_and_goes_with_it() {
        let mut m = Machines::default();
        let cap = |name: &str, cpus| Change::Capacity {
            name: name.into(),
            memory_bytes: 1 << 30,
            cpus,
        };
        assert!(!m.apply(&cap("node1", 2)), "unknown machine");
        m.apply(&up("node1", "10.0.0.1", 100));
        assert!(m.apply(&cap("node1", 2)));
        assert!(!m.apply(&cap("node1", 2)), "same capacity");
        assert!(m.apply(&cap("node1", 4)));
        assert_eq!(m.capacity["node1"].cpus, 4);
        m.apply(&Change::Remove {
            name: "node1".into(),
        });
        assert!(m.capacity.is_empty());
    }

    #[test]
    fn remove() {
        let mut m = Machines::default();
        m.apply(&up("node1", "10.0.0.1", 100));
        m.apply(&up("node2", "10.0.0.2", 100));
        assert!(m.apply(&Change::Remove {
            name: "node1".into()
        }));
        assert_eq!(m.by_name.keys().collect::<Vec<_>>(), ["node2"]);
    }
}
