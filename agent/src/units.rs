//! The unit operations of the agent, one implementation for every interface: the HTTP API
//! (`api/units.rs`) and the D-Bus interface (`bus.rs`) are thin adapters over these functions.
//!
//! # Design
//!
//! Changes (submit, fleet's verbs, desired states, destroy) are [`Change`]s proposed through
//! Raft (a rolling restart is one [`Change::RollingRestart`]: the replicated state moves it on
//! machine by machine as they report, so nobody drives it). Reads come from the applied state ([`views`] is a pure function of it). `systemctl status` and
//! `journalctl` run on the machine the unit is assigned to: here, or forwarded to that
//! machine's agent over the peer channel (the members' own, mutually authenticated when
//! `[cluster] tls_*` is set; the client API may require credentials this agent does not
//! have), which answers by running them itself ([`output_for_peer`]). [`state_changes`]
//! diffs two views of the reported states, for the bus's `UnitStateChanged`.
//!
//! # Current limitations
//!
//! - [`restart`] returns once the rollout is committed, not when it is over.

use std::collections::BTreeMap;
use std::time::Duration;

use flotilla_state::units::{Change, Desired, Reported, Then, Transition, UnitRecord, Units};
use flotilla_state::{Command, Response, units};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::cluster::{self, Cluster};
use crate::raft::network::path;

/// How long a forwarded status or journal request may take.
const FORWARD_DEADLINE: Duration = Duration::from_secs(10);
/// The most journal lines one request returns.
pub(crate) const MAX_LINES: u32 = 10_000;
/// [`MAX_LINES`] as journalctl's argument.
const MAX_LINES_ARG: &str = "10000";

/// Why a unit operation failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    /// The registry refused the change (no such unit, malformed, exists, ...).
    #[error(transparent)]
    Unit(#[from] units::Error),
    /// The change could not be committed (no leader, ...).
    #[error(transparent)]
    Cluster(#[from] cluster::Error),
    /// `machine` was asked for and the unit is not assigned to it.
    #[error("unit '{name}' is not assigned to machine '{machine}'")]
    NotAssigned { name: String, machine: String },
    /// The unit is assigned to no machine.
    #[error("unit '{0}' runs on no machine: start or load it first")]
    NotScheduled(String),
    /// The unit should run, but no machine can take it (the scheduler's reason).
    #[error("unit '{name}' cannot be placed: {reason}")]
    Unschedulable { name: String, reason: String },
    /// The machine that runs the unit is not a member of the cluster (no peer address).
    #[error("machine '{0}' is not a member of the cluster: no address to ask it at")]
    NoPeer(String),
    /// The machine's agent could not be reached (a transport failure).
    #[error("cannot reach machine '{machine}' at {addr}: {reason}")]
    Unreachable {
        machine: String,
        addr: String,
        reason: String,
    },
    /// The machine's agent answered with an error: an HTTP status for it and a body.
    #[error("machine '{machine}' answered {status}: {}", .body["error"].as_str().unwrap_or("no message"))]
    Remote {
        machine: String,
        status: u16,
        body: Value,
    },
    /// The command could not be run here.
    #[error("cannot run {program} on machine '{machine}': {reason}")]
    Run {
        program: String,
        machine: String,
        reason: String,
    },
    /// Raft answered a unit change with something else.
    #[error("unexpected response to a change of unit '{name}': {response}")]
    Unexpected { name: String, response: String },
}

/// A unit as every machine sees it: the registry's record, where it is assigned and what the
/// machines report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct UnitView {
    pub(crate) name: String,
    pub(crate) hash: String,
    pub(crate) desired: Desired,
    /// The machines it is assigned to, by name.
    pub(crate) machines: Vec<String>,
    /// The states machines report, by machine name (assigned or not: a machine it was taken
    /// off reports until it stopped it).
    pub(crate) states: Vec<(String, Reported)>,
    /// Why the scheduler cannot place it.
    pub(crate) unschedulable: Option<String>,
}

impl UnitView {
    /// fleet's current state: `launched` if active somewhere, `loaded` if loaded somewhere,
    /// else `inactive`.
    pub(crate) fn current(&self) -> &'static str {
        if self.states.iter().any(|(_, s)| s.active == "active") {
            "launched"
        } else if self.states.iter().any(|(_, s)| s.load == "loaded") {
            "loaded"
        } else {
            "inactive"
        }
    }

    /// The state `machine` reports, if any.
    pub(crate) fn state_on(&self, machine: &str) -> Option<&Reported> {
        self.states
            .iter()
            .find(|(m, _)| m == machine)
            .map(|(_, s)| s)
    }
}

/// The output of a command run on the machine of a unit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Output {
    /// The machine it ran on.
    pub(crate) machine: String,
    /// Its standard output, then its standard error.
    pub(crate) output: String,
    /// Its exit code (`None`: killed by a signal).
    pub(crate) exit_code: Option<i32>,
}

/// A change of the state a machine reports for a unit (`load`, `active` and `sub` empty: the
/// machine no longer reports it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StateChange {
    pub(crate) name: String,
    pub(crate) machine: String,
    pub(crate) load: String,
    pub(crate) active: String,
    pub(crate) sub: String,
}

/// The reported `(load, active, sub)` of every unit, by (unit, machine).
pub(crate) type ReportedStates = BTreeMap<(String, String), (String, String, String)>;

/// Proposes a change of unit `name`; whether it changed anything.
async fn propose(cluster: &Cluster, name: &str, change: Change) -> Result<bool, Error> {
    match cluster.propose(Command::Unit(change)).await? {
        Response::Unit(r) => Ok(r?),
        other => Err(Error::Unexpected {
            name: name.to_owned(),
            response: format!("{other:?}"),
        }),
    }
}

/// Submits a unit file (a different content under `name` is refused unless `replace`).
pub(crate) async fn submit(
    cluster: &Cluster,
    name: &str,
    text: String,
    replace: bool,
) -> Result<bool, Error> {
    let change = Change::Submit {
        name: name.to_owned(),
        text: Some(text),
        replace,
    };
    propose(cluster, name, change).await
}

/// Submits a unit file and then sets its desired state or applies a verb, in one commit: both
/// or neither.
pub(crate) async fn submit_then(
    cluster: &Cluster,
    name: &str,
    text: String,
    replace: bool,
    then: Then,
) -> Result<bool, Error> {
    let change = Change::SubmitThen {
        name: name.to_owned(),
        text: Some(text),
        replace,
        then,
    };
    propose(cluster, name, change).await
}

/// Applies one of fleet's verbs.
pub(crate) async fn transition(
    cluster: &Cluster,
    name: &str,
    transition: Transition,
) -> Result<bool, Error> {
    let change = Change::Transition {
        name: name.to_owned(),
        transition,
    };
    propose(cluster, name, change).await
}

/// Sets the desired state directly.
pub(crate) async fn set_desired(
    cluster: &Cluster,
    name: &str,
    desired: Desired,
) -> Result<bool, Error> {
    let change = Change::SetDesired {
        name: name.to_owned(),
        desired,
    };
    propose(cluster, name, change).await
}

/// Removes the unit from the cluster (its machines stop it).
pub(crate) async fn destroy(cluster: &Cluster, name: &str) -> Result<bool, Error> {
    let change = Change::Destroy {
        name: name.to_owned(),
    };
    propose(cluster, name, change).await
}

/// Starts a rolling restart of a started unit (or of every started instance of a template):
/// one machine after the other, each asked once the previous one reports the unit active
/// again. The replicated state drives the rollout (it goes on across leader changes); this
/// returns once it is committed. `false`: one is already under way.
pub(crate) async fn restart(cluster: &Cluster, name: &str) -> Result<bool, Error> {
    let change = Change::RollingRestart {
        name: name.to_owned(),
    };
    propose(cluster, name, change).await
}

/// Every unit of the applied state, by name.
pub(crate) fn views(u: &Units) -> Vec<UnitView> {
    u.by_name
        .values()
        .map(|r| UnitView {
            name: r.name.clone(),
            hash: r.hash.clone(),
            desired: r.desired,
            machines: u
                .assignments
                .get(&r.name)
                .map(|s| s.iter().cloned().collect())
                .unwrap_or_default(),
            states: u
                .reported
                .get(&r.name)
                .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                .unwrap_or_default(),
            unschedulable: u.unschedulable.get(&r.name).cloned(),
        })
        .collect()
}

/// Every unit, read after a read barrier when a leader confirms one (else from what this
/// machine applied).
pub(crate) async fn list(cluster: &Cluster) -> Vec<UnitView> {
    if let Err(e) = cluster.read_barrier().await {
        tracing::debug!("units list without a read barrier: {e}");
    }
    views(&cluster.applied().state.units)
}

/// One unit's record (with its text).
pub(crate) fn get(cluster: &Cluster, name: &str) -> Result<UnitRecord, Error> {
    cluster
        .applied()
        .state
        .units
        .by_name
        .get(name)
        .cloned()
        .ok_or_else(|| Error::Unit(units::Error::NotFound(name.to_owned())))
}

/// The reported `(load, active, sub)` of every unit on every machine.
pub(crate) fn reported_states(u: &Units) -> ReportedStates {
    u.reported
        .iter()
        .flat_map(|(name, by_machine)| {
            by_machine.iter().map(move |(machine, s)| {
                (
                    (name.clone(), machine.clone()),
                    (s.load.clone(), s.active.clone(), s.sub.clone()),
                )
            })
        })
        .collect()
}

/// What changed from `before` to `after`: new or different states, and (with empty states)
/// those no longer reported, in (unit, machine) order.
pub(crate) fn state_changes(before: &ReportedStates, after: &ReportedStates) -> Vec<StateChange> {
    let change =
        |(name, machine): &(String, String), (load, active, sub): (&str, &str, &str)| StateChange {
            name: name.clone(),
            machine: machine.clone(),
            load: load.to_owned(),
            active: active.to_owned(),
            sub: sub.to_owned(),
        };
    let mut out: Vec<StateChange> = after
        .iter()
        .filter(|(k, v)| before.get(k) != Some(v))
        .map(|(k, (l, a, s))| change(k, (l, a, s)))
        .collect();
    out.extend(
        before
            .keys()
            .filter(|k| !after.contains_key(k))
            .map(|k| change(k, ("", "", ""))),
    );
    out.sort_by(|a, b| (&a.name, &a.machine).cmp(&(&b.name, &b.machine)));
    out
}

/// `systemctl status` of `name`, run on the machine that runs it (`machine`: one of several).
pub(crate) async fn status(
    cluster: &Cluster,
    name: &str,
    machine: Option<&str>,
) -> Result<Output, Error> {
    let argv = ["systemctl", "status", "--no-pager", "--full", "--", name];
    on_machine(cluster, name, machine, None, &argv).await
}

/// The last `lines` lines (at most [`MAX_LINES`]) of `name`'s journal, read on the machine
/// that runs it. With `cursor` (following): only the entries after it (none: the last
/// `lines`), and the output ends with journalctl's `-- cursor: C` line to ask again from.
pub(crate) async fn journal(
    cluster: &Cluster,
    name: &str,
    lines: u32,
    cursor: Option<&str>,
    machine: Option<&str>,
) -> Result<Output, Error> {
    let lines = lines.min(MAX_LINES);
    let n = lines.to_string();
    let mut argv = vec!["journalctl", "-u", name, "--no-pager"];
    let after;
    match cursor {
        // Everything after the cursor (at most MAX_LINES), however much came meanwhile.
        Some(c) if !c.is_empty() => {
            after = format!("--after-cursor={c}");
            argv.extend(["--show-cursor", &after, "-n", MAX_LINES_ARG]);
        }
        Some(_) => argv.extend(["--show-cursor", "-n", &n]),
        None => argv.extend(["-n", &n]),
    }
    let query = JournalQuery {
        lines,
        cursor: cursor.map(str::to_owned),
    };
    on_machine(cluster, name, machine, Some(query), &argv).await
}

/// What a peer asks of a unit's journal.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct JournalQuery {
    lines: u32,
    cursor: Option<String>,
}

/// Runs `argv` here when `name` runs on this machine, else asks the agent of the machine that
/// runs it (for the journal, or the status).
async fn on_machine(
    cluster: &Cluster,
    name: &str,
    machine: Option<&str>,
    journal: Option<JournalQuery>,
    argv: &[&str],
) -> Result<Output, Error> {
    if let Err(e) = cluster.read_barrier().await {
        tracing::debug!("unit {name}: {} without a read barrier: {e}", argv[0]);
    }
    let me = cluster.me().name.clone();
    let target = pick_machine(&cluster.applied().state.units, name, machine, &me)?;
    if target == me {
        return run_here(&me, argv).await;
    }
    forward(cluster, name, &target, journal).await
}

/// The machine whose agent answers for `name`: `asked` if the unit is assigned there, this
/// machine if it runs the unit, else the first machine it is assigned to.
fn pick_machine(u: &Units, name: &str, asked: Option<&str>, me: &str) -> Result<String, Error> {
    if !u.by_name.contains_key(name) {
        return Err(Error::Unit(units::Error::NotFound(name.to_owned())));
    }
    let assigned: Vec<&String> = u
        .assignments
        .get(name)
        .map(|s| s.iter().collect())
        .unwrap_or_default();
    match asked {
        Some(m) if assigned.iter().any(|a| *a == m) => Ok(m.to_owned()),
        Some(m) => Err(Error::NotAssigned {
            name: name.to_owned(),
            machine: m.to_owned(),
        }),
        None if assigned.iter().any(|a| *a == me) => Ok(me.to_owned()),
        None => {
            assigned
                .first()
                .map(|m| (*m).clone())
                .ok_or_else(|| match u.unschedulable.get(name) {
                    Some(reason) => Error::Unschedulable {
                        name: name.to_owned(),
                        reason: reason.clone(),
                    },
                    None => Error::NotScheduled(name.to_owned()),
                })
        }
    }
}

async fn run_here(me: &str, argv: &[&str]) -> Result<Output, Error> {
    let out = tokio::process::Command::new(argv[0])
        .args(&argv[1..])
        .env("SYSTEMD_COLORS", "0")
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|e| Error::Run {
            program: argv[0].to_owned(),
            machine: me.to_owned(),
            reason: e.to_string(),
        })?;
    let mut output = String::from_utf8_lossy(&out.stdout).into_owned();
    output.push_str(&String::from_utf8_lossy(&out.stderr));
    Ok(Output {
        machine: me.to_owned(),
        output,
        exit_code: out.status.code(),
    })
}

/// A peer's request for the status (`lines: None`) or the journal of a unit that runs on
/// this machine.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct OutputRequest {
    name: String,
    journal: Option<JournalQuery>,
}

/// Why this machine refused an [`OutputRequest`]: the HTTP status the client API would
/// answer, and the message.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Refusal {
    status: u16,
    message: String,
}

/// Answers a peer's [`OutputRequest`]: runs the command here if the unit is assigned here
/// (never forwards again).
pub(crate) async fn output_for_peer(
    cluster: &Cluster,
    req: OutputRequest,
) -> Result<Output, Refusal> {
    let me = cluster.me().name.clone();
    let done = match req.journal {
        None => status(cluster, &req.name, Some(&me)).await,
        Some(q) => journal(cluster, &req.name, q.lines, q.cursor.as_deref(), Some(&me)).await,
    };
    done.map_err(|e| Refusal {
        status: match &e {
            Error::Unit(units::Error::NotFound(_)) => 404,
            Error::NotAssigned { .. } | Error::NotScheduled(_) | Error::Unschedulable { .. } => 409,
            _ => 500,
        },
        message: e.to_string(),
    })
}

/// Asks `machine`'s agent, over the peer channel, for the unit's status or journal.
async fn forward(
    cluster: &Cluster,
    name: &str,
    machine: &str,
    journal: Option<JournalQuery>,
) -> Result<Output, Error> {
    let addr = cluster
        .members()
        .into_iter()
        .find(|m| m.member.name == machine)
        .map(|m| m.member.peer_addr)
        .ok_or_else(|| Error::NoPeer(machine.to_owned()))?;
    let req = OutputRequest {
        name: name.to_owned(),
        journal,
    };
    let reply = cluster
        .peers()
        .call::<_, Result<Output, Refusal>>(&addr, path::UNIT_OUTPUT, &req, FORWARD_DEADLINE)
        .await
        .map_err(|e| Error::Unreachable {
            machine: machine.to_owned(),
            addr: addr.clone(),
            reason: e.to_string(),
        })?;
    reply.map_err(|r| Error::Remote {
        machine: machine.to_owned(),
        status: r.status,
        body: serde_json::json!({ "error": r.message }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn states(rows: &[(&str, &str, &str)]) -> ReportedStates {
        rows.iter()
            .map(|(unit, machine, active)| {
                (
                    (unit.to_string(), machine.to_string()),
                    ("loaded".to_string(), active.to_string(), "x".to_string()),
                )
            })
            .collect()
    }

    #[test]
    fn the_journal_limit_is_given_to_journalctl_as_is() {
        assert_eq!(MAX_LINES_ARG, MAX_LINES.to_string());
    }

    #[test]
    fn state_changes_name_new_changed_and_forgotten_states_only() {
        let before = states(&[
            ("a", "n1", "active"),
            ("b", "n1", "active"),
            ("c", "n2", "inactive"),
        ]);
        let after = states(&[
            ("a", "n1", "active"),
            ("b", "n1", "failed"),
            ("d", "n3", "active"),
        ]);
        let got: Vec<(String, String, String)> = state_changes(&before, &after)
            .into_iter()
            .map(|c| (c.name, c.machine, c.active))
            .collect();
        let want = [
            ("b", "n1", "failed"),
            ("c", "n2", ""),
            ("d", "n3", "active"),
        ]
        .map(|(u, m, a)| (u.to_string(), m.to_string(), a.to_string()));
        assert_eq!(got, want);
        assert!(state_changes(&after, &after).is_empty());
    }

    fn registry() -> Units {
        let mut u = Units::default();
        u.by_name.insert(
            "hello.service".into(),
            UnitRecord {
                name: "hello.service".into(),
                text: String::new(),
                hash: "abc".into(),
                desired: Desired::Launched,
                requirements: Default::default(),
                restarts: Default::default(),
                launch: 0,
            },
        );
        u.assignments.insert(
            "hello.service".into(),
            ["n2".to_string(), "n3".to_string()].into(),
        );
        u
    }

    #[test]
    fn status_runs_here_when_it_can_else_on_an_assigned_machine() {
        let u = registry();
        assert_eq!(pick_machine(&u, "hello.service", None, "n3").unwrap(), "n3");
        assert_eq!(pick_machine(&u, "hello.service", None, "n1").unwrap(), "n2");
        assert_eq!(
            pick_machine(&u, "hello.service", Some("n3"), "n1").unwrap(),
            "n3"
        );
        let e = pick_machine(&u, "hello.service", Some("n1"), "n1").unwrap_err();
        assert_eq!(
            e.to_string(),
            "unit 'hello.service' is not assigned to machine 'n1'"
        );
        let e = pick_machine(&u, "nope.service", None, "n1").unwrap_err();
        assert_eq!(
            e.to_string(),
            "unit 'nope.service' does not exist: submit it first"
        );
        let mut idle = registry();
        idle.assignments.clear();
        let e = pick_machine(&idle, "hello.service", None, "n1").unwrap_err();
        assert_eq!(
            e.to_string(),
            "unit 'hello.service' runs on no machine: start or load it first"
        );
        idle.unschedulable.insert(
            "hello.service".into(),
            "no machine matches MachineMetadata=region=west".into(),
        );
        let e = pick_machine(&idle, "hello.service", None, "n1").unwrap_err();
        assert_eq!(
            e.to_string(),
            "unit 'hello.service' cannot be placed: no machine matches MachineMetadata=region=west"
        );
    }

    #[test]
    fn views_carry_assignments_states_and_fleet_current_state() {
        let mut u = registry();
        u.reported.insert(
            "hello.service".into(),
            [(
                "n2".to_string(),
                Reported {
                    load: "loaded".into(),
                    active: "active".into(),
                    sub: "running".into(),
                    ..Default::default()
                },
            )]
            .into(),
        );
        let v = views(&u);
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].machines, ["n2", "n3"]);
        assert_eq!(v[0].current(), "launched");
        assert_eq!(v[0].state_on("n2").map(|s| s.sub.as_str()), Some("running"));
        assert!(v[0].state_on("n3").is_none());
    }
}
