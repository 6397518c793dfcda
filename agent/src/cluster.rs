//! The cluster handle: this member's Raft, the applied state, and the operations that must run
//! on the leader (writes, read indexes, membership changes), forwarded there over the peer
//! transport when this member is not the leader.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLockReadGuard};
use std::time::Duration;

use flotilla_state::{Command, Response};
use openraft::ChangeMembers;
use openraft::error::{ClientWriteError, RaftError};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::raft::log_store::Durable;
use crate::raft::network::{CallError, Peers, path};
use crate::raft::proposer::{ProposeError, Proposer};
use crate::raft::state_machine::{Applied, Shared};
use crate::raft::{Member, NodeId, Raft, id_hex};
use crate::watch::Hub;

/// The most voters; further members are learners.
pub(crate) const MAX_VOTERS: usize = 5;
/// How long an operation waits for a leader before it gives up.
const LEADER_DEADLINE: Duration = Duration::from_secs(5);

/// Why a cluster operation failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub(crate) enum Error {
    /// No leader could be reached in time (election in progress or no quorum).
    #[error("no leader: {0}; is a quorum of members running?")]
    NoLeader(String),
    /// Raft refused or failed the operation.
    #[error("{0}")]
    Raft(String),
    /// The request is invalid (unknown member, too many voters, ...).
    #[error("{0}")]
    Rejected(String),
}

/// An operation only the leader performs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum LeaderRequest {
    /// Commit a command.
    Propose(Command),
    /// Confirm leadership with a quorum and return the index a linearizable read waits for.
    ReadIndex,
    /// Add (or re-announce) a member: as a learner, then as a voter while there are fewer than
    /// [`MAX_VOTERS`].
    Join(Member),
    /// Register a member that has not started yet, as a learner (`member add`); it becomes a
    /// voter when it starts and joins.
    AddLearner(Member),
    /// Update a member's record (its client URLs) in the membership.
    SetNode(Member),
    /// Remove a member.
    Remove(NodeId),
}

/// The leader's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum LeaderReply {
    /// The applied command's response.
    Applied(Box<Response>, u64),
    /// The read index.
    ReadIndex(u64),
    /// The membership change is committed.
    Done,
}

/// A member as `/v2/members` and `flotctl member list` show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MemberInfo {
    pub(crate) id: NodeId,
    pub(crate) member: Member,
    pub(crate) voter: bool,
}

/// The handle, cloned into every subsystem.
#[derive(Clone)]
pub(crate) struct Cluster {
    inner: Arc<Inner>,
}

struct Inner {
    id: NodeId,
    me: Member,
    raft: Raft,
    shared: Shared,
    hub: Hub,
    peers: Peers,
    proposer: Proposer,
    durable: Durable,
}

impl Cluster {
    /// Wraps a started Raft.
    #[allow(
        clippy::too_many_arguments,
        reason = "each is a distinct part built in main"
    )]
    pub(crate) fn new(
        id: NodeId,
        me: Member,
        raft: Raft,
        shared: Shared,
        hub: Hub,
        peers: Peers,
        proposer: Proposer,
        durable: Durable,
    ) -> Self {
        Cluster {
            inner: Arc::new(Inner {
                id,
                me,
                raft,
                shared,
                hub,
                peers,
                proposer,
                durable,
            }),
        }
    }

    pub(crate) fn id(&self) -> NodeId {
        self.inner.id
    }

    pub(crate) fn me(&self) -> &Member {
        &self.inner.me
    }

    pub(crate) fn raft(&self) -> &Raft {
        &self.inner.raft
    }

    /// The applied state, for reading (a poisoned lock still holds a consistent state: apply
    /// replaces it whole).
    pub(crate) fn applied(&self) -> RwLockReadGuard<'_, Applied> {
        self.inner.shared.read().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn hub(&self) -> &Hub {
        &self.inner.hub
    }

    pub(crate) fn peers(&self) -> &Peers {
        &self.inner.peers
    }

    /// How far this member's Raft log is on disk.
    pub(crate) fn durable(&self) -> &Durable {
        &self.inner.durable
    }

    /// The leader as this member knows it (none once its Raft core stopped on an error: it no
    /// longer follows anyone).
    pub(crate) fn leader(&self) -> Option<NodeId> {
        let m = self.inner.raft.metrics();
        let m = m.borrow();
        if m.running_state.is_err() {
            return None;
        }
        m.current_leader
    }

    /// Whether this member is the leader.
    pub(crate) fn is_leader(&self) -> bool {
        self.leader() == Some(self.inner.id)
    }

    /// `(term, last applied index)` for the X-Raft-* headers.
    pub(crate) fn raft_position(&self) -> (u64, u64) {
        let m = self.inner.raft.metrics();
        let m = m.borrow();
        (m.current_term, m.last_applied.map_or(0, |l| l.index))
    }

    /// The members of the current membership config.
    pub(crate) fn members(&self) -> Vec<MemberInfo> {
        let a = self.inner.shared.read().unwrap_or_else(|p| p.into_inner());
        let m = a.membership.membership();
        let voters: BTreeSet<NodeId> = m.voter_ids().collect();
        m.nodes()
            .map(|(id, n)| MemberInfo {
                id: *id,
                member: n.clone(),
                voter: voters.contains(id),
            })
            .collect()
    }

    /// Commits `cmd` (on the leader, wherever it is) and returns what applying it produced.
    pub(crate) async fn propose(&self, cmd: Command) -> Result<Response, Error> {
        match self.on_leader(LeaderRequest::Propose(cmd)).await? {
            LeaderReply::Applied(r, index) => {
                // Read your writes on this member, as etcd: answer once applied here too. On
                // the leader (and a follower that is quick) it already is: no need to wait
                // for the metrics to say so.
                let applied = {
                    let a = self.inner.shared.read().unwrap_or_else(|p| p.into_inner());
                    a.last_applied.map(|l| l.index)
                };
                if applied.is_some_and(|a| a >= index) {
                    return Ok(*r);
                }
                let wait = self.inner.raft.wait(Some(LEADER_DEADLINE));
                if let Err(e) = wait.applied_index_at_least(Some(index), "write").await {
                    tracing::debug!("the write at {index} is not applied here yet: {e}");
                }
                Ok(*r)
            }
            other => Err(Error::Raft(format!(
                "unexpected reply from the leader: {other:?}"
            ))),
        }
    }

    /// Waits until this member has applied everything committed before now, as confirmed by
    /// the leader with a quorum (a linearizable read may then read the local state).
    pub(crate) async fn read_barrier(&self) -> Result<(), Error> {
        let index = match self.on_leader(LeaderRequest::ReadIndex).await? {
            LeaderReply::ReadIndex(i) => i,
            other => {
                return Err(Error::Raft(format!(
                    "unexpected reply from the leader: {other:?}"
                )));
            }
        };
        self.inner
            .raft
            .wait(Some(LEADER_DEADLINE))
            .applied_index_at_least(Some(index), "read barrier")
            .await
            .map_err(|e| Error::NoLeader(e.to_string()))?;
        Ok(())
    }

    /// Registers a member that will start later (`member add`).
    pub(crate) async fn add_learner(&self, member: Member) -> Result<(), Error> {
        self.on_leader(LeaderRequest::AddLearner(member))
            .await
            .map(|_| ())
    }

    /// Removes a member's record from the machine registry, then the member from the
    /// membership (in this order: the leader may be the member removed).
    pub(crate) async fn remove(&self, id: NodeId) -> Result<(), Error> {
        let name = self
            .members()
            .into_iter()
            .find(|m| m.id == id)
            .map(|m| m.member.name);
        if let Some(name) = name {
            let change = flotilla_state::machines::Change::Remove { name };
            self.propose(Command::Machine(change)).await?;
        }
        self.on_leader(LeaderRequest::Remove(id)).await?;
        Ok(())
    }

    /// Makes sure the membership carries this member's current client URLs.
    pub(crate) async fn announce_self(&self) -> Result<(), Error> {
        let recorded = self.members().into_iter().find(|m| m.id == self.inner.id);
        match recorded {
            Some(m) if m.member == self.inner.me => Ok(()),
            Some(_) => self
                .on_leader(LeaderRequest::SetNode(self.inner.me.clone()))
                .await
                .map(|_| ()),
            None => Err(Error::Rejected(format!(
                "member {} is not in the membership",
                self.inner.me.name
            ))),
        }
    }

    /// Runs `req` on the leader: locally when this member leads, else over the peer transport;
    /// follows leader changes until [`LEADER_DEADLINE`].
    pub(crate) async fn on_leader(&self, req: LeaderRequest) -> Result<LeaderReply, Error> {
        let deadline = Instant::now() + LEADER_DEADLINE;
        let mut metrics = self.inner.raft.metrics();
        loop {
            let leader = metrics.borrow_and_update().current_leader;
            let attempt = match leader {
                Some(l) if l == self.inner.id => Some(self.handle_local(req.clone()).await),
                Some(l) => match self.leader_addr(l) {
                    Some(addr) => match self
                        .inner
                        .peers
                        .call::<_, Result<LeaderReply, Error>>(
                            &addr,
                            path::LEADER,
                            &req,
                            LEADER_DEADLINE,
                        )
                        .await
                    {
                        Ok(reply) => Some(reply),
                        // Never sent: look for the leader again and send it there.
                        Err(CallError::Unreachable { .. }) => None,
                        // Failed in transit: a proposal may have reached the leader and been
                        // committed, and sending it again could apply it twice (a CAS that
                        // succeeds, then reports a failed compare). Its outcome is unknown;
                        // the other requests are safe to repeat.
                        Err(e) if matches!(req, LeaderRequest::Propose(_)) => {
                            return Err(Error::Raft(format!(
                                "{e}; the write may or may not have been applied: read it \
                                 back before retrying"
                            )));
                        }
                        Err(_) => None,
                    },
                    None => None,
                },
                None => None,
            };
            match attempt {
                Some(Err(Error::NoLeader(_))) | None => {}
                Some(done) => return done,
            }
            // Wait for the leader to change (or a short while, if the leader is known but did
            // not answer), then try again.
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::NoLeader(format!(
                    "no leader answered within {LEADER_DEADLINE:?}"
                )));
            }
            let pause = if leader.is_some() {
                Duration::from_millis(50)
            } else {
                deadline - now
            };
            let _ = tokio::time::timeout(pause.min(deadline - now), metrics.changed()).await;
        }
    }

    fn leader_addr(&self, id: NodeId) -> Option<String> {
        let m = self.inner.raft.metrics();
        let m = m.borrow();
        m.membership_config
            .membership()
            .get_node(&id)
            .map(|n| n.peer_addr.clone())
    }

    /// Runs `req` here, as the leader. `Error::NoLeader` means "not (or no longer) the leader:
    /// find it again".
    pub(crate) async fn handle_local(&self, req: LeaderRequest) -> Result<LeaderReply, Error> {
        let raft = &self.inner.raft;
        match req {
            LeaderRequest::Propose(cmd) => match self.inner.proposer.propose(cmd).await {
                Ok((r, index)) => Ok(LeaderReply::Applied(Box::new(r), index)),
                Err(ProposeError::NotLeader { .. }) => {
                    Err(Error::NoLeader("leadership moved".into()))
                }
                Err(ProposeError::Raft(e)) => Err(Error::Raft(e)),
            },
            LeaderRequest::ReadIndex => match raft.ensure_linearizable().await {
                Ok(log_id) => Ok(LeaderReply::ReadIndex(log_id.map_or(0, |l| l.index))),
                Err(e) => Err(Error::NoLeader(e.to_string())),
            },
            LeaderRequest::Join(member) => {
                let id = crate::raft::node_id(&member.name);
                let existing = self.members().into_iter().find(|m| m.id == id);
                if existing.is_none() {
                    raft.add_learner(id, member.clone(), true)
                        .await
                        .map_err(membership_error)?;
                } else if existing.as_ref().is_some_and(|m| m.member != member) {
                    let nodes = BTreeMap::from([(id, member.clone())]);
                    raft.change_membership(ChangeMembers::SetNodes(nodes), true)
                        .await
                        .map_err(membership_error)?;
                }
                let voters = self.members().iter().filter(|m| m.voter).count();
                let is_voter = self.members().iter().any(|m| m.id == id && m.voter);
                if !is_voter && voters < MAX_VOTERS {
                    // Wait for the learner to catch up before it counts toward the quorum.
                    raft.add_learner(id, member, true)
                        .await
                        .map_err(membership_error)?;
                    raft.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), true)
                        .await
                        .map_err(membership_error)?;
                }
                Ok(LeaderReply::Done)
            }
            LeaderRequest::AddLearner(member) => {
                let id = crate::raft::node_id(&member.name);
                if self.members().iter().any(|m| m.id == id) {
                    return Err(Error::Rejected(format!(
                        "member {} already exists",
                        member.name
                    )));
                }
                raft.add_learner(id, member, false)
                    .await
                    .map_err(membership_error)?;
                Ok(LeaderReply::Done)
            }
            LeaderRequest::SetNode(member) => {
                let id = crate::raft::node_id(&member.name);
                if !self.members().iter().any(|m| m.id == id) {
                    return Err(Error::Rejected(format!(
                        "member {} is not in the membership",
                        member.name
                    )));
                }
                let nodes = BTreeMap::from([(id, member)]);
                raft.change_membership(ChangeMembers::SetNodes(nodes), true)
                    .await
                    .map_err(membership_error)?;
                Ok(LeaderReply::Done)
            }
            LeaderRequest::Remove(id) => {
                let members = self.members();
                let Some(target) = members.iter().find(|m| m.id == id) else {
                    return Err(Error::Rejected(format!("member {} not found", id_hex(id))));
                };
                let voters = members.iter().filter(|m| m.voter).count();
                if target.voter {
                    if voters == 1 {
                        return Err(Error::Rejected(format!(
                            "member {} is the last voter; add another member first",
                            target.member.name
                        )));
                    }
                    raft.change_membership(
                        ChangeMembers::RemoveVoters(BTreeSet::from([id])),
                        false,
                    )
                    .await
                    .map_err(membership_error)?;
                } else {
                    raft.change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false)
                        .await
                        .map_err(membership_error)?;
                }
                Ok(LeaderReply::Done)
            }
        }
    }
}

fn membership_error(e: RaftError<NodeId, ClientWriteError<NodeId, Member>>) -> Error {
    if e.forward_to_leader::<Member>().is_some() {
        Error::NoLeader(e.to_string())
    } else {
        Error::Raft(e.to_string())
    }
}

/// How far (in log entries) a learner may lag and still be promoted.
const PROMOTE_LAG: u64 = 100;

/// On the leader: keeps up to [`MAX_VOTERS`] voters by promoting learners that are caught up
/// (after a voter was removed, say), checking every `interval`.
pub(crate) async fn promote_learners(
    cluster: Cluster,
    interval: Duration,
    cancel: tokio_util::sync::CancellationToken,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        if !cluster.is_leader() {
            continue;
        }
        let members = cluster.members();
        if members.iter().filter(|m| m.voter).count() >= MAX_VOTERS {
            continue;
        }
        let candidate = {
            let m = cluster.raft().metrics();
            let m = m.borrow();
            let last = m.last_log_index.unwrap_or(0);
            let matched = |id: NodeId| {
                m.replication
                    .as_ref()
                    .and_then(|r| r.get(&id).copied().flatten())
                    .map(|l| l.index)
            };
            members
                .iter()
                .filter(|x| !x.voter)
                .find(|x| matched(x.id).is_some_and(|i| i + PROMOTE_LAG >= last))
                .map(|x| x.id)
        };
        if let Some(id) = candidate {
            let change = ChangeMembers::AddVoterIds(BTreeSet::from([id]));
            match cluster.raft().change_membership(change, true).await {
                Ok(_) => tracing::info!(member = %id_hex(id), "promoted a learner to voter"),
                Err(e) => {
                    tracing::debug!(member = %id_hex(id), "cannot promote the learner: {e}, retrying")
                }
            }
        }
    }
}

/// Stops the agent (through `cancel`) once a committed membership it applied no longer lists
/// it, as etcd does for a removed member.
pub(crate) async fn stop_when_removed(
    cluster: Cluster,
    cancel: tokio_util::sync::CancellationToken,
) {
    let mut metrics = cluster.raft().metrics();
    let mut was_member = false;
    loop {
        metrics.borrow_and_update();
        // The applied (committed) membership, not the effective one that may still change.
        let is_member = cluster.members().iter().any(|m| m.id == cluster.id());
        if was_member && !is_member {
            tracing::warn!("this member was removed from the cluster; stopping");
            cancel.cancel();
            return;
        }
        was_member |= is_member;
        tokio::select! {
            _ = cancel.cancelled() => return,
            changed = metrics.changed() => if changed.is_err() { return },
        }
    }
}
