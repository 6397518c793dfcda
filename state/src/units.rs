//! The unit registry: unit files by name with their normalized text and content hash, the
//! desired state of each (fleet's inactive / loaded / launched), which machines they are
//! assigned to, and the state each machine's agent reports for them.
//!
//! The rules follow fleet (github.com/coreos/fleet, `api/units.go`, `job/job.go` and
//! `fleetctl`): a unit is submitted once per content (a different content under the same name
//! needs `replace`, fleetctl's `--replace`); a template (`foo@.service`) can be submitted but
//! never loaded or started; submitting or starting an instance (`foo@1.service`) that does not
//! exist while its template does creates the instance from the template's text, as fleetctl
//! does; `stop` of a unit that is not loaded is refused (fleetctl refuses it too); destroy
//! removes the unit, its assignments and its reported states.
//!
//! Assignments are written only by the scheduler's plan ([`crate::scheduler::plan`]), which
//! the leader proposes; this module only checks that the unit and machine exist.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use flotilla_units::UnitName;
use serde::{Deserialize, Serialize};

use crate::machines::Machines;

/// fleet's desired (target) states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Desired {
    /// Submitted, on no machine.
    Inactive,
    /// Assigned to a machine and loaded into its systemd, not started.
    Loaded,
    /// Assigned to a machine and started.
    Launched,
}

impl Desired {
    /// fleet's name: `inactive`, `loaded` or `launched`.
    pub fn as_str(self) -> &'static str {
        match self {
            Desired::Inactive => "inactive",
            Desired::Loaded => "loaded",
            Desired::Launched => "launched",
        }
    }

    /// Whether a unit in this state is placed on machines.
    pub fn is_scheduled(self) -> bool {
        self != Desired::Inactive
    }
}

impl fmt::Display for Desired {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Desired {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "inactive" => Ok(Desired::Inactive),
            "loaded" => Ok(Desired::Loaded),
            "launched" => Ok(Desired::Launched),
            _ => Err(Error::BadDesired(s.to_owned())),
        }
    }
}

/// fleetctl's verbs that change a unit's desired state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Transition {
    /// `fleetctl load`: loaded, from any state.
    Load,
    /// `fleetctl start`: launched, from any state.
    Start,
    /// `fleetctl stop`: launched or loaded becomes loaded; refused for an inactive unit.
    Stop,
    /// `fleetctl unload`: inactive, from any state.
    Unload,
}

impl Transition {
    /// The desired state after this transition from `current`, or why it is refused.
    /// fleetctl refuses to stop an inactive unit unless it is global.
    pub fn target(self, name: &str, current: Desired, global: bool) -> Result<Desired, Error> {
        match (self, current) {
            (Transition::Load, _) => Ok(Desired::Loaded),
            (Transition::Start, _) => Ok(Desired::Launched),
            (Transition::Stop, Desired::Inactive) if !global => {
                Err(Error::NotLoaded(name.to_owned()))
            }
            (Transition::Stop, _) => Ok(Desired::Loaded),
            (Transition::Unload, _) => Ok(Desired::Inactive),
        }
    }
}

/// A memory amount as `MemoryMax=` gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Memory {
    /// An absolute limit.
    Bytes(u64),
    /// A share of the machine's memory, in hundredths of a percent (`50%` is 5000).
    Basis(u32),
}

impl Memory {
    /// The bytes this amount means on a machine with `total` bytes.
    pub fn on(self, total: u64) -> u64 {
        match self {
            Memory::Bytes(b) => b,
            Memory::Basis(bp) => ((u128::from(total) * u128::from(bp)) / 10_000) as u64,
        }
    }
}

/// What the scheduler needs of a unit, read once at submit from its `[X-Fleet]` section
/// (through flotilla-units, specifiers expanded for this unit's name) and its `[Service]`
/// resource limits.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Requirements {
    /// `MachineID=`.
    pub machine_id: Option<String>,
    /// `MachineOf=`: units that must run on the same machine.
    pub machine_of: Vec<String>,
    /// `MachineMetadata=`: per key, the values accepted (OR); all keys must match (AND).
    pub machine_metadata: Vec<(String, Vec<String>)>,
    /// `Conflicts=` globs.
    pub conflicts: Vec<String>,
    /// `Global=`.
    pub global: bool,
    /// `Replaces=` globs.
    pub replaces: Vec<String>,
    /// `[Service] MemoryMax=` (`infinity` and unset: none).
    pub memory_max: Option<Memory>,
    /// `[Service] CPUQuota=` in thousandths of a CPU (`200%` is 2000).
    pub cpu_millis: Option<u64>,
}

impl Requirements {
    fn from_verified(v: &flotilla_units::Verified) -> Self {
        let f = &v.fleet;
        Requirements {
            machine_id: f.machine_id.clone(),
            machine_of: f.machine_of.clone(),
            machine_metadata: f.machine_metadata.clone(),
            conflicts: f.conflicts.clone(),
            global: f.global,
            replaces: f.replaces.clone(),
            memory_max: v.unit.value("Service", "MemoryMax").and_then(parse_memory),
            cpu_millis: v
                .unit
                .value("Service", "CPUQuota")
                .and_then(parse_cpu_quota),
        }
    }

    /// Whether a machine's metadata satisfies `MachineMetadata=` (same key OR-ed, different
    /// keys AND-ed).
    pub fn metadata_matches(&self, metadata: &BTreeMap<String, String>) -> bool {
        self.machine_metadata
            .iter()
            .all(|(key, values)| metadata.get(key).is_some_and(|v| values.contains(v)))
    }

    /// `MachineMetadata=` as a person writes it: `region=west region=east disk=ssd`.
    pub fn metadata_text(&self) -> String {
        let mut parts = Vec::new();
        for (key, values) in &self.machine_metadata {
            for v in values {
                parts.push(format!("{key}={v}"));
            }
        }
        parts.join(" ")
    }
}

/// Whether `pattern` (Go `path.Match` syntax, as fleet) matches unit name `name`.
pub fn glob_matches(pattern: &str, name: &str) -> bool {
    flotilla_units::fleet::glob_match(pattern, name) == Some(true)
}

/// systemd's size syntax: bytes with an optional K, M, G, T, P or E suffix (base 1024), or a
/// percentage of physical memory; `infinity` is no limit.
fn parse_memory(value: &str) -> Option<Memory> {
    let v = value.trim();
    if v == "infinity" {
        return None;
    }
    if let Some(p) = v.strip_suffix('%') {
        return parse_hundredths(p).map(|h| Memory::Basis(h.min(u64::from(u32::MAX)) as u32));
    }
    let (digits, shift) = match v.char_indices().last()? {
        (i, c) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                'P' => 50,
                'E' => 60,
                _ => return None,
            };
            (&v[..i], shift)
        }
        _ => (v, 0),
    };
    // Fractions such as 1.5G are accepted by systemd.
    let hundredths = parse_hundredths(digits)?;
    let bytes = (u128::from(hundredths) << shift) / 100;
    Some(Memory::Bytes(u64::try_from(bytes).ok()?))
}

/// `CPUQuota=N%` (decimals allowed) in thousandths of a CPU.
fn parse_cpu_quota(value: &str) -> Option<u64> {
    let p = value.trim().strip_suffix('%')?;
    parse_hundredths(p).map(|h| h / 10).filter(|&m| m > 0)
}

/// A non-negative decimal with up to two fraction digits, times 100.
fn parse_hundredths(s: &str) -> Option<u64> {
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if int.is_empty() || !int.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut f = frac.bytes().take(2).map(|b| u64::from(b - b'0'));
    let cents = f.next().unwrap_or(0) * 10 + f.next().unwrap_or(0);
    int.parse::<u64>()
        .ok()?
        .checked_mul(100)?
        .checked_add(cents)
}

/// A size as systemd prints it: `512M`, `1.5G`, `100B`.
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [(&str, u32); 6] = [
        ("E", 60),
        ("P", 50),
        ("T", 40),
        ("G", 30),
        ("M", 20),
        ("K", 10),
    ];
    for (suffix, shift) in UNITS {
        let unit = 1u64 << shift;
        if bytes >= unit {
            let tenths = (u128::from(bytes) * 10 / u128::from(unit)) as u64;
            return if tenths.is_multiple_of(10) {
                format!("{}{suffix}", tenths / 10)
            } else {
                format!("{}.{}{suffix}", tenths / 10, tenths % 10)
            };
        }
    }
    format!("{bytes}B")
}

/// Thousandths of a CPU as a person reads them: `2`, `0.5`.
pub fn format_cpus(millis: u64) -> String {
    let s = format!("{}.{:03}", millis / 1000, millis % 1000);
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// One unit file in the registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitRecord {
    /// The unit name (`foo.service`, `foo@.service`, `foo@1.service`).
    pub name: String,
    /// The normalized text (flotilla-units' `Unit::normalized`): what machines write.
    pub text: String,
    /// SHA-256 of `text`, lowercase hex (`Unit::content_hash`).
    pub hash: String,
    /// The desired state.
    pub desired: Desired,
    /// Scheduling requirements read from the text.
    pub requirements: Requirements,
    /// Per machine, how many restarts were requested: the machine's agent restarts the unit
    /// when this exceeds the generation it last restarted at.
    pub restarts: BTreeMap<String, u64>,
}

impl UnitRecord {
    /// Whether this is a template (`foo@.service`): never scheduled.
    pub fn is_template(&self) -> bool {
        is_template(&self.name)
    }
}

fn is_template(name: &str) -> bool {
    UnitName::parse(name).is_ok_and(|n| n.is_template())
}

/// The state of a unit on one machine as that machine's agent reports it (systemd's
/// properties).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reported {
    /// `LoadState` (`loaded`, `not-found`, …).
    pub load: String,
    /// `ActiveState` (`active`, `inactive`, `failed`, …).
    pub active: String,
    /// `SubState` (`running`, `dead`, …).
    pub sub: String,
    /// When `active` last changed, ms since the Unix epoch (the machine's clock).
    pub since_ms: u64,
    /// `MainPID` (0: none).
    pub main_pid: u32,
    /// `Result` (`success`, `exit-code`, …).
    pub result: String,
    /// The restart generation ([`UnitRecord::restarts`]) the machine last carried out.
    pub restart_generation: u64,
}

/// A change to the unit registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Change {
    /// Submit a unit file (fleetctl submit). `text: None` creates instance `name` from its
    /// template's text. A different content under an existing name is refused unless
    /// `replace` (fleetctl's `--replace`), which keeps the desired state and assignments.
    Submit {
        /// The unit name.
        name: String,
        /// The unit file's text; `None`: from the template (instances only).
        text: Option<String>,
        /// Replace an existing unit of different content.
        replace: bool,
    },
    /// Set the desired state directly (templates can only be inactive). An instance that does
    /// not exist is created from its template first.
    SetDesired {
        /// The unit name.
        name: String,
        /// The new desired state.
        desired: Desired,
    },
    /// A fleetctl verb, checked against the current desired state atomically.
    Transition {
        /// The unit name.
        name: String,
        /// The verb.
        transition: Transition,
    },
    /// Remove the unit, its assignments and reported states (fleetctl destroy).
    Destroy {
        /// The unit name.
        name: String,
    },
    /// Assign the unit to a machine (proposed by the leader's scheduler only).
    Assign {
        /// The unit name.
        name: String,
        /// The machine name.
        machine: String,
    },
    /// Take the unit off a machine (proposed by the leader's scheduler only).
    Unassign {
        /// The unit name.
        name: String,
        /// The machine name.
        machine: String,
    },
    /// Ask the machine running the unit to restart it (one step of a rolling restart).
    Restart {
        /// The unit name.
        name: String,
        /// The machine name; the unit must be assigned to it.
        machine: String,
    },
    /// A machine's agent reports the unit's state there (only when it changed); `None`: the
    /// machine no longer has the unit.
    ReportState {
        /// The reporting machine.
        machine: String,
        /// The unit name.
        name: String,
        /// The state, or `None` to forget it.
        state: Option<Reported>,
    },
    /// Why the scheduler cannot place the unit (proposed by the leader's scheduler when the
    /// reason changes), so every machine can show it; `None`: it is placed now.
    SetUnschedulable {
        /// The unit name.
        name: String,
        /// The reason, as [`crate::scheduler::Plan::unschedulable`] gives it.
        reason: Option<String>,
    },
}

/// Why a change to the registry was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Error {
    /// The unit name is not a valid systemd unit name.
    #[error("{0}")]
    BadName(String),
    /// The unit file does not verify; one line per diagnostic, `file:line:column: message`.
    #[error("unit '{name}' is malformed:\n{}", .diagnostics.join("\n"))]
    Malformed {
        /// The unit name.
        name: String,
        /// Errors and warnings, `file:line:column: message`.
        diagnostics: Vec<String>,
    },
    /// A different content is already stored under this name.
    #[error(
        "unit '{name}' already exists with different content (hash {existing}): submit it with replace to change it"
    )]
    Exists {
        /// The unit name.
        name: String,
        /// The stored content hash.
        existing: String,
    },
    /// No such unit.
    #[error("unit '{0}' does not exist: submit it first")]
    NotFound(String),
    /// An instance was asked for from a template that does not exist.
    #[error("unit '{name}' does not exist and neither does its template '{template}'")]
    NoTemplate {
        /// The instance name.
        name: String,
        /// The template's name.
        template: String,
    },
    /// `text: None` for a name that is not an instance.
    #[error("unit '{0}' is not a template instance: submit it with its text")]
    NoText(String),
    /// A template cannot be loaded or started.
    #[error("unit '{0}' is a template: load or start an instance of it such as '{1}'")]
    Template(String, String),
    /// Stop of a unit that is not loaded.
    #[error("unit '{0}' is inactive: nothing to stop")]
    NotLoaded(String),
    /// A desired state name fleet does not know.
    #[error("unknown desired state '{0}': expected inactive, loaded or launched")]
    BadDesired(String),
    /// The machine is not registered.
    #[error("machine '{0}' is not a member of the cluster")]
    UnknownMachine(String),
    /// A restart for a machine the unit is not assigned to.
    #[error("unit '{name}' is not assigned to machine '{machine}'")]
    NotAssigned {
        /// The unit name.
        name: String,
        /// The machine name.
        machine: String,
    },
}

/// The unit registry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Units {
    /// Units by name.
    pub by_name: BTreeMap<String, UnitRecord>,
    /// Per unit, the machines it is assigned to (one, or every matching machine for a
    /// global unit). Only scheduled, non-template units appear.
    pub assignments: BTreeMap<String, BTreeSet<String>>,
    /// Per unit, per machine: the state that machine reported.
    pub reported: BTreeMap<String, BTreeMap<String, Reported>>,
    /// Units the scheduler cannot place (wholly, or a global unit on some machines), with why.
    pub unschedulable: BTreeMap<String, String>,
}

/// A unit file that passed verification.
struct Checked {
    text: String,
    hash: String,
    requirements: Requirements,
}

fn check(name: &str, text: &str) -> Result<Checked, Error> {
    UnitName::parse(name).map_err(|e| Error::BadName(e.to_string()))?;
    let v = flotilla_units::verify(name, text, &[]);
    if v.has_errors() {
        return Err(Error::Malformed {
            name: name.to_owned(),
            diagnostics: v.diagnostics.iter().map(ToString::to_string).collect(),
        });
    }
    Ok(Checked {
        text: v.unit.normalized(),
        hash: v.unit.content_hash(),
        requirements: Requirements::from_verified(&v),
    })
}

impl Units {
    /// Applies a change: `Ok(true)` if the registry changed, `Ok(false)` if it already was
    /// so, or why the change is refused (the registry is then unchanged).
    pub fn apply(&mut self, change: &Change, machines: &Machines) -> Result<bool, Error> {
        match change {
            Change::Submit {
                name,
                text,
                replace,
            } => self.submit(name, text.as_deref(), *replace),
            Change::SetDesired { name, desired } => self.set_desired(name, |_, _| Ok(*desired)),
            Change::Transition { name, transition } => self.set_desired(name, |current, global| {
                transition.target(name, current, global)
            }),
            Change::Destroy { name } => {
                if self.by_name.remove(name).is_none() {
                    return Err(Error::NotFound(name.clone()));
                }
                self.assignments.remove(name);
                self.reported.remove(name);
                self.unschedulable.remove(name);
                Ok(true)
            }
            Change::Assign { name, machine } => {
                let unit = self
                    .by_name
                    .get(name)
                    .ok_or_else(|| Error::NotFound(name.clone()))?;
                if unit.is_template() {
                    return Err(template_error(name));
                }
                if !machines.by_name.contains_key(machine) {
                    return Err(Error::UnknownMachine(machine.clone()));
                }
                Ok(self
                    .assignments
                    .entry(name.clone())
                    .or_default()
                    .insert(machine.clone()))
            }
            Change::Unassign { name, machine } => {
                let Some(set) = self.assignments.get_mut(name) else {
                    return Ok(false);
                };
                let removed = set.remove(machine);
                if set.is_empty() {
                    self.assignments.remove(name);
                }
                Ok(removed)
            }
            Change::Restart { name, machine } => {
                if !self.by_name.contains_key(name) {
                    return Err(Error::NotFound(name.clone()));
                }
                if !self.is_assigned(name, machine) {
                    return Err(Error::NotAssigned {
                        name: name.clone(),
                        machine: machine.clone(),
                    });
                }
                let unit = self.by_name.get_mut(name).expect("checked above");
                *unit.restarts.entry(machine.clone()).or_default() += 1;
                Ok(true)
            }
            Change::ReportState {
                machine,
                name,
                state,
            } => Ok(self.report(machine, name, state.as_ref())),
            Change::SetUnschedulable { name, reason } => Ok(match reason {
                Some(reason) if self.by_name.contains_key(name) => {
                    self.unschedulable.insert(name.clone(), reason.clone()) != Some(reason.clone())
                }
                Some(_) => false,
                None => self.unschedulable.remove(name).is_some(),
            }),
        }
    }

    fn submit(&mut self, name: &str, text: Option<&str>, replace: bool) -> Result<bool, Error> {
        let checked = match text {
            Some(text) => check(name, text)?,
            None => {
                let template = template_of(name)?;
                if self.by_name.contains_key(name) {
                    // fleetctl start of an existing instance keeps it as it is.
                    return Ok(false);
                }
                let t = self
                    .by_name
                    .get(&template)
                    .ok_or_else(|| Error::NoTemplate {
                        name: name.to_owned(),
                        template: template.clone(),
                    })?;
                check(name, &t.text)?
            }
        };
        match self.by_name.get_mut(name) {
            Some(existing) if existing.hash == checked.hash => Ok(false),
            Some(existing) if !replace => Err(Error::Exists {
                name: name.to_owned(),
                existing: existing.hash.clone(),
            }),
            Some(existing) => {
                existing.text = checked.text;
                existing.hash = checked.hash;
                existing.requirements = checked.requirements;
                Ok(true)
            }
            None => {
                self.by_name.insert(
                    name.to_owned(),
                    UnitRecord {
                        name: name.to_owned(),
                        text: checked.text,
                        hash: checked.hash,
                        desired: Desired::Inactive,
                        requirements: checked.requirements,
                        restarts: BTreeMap::new(),
                    },
                );
                Ok(true)
            }
        }
    }

    fn set_desired(
        &mut self,
        name: &str,
        target: impl FnOnce(Desired, bool) -> Result<Desired, Error>,
    ) -> Result<bool, Error> {
        let created = if self.by_name.contains_key(name) {
            None
        } else {
            // fleetctl start foo@1.service with only foo@.service submitted.
            let template = template_of(name).map_err(|_| Error::NotFound(name.to_owned()))?;
            let t = self
                .by_name
                .get(&template)
                .ok_or_else(|| Error::NoTemplate {
                    name: name.to_owned(),
                    template: template.clone(),
                })?;
            Some(check(name, &t.text)?)
        };
        let (current, global) = match (self.by_name.get(name), &created) {
            (Some(u), _) => (u.desired, u.requirements.global),
            (_, Some(c)) => (Desired::Inactive, c.requirements.global),
            (None, None) => (Desired::Inactive, false),
        };
        let desired = target(current, global)?;
        if desired != Desired::Inactive && is_template(name) {
            return Err(template_error(name));
        }
        if let Some(c) = created {
            self.by_name.insert(
                name.to_owned(),
                UnitRecord {
                    name: name.to_owned(),
                    text: c.text,
                    hash: c.hash,
                    desired,
                    requirements: c.requirements,
                    restarts: BTreeMap::new(),
                },
            );
            return Ok(true);
        }
        let unit = self.by_name.get_mut(name).expect("exists");
        if unit.desired == desired {
            return Ok(false);
        }
        unit.desired = desired;
        Ok(true)
    }

    fn report(&mut self, machine: &str, name: &str, state: Option<&Reported>) -> bool {
        match state {
            Some(state) => {
                if !self.by_name.contains_key(name) {
                    // A unit destroyed while the report was in flight.
                    return false;
                }
                let per_machine = self.reported.entry(name.to_owned()).or_default();
                if per_machine.get(machine) == Some(state) {
                    return false;
                }
                per_machine.insert(machine.to_owned(), state.clone());
                true
            }
            None => {
                let Some(per_machine) = self.reported.get_mut(name) else {
                    return false;
                };
                let removed = per_machine.remove(machine).is_some();
                if per_machine.is_empty() {
                    self.reported.remove(name);
                }
                removed
            }
        }
    }

    /// Whether unit `name` is assigned to `machine`.
    pub fn is_assigned(&self, name: &str, machine: &str) -> bool {
        self.assignments
            .get(name)
            .is_some_and(|set| set.contains(machine))
    }

    /// The units assigned to `machine`, by name: what that machine's agent runs.
    pub fn assigned_to<'a>(&'a self, machine: &'a str) -> impl Iterator<Item = &'a UnitRecord> {
        self.assignments
            .iter()
            .filter(move |(_, set)| set.contains(machine))
            .filter_map(|(name, _)| self.by_name.get(name))
    }

    /// The order of a rolling restart of `name`: the machines it is assigned to, by name.
    /// The agent proposes [`Change::Restart`] for the first, waits until
    /// [`Units::restart_done`] for it, then goes on with the next.
    pub fn rolling_restart(&self, name: &str) -> Result<Vec<String>, Error> {
        let unit = self
            .by_name
            .get(name)
            .ok_or_else(|| Error::NotFound(name.to_owned()))?;
        if unit.is_template() {
            return Err(template_error(name));
        }
        Ok(self
            .assignments
            .get(name)
            .map(|set| set.iter().cloned().collect())
            .unwrap_or_default())
    }

    /// Whether the last restart requested of `name` on `machine` was carried out and the unit
    /// is active again there (the step of a rolling restart is over).
    pub fn restart_done(&self, name: &str, machine: &str) -> bool {
        let Some(unit) = self.by_name.get(name) else {
            return false;
        };
        let wanted = unit.restarts.get(machine).copied().unwrap_or(0);
        self.reported
            .get(name)
            .and_then(|m| m.get(machine))
            .is_some_and(|r| r.restart_generation >= wanted && r.active == "active")
    }
}

fn template_of(name: &str) -> Result<String, Error> {
    let parsed = UnitName::parse(name).map_err(|e| Error::BadName(e.to_string()))?;
    match parsed.template() {
        Some(t) if parsed.is_instance() => Ok(t.as_str().to_owned()),
        _ => Err(Error::NoText(name.to_owned())),
    }
}

fn template_error(name: &str) -> Error {
    let example = UnitName::parse(name)
        .ok()
        .and_then(|n| n.instantiate("1").ok())
        .map_or_else(|| name.to_owned(), |n| n.as_str().to_owned());
    Error::Template(name.to_owned(), example)
}

#[cfg(test)]
mod tests;
