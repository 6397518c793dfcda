//! Liveness: every member sends a heartbeat to the leader every `heartbeat_interval`; the
//! leader keeps the last time it heard from each machine in memory (soft state, never a Raft
//! write per heartbeat) and commits one `Change::Lost` for a machine silent longer than
//! `machine_lost_after`, and one `Change::Up` when a machine is new, changed or back.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use flotilla_state::Command;
use flotilla_state::machines::{Change, Machine, Status};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::cluster::Cluster;
use crate::raft::network::path;

/// What a member sends the leader.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Heartbeat {
    /// The machine's current record (status and since_ms are the leader's business).
    pub(crate) machine: Machine,
}

/// The leader-local table of last heartbeats, shared with the peer server.
#[derive(Clone, Default)]
pub(crate) struct Liveness {
    seen: Arc<Mutex<HashMap<String, (Instant, Machine)>>>,
}

impl Liveness {
    /// Records a heartbeat.
    pub(crate) fn seen(&self, hb: Heartbeat) {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.insert(hb.machine.name.clone(), (Instant::now(), hb.machine));
    }

    fn snapshot(&self) -> HashMap<String, (Instant, Machine)> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn forget(&self, name: &str) {
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
    }
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Sends this machine's heartbeat to the leader every `interval`.
pub(crate) async fn send_heartbeats(
    cluster: Cluster,
    liveness: Liveness,
    machine: Machine,
    interval: Duration,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let hb = Heartbeat {
            machine: machine.clone(),
        };
        match cluster.leader() {
            Some(l) if l == cluster.id() => liveness.seen(hb),
            Some(l) => {
                let addr = cluster
                    .members()
                    .into_iter()
                    .find(|m| m.id == l)
                    .map(|m| m.member.peer_addr);
                if let Some(addr) = addr
                    && let Err(e) = cluster
                        .peers()
                        .call::<_, ()>(&addr, path::HEARTBEAT, &hb, interval)
                        .await
                {
                    tracing::debug!("heartbeat to the leader failed: {e}");
                }
            }
            None => {}
        }
    }
}

/// On the leader: commits machines lost, new, changed or back, checking every `interval`.
pub(crate) async fn watch_machines(
    cluster: Cluster,
    liveness: Liveness,
    interval: Duration,
    lost_after: Duration,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut leader_since: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        if !cluster.is_leader() {
            leader_since = None;
            continue;
        }
        let since = *leader_since.get_or_insert_with(Instant::now);
        let now = Instant::now();
        let seen = liveness.snapshot();
        let machines = {
            let a = cluster.applied();
            a.state.machines.by_name.clone()
        };
        let members: Vec<String> = cluster
            .members()
            .into_iter()
            .map(|m| m.member.name)
            .collect();
        let mut changes = Vec::new();
        for (name, (at, record)) in &seen {
            // A removed member that still runs is not brought back.
            if now.duration_since(*at) > lost_after || !members.contains(name) {
                continue;
            }
            let needs_up = match machines.get(name) {
                None => true,
                Some(m) => {
                    m.status == Status::Lost
                        || m.machine_id != record.machine_id
                        || m.addr != record.addr
                        || m.metadata != record.metadata
                }
            };
            if needs_up {
                changes.push(Change::Up {
                    machine: record.clone(),
                    now_ms: now_ms(),
                });
            }
        }
        for (name, m) in &machines {
            if m.status != Status::Up {
                continue;
            }
            // A new leader gives every machine a full period from its election.
            let last = seen.get(name).map_or(since, |(at, _)| (*at).max(since));
            if now.duration_since(last) > lost_after {
                changes.push(Change::Lost {
                    name: name.clone(),
                    now_ms: now_ms(),
                });
            }
        }
        for change in changes {
            if let Change::Lost { name, .. } = &change {
                tracing::info!(machine = %name, "no heartbeat for {lost_after:?}, marking the machine lost");
                liveness.forget(name);
            }
            if let Err(e) = cluster.propose(Command::Machine(change)).await {
                tracing::warn!("cannot commit a machine change: {e}, ignoring");
            }
        }
    }
}
