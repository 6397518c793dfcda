//! Liveness: every member sends a heartbeat to the leader every `heartbeat_interval`; the
//! leader keeps the last time it heard from each machine in memory (soft state, never a Raft
//! write per heartbeat) and commits one `Change::Lost` for a machine silent longer than
//! `machine_lost_after`, and one `Change::Up` when a machine is new, changed or back.
//!
//! Each member also proposes its own `Change::Capacity` (what the scheduler places units'
//! `MemoryMax=` / `CPUQuota=` against) once it is registered, and again whenever it changes:
//! memory is `MemTotal` of /proc/meminfo, or the memory limit of the agent's slice (or of a
//! cgroup above it, cgroup v1 or v2) if that is lower; CPUs are what the agent may use
//! (`available_parallelism`: affinity and CPU quota). It is re-read every heartbeat; a
//! proposal only goes out when the value differs from the committed one.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use flotilla_state::Command;
use flotilla_state::machines::{Capacity, Change, Machine, Status};
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
    machine: tokio::sync::watch::Receiver<Machine>,
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
            machine: machine.borrow().clone(),
        };
        let name = hb.machine.name.clone();
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
        propose_capacity(&cluster, &name, interval).await;
    }
}

/// Proposes this machine's capacity if it is registered and its committed capacity differs.
async fn propose_capacity(cluster: &Cluster, name: &str, deadline: Duration) {
    let Some(now) = capacity() else {
        return;
    };
    let committed = {
        let a = cluster.applied();
        let m = &a.state.machines;
        if !m.by_name.contains_key(name) {
            return;
        }
        m.capacity.get(name).copied()
    };
    if committed == Some(now) {
        return;
    }
    let change = Change::Capacity {
        name: name.to_owned(),
        memory_bytes: now.memory_bytes,
        cpus: now.cpus,
    };
    // Bounded: the heartbeats must go on even if the cluster cannot commit right now.
    match tokio::time::timeout(deadline, cluster.propose(Command::Machine(change))).await {
        Ok(Ok(_)) => tracing::info!(
            memory_bytes = now.memory_bytes,
            cpus = now.cpus,
            "this machine's capacity is committed"
        ),
        Ok(Err(e)) => tracing::debug!("cannot commit this machine's capacity: {e}, retrying"),
        Err(_) => tracing::debug!("committing this machine's capacity timed out, retrying"),
    }
}

/// What this machine offers units: memory (the lower of MemTotal and the agent's slice's
/// limit) and CPUs; `None` if /proc/meminfo cannot be read.
fn capacity() -> Option<Capacity> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let total = mem_total(&meminfo)?;
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let limit = cgroup_limits(&own)
        .into_iter()
        .filter_map(|file| std::fs::read_to_string(file).ok())
        .filter_map(|text| memory_limit(&text))
        .min();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    Some(Capacity {
        memory_bytes: limit.map_or(total, |l| l.min(total)),
        cpus,
    })
}

/// `MemTotal` of /proc/meminfo, in bytes.
fn mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// The memory limit files of the agent's slice and every cgroup above it, for each memory
/// hierarchy in /proc/self/cgroup (v1 `memory`, v2 at /sys/fs/cgroup or, hybrid, at
/// /sys/fs/cgroup/unified). The agent's own cgroup is left out: its limit is the agent's,
/// not the units'.
fn cgroup_limits(proc_self_cgroup: &str) -> Vec<String> {
    let mut files = Vec::new();
    for line in proc_self_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let (roots, file): (&[&str], &str) = match controllers {
            "" => (&["/sys/fs/cgroup", "/sys/fs/cgroup/unified"], "memory.max"),
            c if c.split(',').any(|c| c == "memory") => {
                (&["/sys/fs/cgroup/memory"], "memory.limit_in_bytes")
            }
            _ => continue,
        };
        let mut dir = Path::new(path).parent();
        while let Some(d) = dir {
            let rel = d.to_str().unwrap_or("/").trim_start_matches('/');
            for root in roots {
                let p = Path::new(root).join(rel).join(file);
                files.push(p.display().to_string());
            }
            dir = d.parent();
        }
    }
    files
}

/// A cgroup memory limit file's value in bytes; `None` for no limit (`max`, or cgroup v1's
/// page-rounded `i64::MAX`).
fn memory_limit(text: &str) -> Option<u64> {
    let t = text.trim();
    if t == "max" {
        return None;
    }
    t.parse::<u64>().ok().filter(|&b| b < 1 << 62)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_comes_from_meminfo_and_cgroup_limits() {
        let meminfo = "MemTotal:       24684084 kB\nMemFree:         1000 kB\n";
        assert_eq!(mem_total(meminfo), Some(24_684_084 * 1024));
        assert_eq!(mem_total("MemFree: 1 kB\n"), None);
        assert_eq!(memory_limit("max\n"), None);
        assert_eq!(memory_limit("9223372036854771712\n"), None, "v1 unlimited");
        assert_eq!(memory_limit("536870912\n"), Some(512 << 20));
        assert_eq!(memory_limit("garbage"), None);
    }

    #[test]
    fn limits_are_read_from_the_slice_up_in_every_memory_hierarchy() {
        let v2 = cgroup_limits("0::/system.slice/flotillad.service\n");
        assert_eq!(
            v2,
            [
                "/sys/fs/cgroup/system.slice/memory.max",
                "/sys/fs/cgroup/unified/system.slice/memory.max",
                "/sys/fs/cgroup/memory.max",
                "/sys/fs/cgroup/unified/memory.max",
            ]
        );
        let v1 = cgroup_limits("4:memory:/system.slice/flotillad.service\n3:cpu,cpuacct:/x\n");
        assert_eq!(
            v1,
            [
                "/sys/fs/cgroup/memory/system.slice/memory.limit_in_bytes",
                "/sys/fs/cgroup/memory/memory.limit_in_bytes",
            ]
        );
    }

    #[test]
    fn this_machine_has_a_capacity() {
        let c = capacity().expect("/proc/meminfo is readable");
        assert!(c.memory_bytes > 0 && c.cpus > 0, "{c:?}");
    }
}
