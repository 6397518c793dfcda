//! The scheduler: which machine(s) each unit runs on, as a pure function of the state.
//!
//! [`plan`] is run by the leader after every change; it returns the assignment commands that
//! bring the state to what fleet's engine would decide, and the units no machine can take,
//! each with a reason a person understands.
//!
//! # Rules (fleet's `engine/reconciler.go`, `engine/scheduler.go`, `agent/state.go`)
//!
//! - Only machines that are Up take units. An assignment to a machine that is Lost or gone is
//!   dropped and the unit placed again, so a lost machine's units move with the first plan after
//!   the Lost commit; when the machine comes back it does not get them back (its agent sees no
//!   assignment and stops them: nothing runs twice).
//! - An existing assignment stays while it is valid (fleet never rebalances).
//! - `MachineID=`: only the machine with that /etc/machine-id.
//! - `MachineMetadata=`: values of one key OR-ed, different keys AND-ed.
//! - `MachineOf=`: only the machine running every named unit; not placed while one of them is
//!   not placed.
//! - `Conflicts=`: globs, checked both ways (this unit's globs against the units on the
//!   machine, and their globs against this unit's name).
//! - `Global=`: on every Up machine that matches `MachineMetadata=` (and has room).
//! - `Replaces=`: globs; the replacing unit may be placed where a replaced unit runs, which
//!   then moves away; a replaced unit is never placed where its replacer runs. Two units that
//!   replace each other are ignored (fleet's rule for circular replaces).
//! - Least-loaded placement: the machine with the fewest units, ties broken by machine name.
//! - Beyond fleet: `[Service] MemoryMax=` and `CPUQuota=` are placed against each machine's
//!   [`Capacity`] (a machine without one is unlimited), and [`SchedulerConfig`] caps the
//!   number of units per machine.
//!
//! **Invariants** (proptests in `tests/scheduler.rs`): the plan is deterministic; applying it
//! and planning again gives no commands (a fixpoint); no non-global unit is on two machines;
//! no two units that conflict share a machine.
//!
//! # Use
//!
//! The leader plans after a committed change to units or machines (a `ReportState` or a kv
//! write cannot change a plan) and proposes [`Plan::command`]: one `Change::Plan` carrying
//! the commands in order, applied atomically (a moved unit is unassigned from its old machine
//! in the same entry that assigns it to the new one) and fenced by the placement revision it
//! was made at (a plan of a deposed leader, or one overtaken by another plan or a machine
//! change, is refused whole; the next plan is made from the new state). Cost:
//! about 1–1.5 ms for 1000 units on 3 or 100 machines (`cargo bench -p flotilla-state --bench
//! plan`).
//!
//! # Current limitations
//!
//! - Moves caused by `Replaces=` are bounded (twice the number of units) so that a chain of
//!   replaces that would move units forever ends; past the bound a unit needing a move stays
//!   unplaced and the next plan tries again (that plan is then not empty).
//! - `MachineID=` matches /etc/machine-id exactly, as fleet does (not the machine name).
//! - Fencing is coarse: every committed destroy, stop, replace or machine change makes a plan
//!   in flight stale, so under an unbroken stream of them placement waits for a pause (new
//!   submits and starts do not fence: they never starve placement).

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};

use crate::machines::{Capacity, Machine, Status};
use crate::units::{Change, Desired, UnitRecord, format_bytes, format_cpus, glob_matches};
use crate::{Command, State};

/// The scheduler's settings (the agent's config).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SchedulerConfig {
    /// At most this many units (global ones included) on one machine; `None`: no cap.
    pub max_units_per_machine: Option<usize>,
}

/// What [`plan`] decided.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// The placement revision ([`crate::units::Units::revision`]) of the state planned from.
    pub base: u64,
    /// `Command::Unit(Change::Unassign ..)`, then `Command::Unit(Change::Assign ..)`, each in
    /// unit then machine order, then `Change::SetUnschedulable` for every reason that changed;
    /// propose them in this order.
    pub commands: Vec<Command>,
    /// Units that should run but are (wholly or, for a global unit, partly) not placed, by
    /// name, with why.
    pub unschedulable: Vec<(String, String)>,
}

/// Whether a plan of `state` could differ from a plan made when
/// [`crate::units::Units::inputs`] was `last` (`None`: never planned). Only the machines'
/// reports and restarts leave it unchanged, and a plan does not read them.
pub fn needs_plan(state: &State, last: Option<u64>) -> bool {
    last != Some(state.units.inputs)
}

/// Plans the assignments for `state`. Pure and deterministic.
pub fn plan(state: &State, config: &SchedulerConfig) -> Plan {
    let mut s = Scheduler::new(state, config);
    s.validate();
    s.place();
    s.finish(state)
}

impl Plan {
    /// The plan as the one command to propose: a [`Change::Plan`] at [`Plan::base`], applied
    /// atomically and only if nothing it depends on was committed since; `None` if there is
    /// nothing to do.
    pub fn command(&self) -> Option<Command> {
        if self.commands.is_empty() {
            return None;
        }
        let changes = self
            .commands
            .iter()
            .filter_map(|c| match c {
                Command::Unit(change) => Some(change.clone()),
                _ => None,
            })
            .collect();
        Some(Command::Unit(Change::Plan {
            base: self.base,
            changes,
        }))
    }
}

/// Why one machine cannot take one unit; the variants are in the order the checks run, and
/// the reason reported is that of the furthest check any machine reached.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Reject<'a> {
    MachineId,
    Metadata,
    Peers,
    Conflict(&'a str),
    ReplacedBy(&'a str),
    Memory { need: u64, free: u64 },
    Cpu { need: u64, free: u64 },
    Full,
}

impl Reject<'_> {
    fn stage(&self) -> u8 {
        match self {
            Reject::MachineId => 0,
            Reject::Metadata => 1,
            Reject::Peers => 2,
            Reject::Conflict(_) | Reject::ReplacedBy(_) => 3,
            Reject::Memory { .. } | Reject::Cpu { .. } | Reject::Full => 4,
        }
    }
}

struct Node<'a> {
    name: &'a str,
    machine: &'a Machine,
    capacity: Option<Capacity>,
    /// Units on this node, by index (index order is name order).
    units: BTreeSet<usize>,
    /// Units on this node that carry `Conflicts=` or `Replaces=` (checked against newcomers).
    picky: BTreeSet<usize>,
    mem_used: u64,
    cpu_used: u64,
}

struct Scheduler<'a> {
    config: &'a SchedulerConfig,
    /// Every unit of the registry, in name order; a unit is known by its index here.
    recs: Vec<&'a UnitRecord>,
    /// `MachineOf=` of each unit as indices (`None`: no such unit).
    peers: Vec<Vec<Option<usize>>>,
    nodes: Vec<Node<'a>>,
    /// Per unit, the nodes it is placed on.
    placed: Vec<BTreeSet<usize>>,
    /// Units that should be placed (scheduled, not templates), in name order.
    wanted: Vec<usize>,
    globs: Globs<'a>,
}

/// The `Conflicts=` and `Replaces=` globs of every unit, numbered, with a memo of which unit
/// names each matches (computed on first use: a plan asks the same question many times).
struct Globs<'a> {
    patterns: Vec<&'a str>,
    /// Per unit, the numbers of its `Conflicts=` globs.
    conflicts: Vec<Vec<usize>>,
    /// Per unit, the numbers of its `Replaces=` globs.
    replaces: Vec<Vec<usize>>,
    /// `pattern * units + unit`: 0 not known yet, 1 no match, 2 match.
    memo: Vec<Cell<u8>>,
}

impl<'a> Globs<'a> {
    fn new(recs: &[&'a UnitRecord]) -> Self {
        let mut ids: BTreeMap<&'a str, usize> = BTreeMap::new();
        let mut number = |list: &'a [String]| -> Vec<usize> {
            list.iter()
                .map(|p| {
                    let next = ids.len();
                    *ids.entry(p.as_str()).or_insert(next)
                })
                .collect()
        };
        let conflicts = recs
            .iter()
            .map(|r| number(&r.requirements.conflicts))
            .collect();
        let replaces = recs
            .iter()
            .map(|r| number(&r.requirements.replaces))
            .collect();
        let mut patterns = vec![""; ids.len()];
        for (p, id) in ids {
            patterns[id] = p;
        }
        let memo = vec![Cell::new(0); patterns.len() * recs.len()];
        Globs {
            patterns,
            conflicts,
            replaces,
            memo,
        }
    }
}

impl<'a> Scheduler<'a> {
    fn new(state: &'a State, config: &'a SchedulerConfig) -> Self {
        let nodes: Vec<Node<'a>> = state
            .machines
            .by_name
            .values()
            .filter(|m| m.status == Status::Up)
            .map(|m| Node {
                name: &m.name,
                machine: m,
                capacity: state.machines.capacity.get(&m.name).copied(),
                units: BTreeSet::new(),
                picky: BTreeSet::new(),
                mem_used: 0,
                cpu_used: 0,
            })
            .collect();
        let recs: Vec<&UnitRecord> = state.units.by_name.values().collect();
        let peers = recs
            .iter()
            .map(|r| {
                r.requirements
                    .machine_of
                    .iter()
                    .map(|p| recs.binary_search_by(|r| r.name.as_str().cmp(p)).ok())
                    .collect()
            })
            .collect();
        let wanted: Vec<usize> = (0..recs.len())
            .filter(|&u| recs[u].desired != Desired::Inactive && !template(&recs[u].name))
            .collect();
        let mut s = Scheduler {
            config,
            globs: Globs::new(&recs),
            placed: vec![BTreeSet::new(); recs.len()],
            recs,
            peers,
            nodes,
            wanted,
        };
        let node_index: BTreeMap<&str, usize> = s
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.name, i))
            .collect();
        let assigned = assignments(&s.recs, state);
        for (u, machines) in assigned.into_iter().enumerate() {
            let Some(machines) = machines else {
                continue;
            };
            let unit = s.recs[u];
            if unit.desired == Desired::Inactive || template(&unit.name) {
                continue;
            }
            for m in machines {
                if let Some(&i) = node_index.get(m.as_str()) {
                    s.add(u, i);
                }
            }
        }
        s
    }

    fn add(&mut self, u: usize, i: usize) {
        let (mem, cpu) = self.need(u, i);
        let r = &self.recs[u].requirements;
        let picky = !r.conflicts.is_empty() || !r.replaces.is_empty();
        let node = &mut self.nodes[i];
        node.units.insert(u);
        if picky {
            node.picky.insert(u);
        }
        node.mem_used += mem;
        node.cpu_used += cpu;
        self.placed[u].insert(i);
    }

    fn remove(&mut self, u: usize, i: usize) {
        let (mem, cpu) = self.need(u, i);
        let node = &mut self.nodes[i];
        if !node.units.remove(&u) {
            return;
        }
        node.picky.remove(&u);
        node.mem_used -= mem;
        node.cpu_used -= cpu;
        self.placed[u].remove(&i);
    }

    /// Memory bytes and thousandths of a CPU unit `u` takes on node `i`.
    fn need(&self, u: usize, i: usize) -> (u64, u64) {
        let total = self.nodes[i].capacity.map_or(0, |c| c.memory_bytes);
        let r = &self.recs[u].requirements;
        (
            r.memory_max.map_or(0, |m| m.on(total)),
            r.cpu_millis.unwrap_or(0),
        )
    }

    /// Whether glob number `p` matches the name of unit `u`.
    fn hit(&self, p: usize, u: usize) -> bool {
        let cell = &self.globs.memo[p * self.recs.len() + u];
        match cell.get() {
            0 => {
                let hit = matches(self.globs.patterns[p], &self.recs[u].name);
                cell.set(1 + u8::from(hit));
                hit
            }
            known => known == 2,
        }
    }

    fn is_on(&self, u: usize, i: usize) -> bool {
        self.nodes[i].units.contains(&u)
    }

    fn is_placed(&self, u: usize) -> bool {
        !self.placed[u].is_empty()
    }

    /// The checks that do not depend on other units.
    fn fixed(&self, u: usize, i: usize) -> Result<(), Reject<'a>> {
        let r = &self.recs[u].requirements;
        let m = self.nodes[i].machine;
        if r.machine_id.as_ref().is_some_and(|id| *id != m.machine_id) {
            return Err(Reject::MachineId);
        }
        if !r.metadata_matches(&m.metadata) {
            return Err(Reject::Metadata);
        }
        Ok(())
    }

    fn peers_on(&self, u: usize, i: usize) -> Result<(), Reject<'a>> {
        if self.peers[u]
            .iter()
            .all(|p| p.is_some_and(|p| self.is_on(p, i)))
        {
            Ok(())
        } else {
            Err(Reject::Peers)
        }
    }

    /// Conflicts both ways, and replaces: `Ok(units this one would move away)`.
    fn neighbours(&self, u: usize, i: usize) -> Result<Vec<usize>, Reject<'a>> {
        let node = &self.nodes[i];
        let r = &self.recs[u].requirements;
        let mut evict = Vec::new();
        let check = |o: usize| -> Result<Option<usize>, Reject<'a>> {
            if o == u {
                return Ok(None);
            }
            let other = self.recs[o];
            let g = &self.globs;
            if g.conflicts[u].iter().any(|&p| self.hit(p, o))
                || g.conflicts[o].iter().any(|&p| self.hit(p, u))
            {
                return Err(Reject::Conflict(&other.name));
            }
            let we_replace = g.replaces[u].iter().any(|&p| self.hit(p, o));
            let they_replace = g.replaces[o].iter().any(|&p| self.hit(p, u));
            match (we_replace, they_replace) {
                (true, false) => Ok(Some(o)),
                (false, true) => Err(Reject::ReplacedBy(&other.name)),
                _ => Ok(None),
            }
        };
        // Only a picky unit can object to a unit that is not picky itself.
        let others = if r.conflicts.is_empty() && r.replaces.is_empty() {
            &node.picky
        } else {
            &node.units
        };
        for &o in others {
            if let Some(e) = check(o)? {
                evict.push(e);
            }
        }
        Ok(evict)
    }

    /// Room on node `i` for unit `u`, the units in `leaving` moving away first.
    fn room(&self, u: usize, i: usize, leaving: &[usize]) -> Result<(), Reject<'a>> {
        let node = &self.nodes[i];
        let (mut mem_used, mut cpu_used) = (node.mem_used, node.cpu_used);
        for &l in leaving {
            let (m, c) = self.need(l, i);
            mem_used -= m;
            cpu_used -= c;
        }
        let count = node.units.len() - leaving.len();
        if let Some(cap) = node.capacity {
            let (mem, cpu) = self.need(u, i);
            let free = cap.memory_bytes.saturating_sub(mem_used);
            if mem > free {
                return Err(Reject::Memory { need: mem, free });
            }
            let free = (u64::from(cap.cpus) * 1000).saturating_sub(cpu_used);
            if cpu > free {
                return Err(Reject::Cpu { need: cpu, free });
            }
        }
        if self
            .config
            .max_units_per_machine
            .is_some_and(|max| count >= max)
        {
            return Err(Reject::Full);
        }
        Ok(())
    }

    /// Whether unit `u` may go on node `i`, and whom it moves away there.
    fn able(&self, u: usize, i: usize) -> Result<Vec<usize>, Reject<'a>> {
        self.fixed(u, i)?;
        self.peers_on(u, i)?;
        let evict = self.neighbours(u, i)?;
        self.room(u, i, &evict)?;
        Ok(evict)
    }

    /// Drops every existing assignment that is no longer valid, until none is. Existing
    /// assignments are taken back in unit name order, so of two units that now conflict the
    /// first by name stays; of a replacer and the unit it replaces, the replacer stays.
    fn validate(&mut self) {
        loop {
            let mut dropped = false;
            let current: Vec<(usize, Vec<usize>)> = self
                .placed
                .iter()
                .enumerate()
                .filter(|(_, set)| !set.is_empty())
                .map(|(u, set)| (u, set.iter().copied().collect()))
                .collect();
            for (u, nodes) in &current {
                for &i in nodes {
                    self.remove(*u, i);
                }
            }
            for (u, nodes) in current {
                let global = self.recs[u].requirements.global;
                let mut kept = false;
                for i in nodes {
                    if (global || !kept)
                        && self.fixed(u, i).is_ok()
                        && let Ok(evict) = self.neighbours(u, i)
                    {
                        for e in evict {
                            self.remove(e, i);
                        }
                        self.add(u, i);
                        kept = true;
                        continue;
                    }
                    dropped = true;
                }
            }
            // MachineOf=: units whose peers are not (all) on their machine.
            for i in 0..self.nodes.len() {
                for orphan in self.orphans(i) {
                    self.remove(orphan, i);
                    dropped = true;
                }
            }
            // Room: on each node, units in name order while they fit.
            for i in 0..self.nodes.len() {
                if !self.over(i) {
                    continue;
                }
                let on: Vec<usize> = self.nodes[i].units.iter().copied().collect();
                for &u in &on {
                    self.remove(u, i);
                }
                for u in on {
                    if self.room(u, i, &[]).is_ok() {
                        self.add(u, i);
                    } else {
                        dropped = true;
                    }
                }
            }
            if !dropped {
                return;
            }
        }
    }

    fn over(&self, i: usize) -> bool {
        let node = &self.nodes[i];
        let over_cap = node.capacity.is_some_and(|c| {
            node.mem_used > c.memory_bytes || node.cpu_used > u64::from(c.cpus) * 1000
        });
        over_cap
            || self
                .config
                .max_units_per_machine
                .is_some_and(|max| node.units.len() > max)
    }

    /// Places every wanted unit that is not (fully) placed.
    fn place(&mut self) {
        let wanted = self.wanted.clone();
        let globals: Vec<usize> = wanted
            .iter()
            .copied()
            .filter(|&u| self.recs[u].requirements.global)
            .collect();
        let mut queue: BTreeSet<usize> = wanted
            .iter()
            .copied()
            .filter(|&u| !self.recs[u].requirements.global && !self.is_placed(u))
            .collect();
        // Bounds moves caused by Replaces= chains.
        let mut moves_left = 2 * wanted.len() + 16;
        loop {
            // Global units first: they go everywhere they can.
            let mut progress = false;
            for &u in &globals {
                for i in 0..self.nodes.len() {
                    if !self.is_on(u, i) && self.able(u, i).is_ok_and(|e| e.is_empty()) {
                        self.add(u, i);
                        progress = true;
                    }
                }
            }
            for u in queue.clone() {
                let Some((i, evict)) = self.choose(u, moves_left > 0) else {
                    continue;
                };
                queue.remove(&u);
                progress = true;
                for &e in &evict {
                    moves_left = moves_left.saturating_sub(1);
                    self.remove(e, i);
                    queue.insert(e);
                }
                self.add(u, i);
                // Units that had a moved unit as MachineOf= peer move with it.
                if !evict.is_empty() {
                    for orphan in self.orphans(i) {
                        self.remove(orphan, i);
                        queue.insert(orphan);
                    }
                }
            }
            if !progress {
                break;
            }
        }
    }

    /// Units on node `i` whose `MachineOf=` peers are not all there (transitively).
    fn orphans(&self, i: usize) -> Vec<usize> {
        let mut gone: BTreeSet<usize> = BTreeSet::new();
        loop {
            let more: Vec<usize> = self.nodes[i]
                .units
                .iter()
                .copied()
                .filter(|u| !gone.contains(u) && !self.peers[*u].is_empty())
                .filter(|&u| {
                    self.peers[u]
                        .iter()
                        .any(|p| p.is_none_or(|p| gone.contains(&p) || !self.is_on(p, i)))
                })
                .collect();
            if more.is_empty() {
                return gone.into_iter().collect();
            }
            gone.extend(more);
        }
    }

    /// The least-loaded node able to take unit `u` (ties: machine name), and whom it moves.
    fn choose(&self, u: usize, may_move: bool) -> Option<(usize, Vec<usize>)> {
        let mut best: Option<(usize, usize, Vec<usize>)> = None;
        for i in 0..self.nodes.len() {
            let load = self.nodes[i].units.len();
            if best.as_ref().is_some_and(|(l, _, _)| *l <= load) {
                continue;
            }
            if let Ok(evict) = self.able(u, i)
                && (may_move || evict.is_empty())
            {
                best = Some((load, i, evict));
            }
        }
        best.map(|(_, i, e)| (i, e))
    }

    /// Why unit `u` is not on (all of) the machines it should be on; `None` if it is.
    fn reason(&self, u: usize) -> Option<String> {
        let unit = self.recs[u];
        if self.nodes.is_empty() {
            return Some("no machine is up".to_owned());
        }
        if !unit.requirements.global && self.is_placed(u) {
            return None;
        }
        let rejects: Vec<(usize, Reject<'a>)> = (0..self.nodes.len())
            .filter(|&i| !self.is_on(u, i))
            .filter_map(|i| self.able(u, i).err().map(|e| (i, e)))
            .collect();
        if unit.requirements.global {
            // Machines that match but have no room.
            let missing: Vec<String> = rejects
                .iter()
                .filter(|(_, e)| e.stage() > Reject::Metadata.stage())
                .map(|(i, e)| format!("{}: {}", self.nodes[*i].name, self.describe(unit, e)))
                .collect();
            if !missing.is_empty() {
                return Some(format!(
                    "not placed on every machine: {}",
                    missing.join("; ")
                ));
            }
            if !self.is_placed(u) {
                return Some(self.summary(u, &rejects));
            }
            return None;
        }
        if self.is_placed(u) {
            return None;
        }
        Some(self.summary(u, &rejects))
    }

    fn summary(&self, u: usize, rejects: &[(usize, Reject<'a>)]) -> String {
        let unit = self.recs[u];
        let r = &unit.requirements;
        let Some(furthest) = rejects.iter().map(|(_, e)| e.stage()).max() else {
            return "not placed: it would move units that replace each other in a cycle (Replaces=)"
                .to_owned();
        };
        let at: Vec<&(usize, Reject<'a>)> = rejects
            .iter()
            .filter(|(_, e)| e.stage() == furthest)
            .collect();
        match &at[0].1 {
            Reject::MachineId => format!(
                "no up machine has MachineID={}",
                r.machine_id.as_deref().unwrap_or("")
            ),
            Reject::Metadata => {
                format!("no machine matches MachineMetadata={}", r.metadata_text())
            }
            Reject::Peers => {
                let missing: Vec<&str> = r
                    .machine_of
                    .iter()
                    .zip(&self.peers[u])
                    .filter(|(_, p)| p.is_none_or(|p| !self.is_placed(p)))
                    .map(|(name, _)| name)
                    .map(String::as_str)
                    .collect();
                if let Some(p) = missing.first() {
                    if self
                        .recs
                        .binary_search_by(|r| r.name.as_str().cmp(p))
                        .is_ok()
                    {
                        format!("waits for MachineOf={p}, which is not scheduled")
                    } else {
                        format!("waits for MachineOf={p}, which does not exist")
                    }
                } else {
                    format!(
                        "no machine that runs MachineOf={} can take it",
                        r.machine_of.join(" ")
                    )
                }
            }
            Reject::Conflict(_) | Reject::ReplacedBy(_) => {
                let mut conflicts = BTreeSet::new();
                let mut replaced = BTreeSet::new();
                for (_, e) in &at {
                    match e {
                        Reject::Conflict(o) => conflicts.insert(*o),
                        Reject::ReplacedBy(o) => replaced.insert(*o),
                        _ => false,
                    };
                }
                let mut parts = Vec::new();
                if !conflicts.is_empty() {
                    parts.push(format!(
                        "conflicts with {}",
                        conflicts.into_iter().collect::<Vec<_>>().join(", ")
                    ));
                }
                if !replaced.is_empty() {
                    parts.push(format!(
                        "is replaced by {}",
                        replaced.into_iter().collect::<Vec<_>>().join(", ")
                    ));
                }
                format!("{} on every candidate machine", parts.join(" and "))
            }
            Reject::Memory { .. } | Reject::Cpu { .. } | Reject::Full => {
                let all_memory = at.iter().all(|(_, e)| matches!(e, Reject::Memory { .. }));
                let all_cpu = at.iter().all(|(_, e)| matches!(e, Reject::Cpu { .. }));
                let all_full = at.iter().all(|(_, e)| matches!(e, Reject::Full));
                if all_memory {
                    let (i, need, free) = at
                        .iter()
                        .filter_map(|(i, e)| match e {
                            Reject::Memory { need, free } => Some((*i, *need, *free)),
                            _ => None,
                        })
                        .max_by_key(|&(i, _, free)| (free, std::cmp::Reverse(i)))
                        .expect("not empty");
                    format!(
                        "needs {} memory, largest free is {} on {}",
                        format_bytes(need),
                        format_bytes(free),
                        self.nodes[i].name
                    )
                } else if all_cpu {
                    let (i, need, free) = at
                        .iter()
                        .filter_map(|(i, e)| match e {
                            Reject::Cpu { need, free } => Some((*i, *need, *free)),
                            _ => None,
                        })
                        .max_by_key(|&(i, _, free)| (free, std::cmp::Reverse(i)))
                        .expect("not empty");
                    format!(
                        "needs {} CPUs, most free is {} on {}",
                        format_cpus(need),
                        format_cpus(free),
                        self.nodes[i].name
                    )
                } else if all_full {
                    format!(
                        "every candidate machine already runs the maximum of {} units",
                        self.config.max_units_per_machine.unwrap_or(0)
                    )
                } else {
                    let each: Vec<String> = at
                        .iter()
                        .map(|(i, e)| {
                            format!("{}: {}", self.nodes[*i].name, self.describe(unit, e))
                        })
                        .collect();
                    format!("no machine has room: {}", each.join("; "))
                }
            }
        }
    }

    fn describe(&self, unit: &UnitRecord, e: &Reject<'a>) -> String {
        let r = &unit.requirements;
        match e {
            Reject::MachineId => format!(
                "not MachineID={}",
                r.machine_id.as_deref().unwrap_or_default()
            ),
            Reject::Metadata => format!("does not match MachineMetadata={}", r.metadata_text()),
            Reject::Peers => format!("does not run MachineOf={}", r.machine_of.join(" ")),
            Reject::Conflict(o) => format!("conflicts with {o}"),
            Reject::ReplacedBy(o) => format!("replaced by {o}"),
            Reject::Memory { need, free } => format!(
                "needs {} memory, {} free",
                format_bytes(*need),
                format_bytes(*free)
            ),
            Reject::Cpu { need, free } => format!(
                "needs {} CPUs, {} free",
                format_cpus(*need),
                format_cpus(*free)
            ),
            Reject::Full => format!(
                "already runs the maximum of {} units",
                self.config.max_units_per_machine.unwrap_or(0)
            ),
        }
    }

    fn finish(self, state: &State) -> Plan {
        let mut unassign = Vec::new();
        let assigned = assignments(&self.recs, state);
        for (u, unit) in self.recs.iter().enumerate() {
            let Some(machines) = assigned[u] else {
                continue;
            };
            for m in machines {
                if !self.placed[u].iter().any(|&i| self.nodes[i].name == m) {
                    unassign.push(Command::Unit(Change::Unassign {
                        name: unit.name.clone(),
                        machine: m.clone(),
                    }));
                }
            }
        }
        // Assignments of units no longer in the registry (none: destroy removes them).
        for (name, machines) in &state.units.assignments {
            if !state.units.by_name.contains_key(name) {
                for m in machines {
                    unassign.push(Command::Unit(Change::Unassign {
                        name: name.clone(),
                        machine: m.clone(),
                    }));
                }
            }
        }
        let mut assign = Vec::new();
        for (u, set) in self.placed.iter().enumerate() {
            let name = &self.recs[u].name;
            for &i in set {
                let m = self.nodes[i].name;
                if !assigned[u].is_some_and(|set| set.contains(m)) {
                    assign.push(Command::Unit(Change::Assign {
                        name: name.clone(),
                        machine: m.to_owned(),
                    }));
                }
            }
        }
        let unschedulable: Vec<(String, String)> = self
            .wanted
            .iter()
            .filter_map(|&u| self.reason(u).map(|r| (self.recs[u].name.clone(), r)))
            .collect();
        // The reasons in the state follow, so that every machine can show them.
        let mut reasons = Vec::new();
        let now: BTreeMap<&str, &str> = unschedulable
            .iter()
            .map(|(u, r)| (u.as_str(), r.as_str()))
            .collect();
        for (name, old) in &state.units.unschedulable {
            if !now.contains_key(name.as_str()) {
                reasons.push(Command::Unit(Change::SetUnschedulable {
                    name: name.clone(),
                    reason: None,
                }));
            } else if now[name.as_str()] != old {
                reasons.push(Command::Unit(Change::SetUnschedulable {
                    name: name.clone(),
                    reason: Some(now[name.as_str()].to_owned()),
                }));
            }
        }
        for (name, reason) in &now {
            if !state.units.unschedulable.contains_key(*name) {
                reasons.push(Command::Unit(Change::SetUnschedulable {
                    name: (*name).to_owned(),
                    reason: Some((*reason).to_owned()),
                }));
            }
        }
        reasons.sort_by(|a, b| key(a).cmp(&key(b)));
        unassign.sort_by(|a, b| key(a).cmp(&key(b)));
        unassign.extend(assign);
        unassign.extend(reasons);
        Plan {
            base: state.units.revision,
            commands: unassign,
            unschedulable,
        }
    }
}

/// The assignments of each unit of `recs` (in name order, as the registry), by a merge of
/// the two sorted maps rather than a lookup per unit.
fn assignments<'s>(recs: &[&UnitRecord], state: &'s State) -> Vec<Option<&'s BTreeSet<String>>> {
    let mut out = vec![None; recs.len()];
    let mut next = state.units.assignments.iter().peekable();
    for (u, rec) in recs.iter().enumerate() {
        while next.next_if(|(name, _)| **name < rec.name).is_some() {}
        if let Some((_, machines)) = next.next_if(|(name, _)| **name == rec.name) {
            out[u] = Some(machines);
        }
    }
    out
}

fn key(cmd: &Command) -> (&str, &str) {
    match cmd {
        Command::Unit(Change::Unassign { name, machine } | Change::Assign { name, machine }) => {
            (name, machine)
        }
        Command::Unit(Change::SetUnschedulable { name, .. }) => (name, ""),
        _ => ("", ""),
    }
}

/// Whether a unit name is a template (`foo@.service`); names in the registry are valid.
fn template(name: &str) -> bool {
    name.split_once('@')
        .is_some_and(|(_, rest)| rest.starts_with('.') && rest.rfind('.') == Some(0))
}

/// Go's `path.Match` of a unit-name glob; patterns of literals and `*` (nearly all) are
/// matched here without allocating, the others by flotilla-units.
fn matches(pattern: &str, name: &str) -> bool {
    if pattern.contains(['?', '[', '\\']) {
        return glob_matches(pattern, name);
    }
    let Some((first, tail)) = pattern.split_once('*') else {
        return pattern == name;
    };
    let Some(mut rest) = name.strip_prefix(first) else {
        return false;
    };
    let (middle, last) = match tail.rsplit_once('*') {
        Some((middle, last)) => (Some(middle), last),
        None => (None, tail),
    };
    // `*` does not match `/`: every gap a star covers must be free of it.
    for part in middle.into_iter().flat_map(|m| m.split('*')) {
        let Some(at) = rest.find(part) else {
            return false;
        };
        if rest[..at].contains('/') {
            return false;
        }
        rest = &rest[at + part.len()..];
    }
    rest.len() >= last.len()
        && rest.ends_with(last)
        && !rest[..rest.len() - last.len()].contains('/')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_globs_agree_with_go() {
        let patterns = [
            "web@*.service",
            "*",
            "*.service",
            "a*b*c",
            "*a*",
            "web@1.service",
            "w*@*",
            "**",
            "a/*",
            "",
            "x?y",
            "[a-c]*",
        ];
        let names = [
            "web@1.service",
            "web@.service",
            "abc",
            "aXbYc",
            "acb",
            "a/b",
            "",
            "xzy",
            "b.service",
            "ab/c",
        ];
        for p in patterns {
            for n in names {
                assert_eq!(matches(p, n), glob_matches(p, n), "{p} {n}");
            }
        }
        assert!(template("foo@.service"));
        assert!(!template("foo@1.service"));
        assert!(!template("foo.service"));
        assert!(!template("foo@a.b.service"));
    }
}
