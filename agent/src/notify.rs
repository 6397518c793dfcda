//! The agent's side of sd_notify(3): READY=1 once it serves, STATUS= lines a person reads in
//! `systemctl status flotillad` (role, leader, members, machines, units), RELOADING=1 around a
//! reload, STOPPING=1 on shutdown, and WATCHDOG=1 at half of `WatchdogSec=`.
//!
//! Outside systemd (`NOTIFY_SOCKET` unset) every call does nothing. A failed send is logged at
//! debug and ignored: the agent works the same without a service manager.
//!
//! The watchdog is not a timer task of its own: the main loop pings on [`Watchdog::interval`]
//! ticks only after the Raft core answered a probe, so a hung runtime or a hung Raft core both
//! stop the pings and systemd restarts the agent.

use std::time::Duration;

use flotilla_state::State;
use flotilla_state::machines::Status;
use openraft::ServerState;

use crate::raft::{Member, NodeId, Raft};

fn send(states: &[sd_notify::NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::debug!("sd_notify: {e}, ignoring");
    }
}

/// STATUS=`text`.
pub(crate) fn status(text: &str) {
    send(&[sd_notify::NotifyState::Status(text)]);
}

/// READY=1 with STATUS=`text`.
pub(crate) fn ready(text: &str) {
    send(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(text),
    ]);
}

/// RELOADING=1 (with the monotonic time systemd 253+ wants), STATUS=reloading.
pub(crate) fn reloading() {
    match sd_notify::NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[
            sd_notify::NotifyState::Reloading,
            now,
            sd_notify::NotifyState::Status("reloading the configuration"),
        ]),
        Err(_) => send(&[
            sd_notify::NotifyState::Reloading,
            sd_notify::NotifyState::Status("reloading the configuration"),
        ]),
    }
}

/// STOPPING=1 with STATUS=`text`.
pub(crate) fn stopping(text: &str) {
    send(&[
        sd_notify::NotifyState::Stopping,
        sd_notify::NotifyState::Status(text),
    ]);
}

/// The watchdog systemd asked for (`WatchdogSec=`, passed as `WATCHDOG_USEC` and
/// `WATCHDOG_PID`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Watchdog {
    timeout: Duration,
}

impl Watchdog {
    /// The watchdog if systemd enabled one for this process.
    pub(crate) fn from_env() -> Option<Watchdog> {
        sd_notify::watchdog_enabled()
            .filter(|t| !t.is_zero())
            .map(|timeout| Watchdog { timeout })
    }

    /// How often to ping: half the timeout, as sd_watchdog_enabled(3) recommends.
    pub(crate) fn interval(&self) -> Duration {
        self.timeout / 2
    }

    /// How long the Raft core may take to answer a probe before this tick's ping is skipped.
    fn probe_deadline(&self) -> Duration {
        self.timeout / 4
    }

    /// WATCHDOG=1 if the Raft core answers a probe (a closure run inside its loop) in time;
    /// otherwise no ping, and a warning: systemd restarts the agent if that lasts.
    pub(crate) async fn probe_and_ping(&self, raft: &Raft) {
        match tokio::time::timeout(self.probe_deadline(), raft.with_raft_state(|_| ())).await {
            Ok(Ok(())) => send(&[sd_notify::NotifyState::Watchdog]),
            Ok(Err(e)) => tracing::warn!("the raft core stopped: {e}; not pinging the watchdog"),
            Err(_) => tracing::warn!(
                "the raft core did not answer within {:?}; not pinging the watchdog",
                self.probe_deadline()
            ),
        }
    }
}

/// What the STATUS= line says: a snapshot of this member's view of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Summary {
    /// Leader, follower, candidate or learner.
    pub(crate) role: ServerState,
    /// The leader's name (or id when it is not in the membership), if one is known.
    pub(crate) leader: Option<String>,
    /// The Raft term.
    pub(crate) term: u64,
    /// Voters in the membership.
    pub(crate) voters: usize,
    /// Learners in the membership.
    pub(crate) learners: usize,
    /// Machines registered, and of those up.
    pub(crate) machines: usize,
    /// Machines whose committed status is up.
    pub(crate) machines_up: usize,
    /// Units in the cluster.
    pub(crate) units: usize,
    /// Units assigned to this machine.
    pub(crate) units_here: usize,
    /// The last applied log index.
    pub(crate) applied: u64,
}

impl Summary {
    /// Reads the summary from Raft's metrics and the applied state.
    pub(crate) fn read(
        me: &str,
        metrics: &openraft::RaftMetrics<NodeId, Member>,
        state: &State,
    ) -> Summary {
        let membership = metrics.membership_config.membership();
        let voters: Vec<NodeId> = membership.voter_ids().collect();
        let nodes = membership.nodes().count();
        let leader = metrics.current_leader.map(|id| {
            membership
                .get_node(&id)
                .map_or_else(|| crate::raft::id_hex(id), |m| m.name.clone())
        });
        Summary {
            role: metrics.state,
            leader,
            term: metrics.current_term,
            voters: voters.len(),
            learners: nodes.saturating_sub(voters.len()),
            machines: state.machines.by_name.len(),
            machines_up: state
                .machines
                .by_name
                .values()
                .filter(|m| m.status == Status::Up)
                .count(),
            units: state.units.by_name.len(),
            units_here: state
                .units
                .assignments
                .values()
                .filter(|on| on.contains(me))
                .count(),
            applied: metrics.last_applied.map_or(0, |l| l.index),
        }
    }

    /// The STATUS= line, e.g. `follower of node2 (term 3); 3 voters; 3/3 machines up; 0 units
    /// (0 here); applied 42`.
    pub(crate) fn line(&self) -> String {
        let role = match self.role {
            ServerState::Leader => "leader".to_string(),
            ServerState::Follower => match &self.leader {
                Some(l) => format!("follower of {l}"),
                None => "follower".to_string(),
            },
            ServerState::Learner => match &self.leader {
                Some(l) => format!("learner of {l}"),
                None => "learner".to_string(),
            },
            ServerState::Candidate => "candidate".to_string(),
            ServerState::Shutdown => "shut down".to_string(),
        };
        let quorum = if self.leader.is_none() {
            format!(
                "; no leader: waiting for a quorum ({} of {} voters)",
                self.voters / 2 + 1,
                self.voters
            )
        } else {
            String::new()
        };
        let learners = if self.learners > 0 {
            format!(", {} learners", self.learners)
        } else {
            String::new()
        };
        format!(
            "{role} (term {term}){quorum}; {voters} voters{learners}; {up}/{machines} machines up; \
             {units} units ({here} here); applied {applied}",
            term = self.term,
            voters = self.voters,
            up = self.machines_up,
            machines = self.machines,
            units = self.units,
            here = self.units_here,
            applied = self.applied,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary() -> Summary {
        Summary {
            role: ServerState::Follower,
            leader: Some("node2".into()),
            term: 3,
            voters: 3,
            learners: 0,
            machines: 3,
            machines_up: 3,
            units: 2,
            units_here: 1,
            applied: 42,
        }
    }

    #[test]
    fn a_follower_names_its_leader() {
        assert_eq!(
            summary().line(),
            "follower of node2 (term 3); 3 voters; 3/3 machines up; 2 units (1 here); applied 42"
        );
    }

    #[test]
    fn without_a_leader_the_line_says_it_waits_for_a_quorum() {
        let s = Summary {
            role: ServerState::Candidate,
            leader: None,
            learners: 2,
            machines_up: 1,
            ..summary()
        };
        assert_eq!(
            s.line(),
            "candidate (term 3); no leader: waiting for a quorum (2 of 3 voters); 3 voters, \
             2 learners; 1/3 machines up; 2 units (1 here); applied 42"
        );
    }

    #[test]
    fn the_leader_says_so() {
        let s = Summary {
            role: ServerState::Leader,
            ..summary()
        };
        assert!(
            s.line().starts_with("leader (term 3); 3 voters;"),
            "{}",
            s.line()
        );
    }
}
