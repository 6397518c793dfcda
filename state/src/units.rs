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
//! the leader proposes as one [`Change::Plan`], fenced by [`Units::revision`]; this module
//! checks that the units and machines exist and that the plan is not stale.
//!
//! A rolling restart ([`Change::RollingRestart`], flotctl's `restart`) is state, not a loop
//! in some agent: applying a machine's report that the current step's unit is active again
//! with a new main PID asks the next step's restart, so one restart at a time holds across
//! leader changes and client disconnects.

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

/// What follows a submission in [`Change::SubmitThen`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Then {
    /// As [`Change::SetDesired`].
    Desired(Desired),
    /// As [`Change::Transition`].
    Transition(Transition),
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
    /// Which launch this is ([`Units::launches`] when it last became launched; 0: never):
    /// a machine starts a unit once per launch, so a stop and a start, or a destroy and a new
    /// start, run a finished unit again even when no machine saw it stopped.
    pub launch: u64,
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

/// A rolling restart in progress: its steps, one unit on one machine each, done one at a time.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rolling {
    /// The steps not finished yet, in order; the first is under way.
    pub steps: Vec<(String, String)>,
    /// The restart generation asked of the first step's unit on its machine.
    pub generation: u64,
    /// The main PID that step's unit reported before its restart was asked (0: none): the
    /// step is over when a different one is reported active.
    pub from_pid: u32,
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
    /// Several [`Change::ReportState`]s of one machine in one command: what a reconcile pass
    /// found changed, committed in one Raft entry instead of one commit per unit.
    ReportStates {
        /// The reporting machine.
        machine: String,
        /// Per unit, its state, or `None` to forget it.
        states: Vec<(String, Option<Reported>)>,
    },
    /// Why the scheduler cannot place the unit (proposed by the leader's scheduler when the
    /// reason changes), so every machine can show it; `None`: it is placed now.
    SetUnschedulable {
        /// The unit name.
        name: String,
        /// The reason, as [`crate::scheduler::Plan::unschedulable`] gives it.
        reason: Option<String>,
    },
    /// Restart a launched unit on every machine it runs on, one machine at a time; for a
    /// template, every launched instance of it, one instance on one machine at a time. The
    /// state machine asks each step's restart (as [`Change::Restart`]) when the previous one
    /// is reported active again with a new main PID, so the rollout goes on across leader
    /// changes and needs nobody to drive it. A step whose unit is reported `failed` after its
    /// restart ends the rollout there.
    RollingRestart {
        /// The unit (or template) name.
        name: String,
    },
    /// A scheduler's plan, applied atomically: only `Assign`, `Unassign` and
    /// `SetUnschedulable` changes, all or none, and only if [`Units::revision`] is still
    /// `base` (nothing a plan depends on was committed since it was made, in particular no
    /// other leader's plan).
    Plan {
        /// [`Units::revision`] of the state the plan was made from.
        base: u64,
        /// The plan's changes, in order.
        changes: Vec<Change>,
    },
    /// A [`Change::Submit`] and then a move of the same unit in one command, all or nothing:
    /// `PUT /flotilla/v1/units/NAME` with a text and a desired state, fleet's `PUT` and
    /// `flotctl start FILE` cost one commit instead of two. (Last in this enum, so the log
    /// entries of earlier versions keep their meaning.)
    SubmitThen {
        /// The unit name.
        name: String,
        /// The unit file's text; `None`: from the template (instances only).
        text: Option<String>,
        /// Replace an existing unit of different content.
        replace: bool,
        /// What follows the submission.
        then: Then,
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
    /// A rolling restart of a unit that is not launched.
    #[error("unit '{0}' is not started: start it instead of restarting it")]
    NotLaunched(String),
    /// A rolling restart of a unit (or template) that runs on no machine.
    #[error("unit '{0}' runs on no machine yet: nothing to restart")]
    NotPlaced(String),
    /// A plan made from a state that changed since (another plan, a machine or unit change).
    #[error("the scheduler's plan is stale: made at revision {base}, the state is at {current}")]
    StalePlan {
        /// The revision the plan was made from.
        base: u64,
        /// The revision of the state now.
        current: u64,
    },
    /// A plan that carries a change other than Assign, Unassign or SetUnschedulable, or
    /// assigns a unit or machine that does not exist.
    #[error("the scheduler's plan is invalid: {0}")]
    BadPlan(String),
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
    /// Rolling restarts under way, by the name they were asked for (a unit or a template).
    pub rolling: BTreeMap<String, Rolling>,
    /// The placement revision: counts the committed changes a plan depends on (assignments
    /// and unschedulable reasons, a unit destroyed, replaced or made inactive, any change to
    /// the machines). A [`Change::Plan`] is applied only at the revision it was made from.
    /// Submitting or starting units does not count: a plan made before them is still right
    /// for the units it covers, and the next plan places the new ones.
    pub revision: u64,
    /// Counts every committed change a plan reads: the placement revision's changes and
    /// also submits and desired states, and any machine change (not the machines' reports
    /// nor restarts). The leader plans again only when it moved, so the stream of reports
    /// of a busy cluster does not cost a plan each.
    pub inputs: u64,
    /// Counts the times any unit became launched (each launch's number, [`UnitRecord::launch`]).
    pub launches: u64,
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
        let leaving = match change {
            Change::SetDesired { name, desired } => {
                *desired == Desired::Inactive && self.is_scheduled(name)
            }
            Change::Transition {
                name,
                transition: Transition::Unload,
            }
            | Change::SubmitThen {
                name,
                then: Then::Desired(Desired::Inactive) | Then::Transition(Transition::Unload),
                ..
            } => self.is_scheduled(name),
            _ => false,
        };
        let changed = self.apply_change(change, machines)?;
        if changed {
            let counts = match change {
                Change::Submit { replace, .. } => *replace,
                Change::SubmitThen { replace, .. } => *replace || leaving,
                Change::SetDesired { .. } | Change::Transition { .. } => leaving,
                Change::Destroy { .. }
                | Change::Assign { .. }
                | Change::Unassign { .. }
                | Change::SetUnschedulable { .. }
                | Change::Plan { .. } => true,
                Change::Restart { .. } | Change::RollingRestart { .. } => false,
                Change::ReportState { .. } | Change::ReportStates { .. } => false,
            };
            if counts {
                self.revision += 1;
            }
            if !matches!(
                change,
                Change::ReportState { .. }
                    | Change::ReportStates { .. }
                    | Change::Restart { .. }
                    | Change::RollingRestart { .. }
            ) {
                self.inputs += 1;
            }
            if !matches!(
                change,
                Change::Submit { .. } | Change::RollingRestart { .. }
            ) {
                self.advance_rollouts();
            }
        }
        Ok(changed)
    }

    fn is_scheduled(&self, name: &str) -> bool {
        self.by_name
            .get(name)
            .is_some_and(|u| u.desired.is_scheduled())
    }

    fn apply_change(&mut self, change: &Change, machines: &Machines) -> Result<bool, Error> {
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
                self.rolling.remove(name);
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
            Change::ReportStates { machine, states } => {
                let mut changed = false;
                for (name, state) in states {
                    changed |= self.report(machine, name, state.as_ref());
                }
                Ok(changed)
            }
            Change::SetUnschedulable { name, reason } => Ok(match reason {
                Some(reason) if self.by_name.contains_key(name) => {
                    self.unschedulable.insert(name.clone(), reason.clone()) != Some(reason.clone())
                }
                Some(_) => false,
                None => self.unschedulable.remove(name).is_some(),
            }),
            Change::RollingRestart { name } => self.rolling_restart_start(name),
            Change::Plan { base, changes } => self.apply_plan(*base, changes, machines),
            Change::SubmitThen {
                name,
                text,
                replace,
                then,
            } => {
                let before = self.by_name.get(name).cloned();
                let submitted = self.submit(name, text.as_deref(), *replace)?;
                let moved = match then {
                    Then::Desired(d) => self.set_desired(name, |_, _| Ok(*d)),
                    Then::Transition(t) => {
                        self.set_desired(name, |current, global| t.target(name, current, global))
                    }
                };
                match moved {
                    Ok(moved) => Ok(submitted || moved),
                    // A refused move changed nothing: take the submission back.
                    Err(e) => {
                        match before {
                            Some(record) => self.by_name.insert(name.clone(), record),
                            None => self.by_name.remove(name),
                        };
                        Err(e)
                    }
                }
            }
        }
    }

    fn apply_plan(
        &mut self,
        base: u64,
        changes: &[Change],
        machines: &Machines,
    ) -> Result<bool, Error> {
        if base != self.revision {
            return Err(Error::StalePlan {
                base,
                current: self.revision,
            });
        }
        // All or none: everything that could refuse is checked before anything changes.
        for c in changes {
            match c {
                Change::Assign { name, machine } => {
                    let Some(unit) = self.by_name.get(name) else {
                        return Err(Error::BadPlan(format!("unit '{name}' does not exist")));
                    };
                    if unit.is_template() {
                        return Err(Error::BadPlan(format!("unit '{name}' is a template")));
                    }
                    if !machines.by_name.contains_key(machine) {
                        return Err(Error::BadPlan(format!(
                            "machine '{machine}' is not a member of the cluster"
                        )));
                    }
                }
                Change::Unassign { .. } | Change::SetUnschedulable { .. } => {}
                other => {
                    return Err(Error::BadPlan(format!(
                        "a plan cannot carry {}",
                        other.verb()
                    )));
                }
            }
        }
        let mut changed = false;
        for c in changes {
            changed |= self.apply_change(c, machines)?;
        }
        Ok(changed)
    }

    /// Starts a rolling restart of `name` (a unit, or every launched instance of a template).
    fn rolling_restart_start(&mut self, name: &str) -> Result<bool, Error> {
        let unit = self
            .by_name
            .get(name)
            .ok_or_else(|| Error::NotFound(name.to_owned()))?;
        if self.rolling.contains_key(name) {
            return Ok(false);
        }
        let units: Vec<&UnitRecord> = if unit.is_template() {
            self.by_name
                .values()
                .filter(|u| {
                    u.desired == Desired::Launched && template_of(&u.name).is_ok_and(|t| t == name)
                })
                .collect()
        } else if unit.desired != Desired::Launched {
            return Err(Error::NotLaunched(name.to_owned()));
        } else {
            vec![unit]
        };
        let steps: Vec<(String, String)> = units
            .iter()
            .flat_map(|u| {
                self.assignments
                    .get(&u.name)
                    .into_iter()
                    .flatten()
                    .map(|m| (u.name.clone(), m.clone()))
            })
            .collect();
        if steps.is_empty() {
            return Err(Error::NotPlaced(name.to_owned()));
        }
        self.rolling.insert(
            name.to_owned(),
            Rolling {
                steps,
                generation: 0,
                from_pid: 0,
            },
        );
        self.advance_rollouts();
        Ok(true)
    }

    /// Moves every rolling restart on: asks the first step's restart, or ends that step when
    /// it is over (or can no longer happen) and asks the next.
    fn advance_rollouts(&mut self) {
        if self.rolling.is_empty() {
            return;
        }
        let names: Vec<String> = self.rolling.keys().cloned().collect();
        for key in names {
            while let Some(roll) = self.rolling.get(&key) {
                let Some((unit, machine)) = roll.steps.first().cloned() else {
                    self.rolling.remove(&key);
                    break;
                };
                let runs = self
                    .by_name
                    .get(&unit)
                    .is_some_and(|u| u.desired == Desired::Launched)
                    && self.is_assigned(&unit, &machine);
                if !runs {
                    self.next_step(&key);
                    continue;
                }
                if roll.generation == 0 {
                    let from_pid = self.reported_on(&unit, &machine).map_or(0, |r| r.main_pid);
                    let rec = self.by_name.get_mut(&unit).expect("checked above");
                    let generation = rec.restarts.entry(machine.clone()).or_default();
                    *generation += 1;
                    let generation = *generation;
                    let roll = self.rolling.get_mut(&key).expect("checked above");
                    roll.generation = generation;
                    roll.from_pid = from_pid;
                    break;
                }
                let (generation, from_pid) = (roll.generation, roll.from_pid);
                let Some(r) = self.reported_on(&unit, &machine) else {
                    break;
                };
                if r.restart_generation < generation {
                    break;
                }
                if r.active == "failed" {
                    // A restart that failed ends the rollout: the next machines keep running.
                    self.rolling.remove(&key);
                    break;
                }
                // Active again with a new main process (0: none yet, e.g. in ExecStartPre=).
                if r.active == "active"
                    && (from_pid == 0 || (r.main_pid != 0 && r.main_pid != from_pid))
                {
                    self.next_step(&key);
                    continue;
                }
                break;
            }
        }
    }

    fn next_step(&mut self, key: &str) {
        if let Some(roll) = self.rolling.get_mut(key) {
            roll.steps.remove(0);
            roll.generation = 0;
            roll.from_pid = 0;
        }
    }

    fn reported_on(&self, name: &str, machine: &str) -> Option<&Reported> {
        self.reported.get(name).and_then(|m| m.get(machine))
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
                        launch: 0,
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
        let launch = if desired == Desired::Launched && current != Desired::Launched {
            self.launches += 1;
            Some(self.launches)
        } else {
            None
        };
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
                    launch: launch.unwrap_or(0),
                },
            );
            return Ok(true);
        }
        let unit = self.by_name.get_mut(name).expect("exists");
        if unit.desired == desired {
            return Ok(false);
        }
        unit.desired = desired;
        if let Some(l) = launch {
            unit.launch = l;
        }
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

    /// The order of a rolling restart of `name`: the machines it is assigned to, by name
    /// ([`Change::RollingRestart`] follows it and moves on by itself).
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

impl Change {
    /// The change's name, for messages.
    fn verb(&self) -> &'static str {
        match self {
            Change::Submit { .. } => "Submit",
            Change::SetDesired { .. } => "SetDesired",
            Change::Transition { .. } => "Transition",
            Change::Destroy { .. } => "Destroy",
            Change::Assign { .. } => "Assign",
            Change::Unassign { .. } => "Unassign",
            Change::Restart { .. } => "Restart",
            Change::ReportState { .. } => "ReportState",
            Change::ReportStates { .. } => "ReportStates",
            Change::SetUnschedulable { .. } => "SetUnschedulable",
            Change::RollingRestart { .. } => "RollingRestart",
            Change::Plan { .. } => "Plan",
            Change::SubmitThen { .. } => "SubmitThen",
        }
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
