//! The cluster handle: this member's Raft, the applied state, and the operations that must run
//! on the leader (writes, read indexes, membership changes), forwarded there over the peer
//! transport when this member is not the leader.
//!
//! Every proposal carries a request id (this member's id, a number drawn at start, a counter)
//! and the lowest counter still awaiting an answer, so the state machine applies it at most
//! once (`flotilla_state::sessions`): a write forwarded to the leader that fails in transit, or
//! whose leader is replaced while it holds it, is sent again with the same id until
//! [`LEADER_DEADLINE`], and a copy that was committed anyway answers what the first produced.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{BuildHasher as _, Hasher as _};
use std::sync::{Arc, Mutex, RwLockReadGuard};
use std::time::Duration;

use flotilla_state::sessions::{Proposal, RequestId, Session};
use flotilla_state::{Command, Response};
use openraft::ChangeMembers;
use openraft::error::{ClientWriteError, RaftError};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::raft::log_store::Durable;
use crate::raft::network::{CallError, Peers, path};
use crate::raft::proposer::{ProposeError, Proposer};
use crate::raft::state_machine::{Applied, Shared};
use crate::raft::stats::PeerStats;
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
    /// Commit a command (applied at most once per request id).
    Propose(Proposal),
    /// Confirm leadership with a quorum and return the index a linearizable read waits for.
    ReadIndex,
    /// Add (or re-announce) a member: as a learner, then as a voter while there are fewer than
    /// [`MAX_VOTERS`].
    Join(Member),
    /// Register a member that has not started yet, as a learner (`member add`); it becomes a
    /// voter when it starts and joins. Without a name it is "unstarted" (as etcd lists a member
    /// added by peer URL only), under a provisional id ([`Member::id`]) until an agent with
    /// that peer address joins and replaces it.
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
    requests: Requests,
    stats: PeerStats,
}

/// This process's proposer session: numbers its proposals and knows which still await an
/// answer (the lowest of them travels with every proposal as the acknowledgement of the rest).
struct Requests {
    session: Session,
    /// The last number given out, and the numbers awaiting an answer.
    state: Mutex<(u64, BTreeSet<u64>)>,
}

impl Requests {
    /// A session for member `id`, with a number no earlier run of this member drew.
    fn new(id: NodeId) -> Self {
        let mut h = std::hash::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        h.write_u128(now.as_nanos());
        Requests {
            session: Session {
                member: id,
                boot: h.finish(),
            },
            state: Mutex::new((0, BTreeSet::new())),
        }
    }

    /// Wraps `command` with the next request id; the ticket says when it no longer awaits an
    /// answer (dropped: answered, failed or abandoned).
    fn start(&self, command: Command) -> (Proposal, Ticket<'_>) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.0 += 1;
        let seq = st.0;
        st.1.insert(seq);
        let first_pending = st.1.first().copied().unwrap_or(seq);
        let proposal = Proposal {
            command,
            id: Some(RequestId {
                session: self.session,
                seq,
            }),
            first_pending,
        };
        (
            proposal,
            Ticket {
                requests: self,
                seq,
            },
        )
    }
}

/// A proposal awaiting its answer.
struct Ticket<'a> {
    requests: &'a Requests,
    seq: u64,
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        let mut st = self
            .requests
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        st.1.remove(&self.seq);
    }
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
        stats: PeerStats,
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
                requests: Requests::new(id),
                stats,
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

    /// This member's Raft traffic counters (`/v2/stats/*`).
    pub(crate) fn stats(&self) -> &PeerStats {
        &self.inner.stats
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
    /// Applied at most once, however often it is sent (see the module docs).
    pub(crate) async fn propose(&self, cmd: Command) -> Result<Response, Error> {
        let (proposal, _ticket) = self.inner.requests.start(cmd);
        match self.on_leader(LeaderRequest::Propose(proposal)).await? {
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
                // Never a success this member cannot back with a read: the write is committed,
                // but answering it here would break read-your-writes.
                if let Err(e) = wait.applied_index_at_least(Some(index), "write").await {
                    return Err(Error::Raft(format!(
                        "the write was committed at index {index} but this member has not \
                         applied it ({e}): read it back through the leader"
                    )));
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
    /// Answers once this member applied the change too, so that its member list shows it
    /// (read your writes, as `etcdctl member add` expects when it lists the members next).
    pub(crate) async fn add_learner(&self, member: Member) -> Result<(), Error> {
        let id = member.id();
        self.on_leader(LeaderRequest::AddLearner(member)).await?;
        let mut metrics = self.inner.raft.metrics();
        let deadline = Instant::now() + LEADER_DEADLINE;
        while !self.members().iter().any(|m| m.id == id) {
            match tokio::time::timeout_at(deadline, metrics.changed()).await {
                Ok(Ok(())) => {}
                // Committed on the leader: this member shows it once it catches up.
                Ok(Err(_)) | Err(_) => {
                    tracing::debug!(member = %id_hex(id), "the added member is not applied here yet");
                    break;
                }
            }
        }
        Ok(())
    }

    /// Removes a member's record from the machine registry, then the member from the
    /// membership (in this order: the leader may be the member removed). Removing a member
    /// that is already gone succeeds: the leader answers a removal sent again that way.
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
    /// follows leader changes until [`LEADER_DEADLINE`]. A request sent to a leader that fails
    /// in transit, or whose leader is replaced while it holds it, is sent again (a proposal
    /// with the same request id: the state machine applies it at most once).
    pub(crate) async fn on_leader(&self, req: LeaderRequest) -> Result<LeaderReply, Error> {
        let deadline = Instant::now() + LEADER_DEADLINE;
        let mut metrics = self.inner.raft.metrics();
        // Why the last attempt's outcome is unknown (it may have been applied).
        let mut in_doubt: Option<String> = None;
        loop {
            let leader = metrics.borrow_and_update().current_leader;
            // Why this attempt's outcome is unknown, if it is.
            let mut lost: Option<String> = None;
            let attempt = match leader {
                Some(l) if l == self.inner.id => Some(self.handle_local(req.clone()).await),
                Some(l) => match self.leader_addr(l) {
                    Some(addr) => {
                        let remaining = deadline.saturating_duration_since(Instant::now());
                        let call = self.inner.peers.call::<_, Result<LeaderReply, Error>>(
                            &addr,
                            path::LEADER,
                            &req,
                            remaining.max(Duration::from_millis(100)),
                        );
                        tokio::select! {
                            reply = call => match reply {
                                Ok(reply) => Some(reply),
                                // Never sent: look for the leader again and send it there.
                                Err(CallError::Unreachable { .. }) => None,
                                // Failed in transit: it may have reached the leader. Send it
                                // again (the same request id) until the deadline.
                                Err(e) => {
                                    lost = Some(e.to_string());
                                    None
                                }
                            },
                            () = leader_replaced(metrics.clone(), l) => {
                                lost = Some(format!(
                                    "leader {} was replaced while it held the request",
                                    id_hex(l)
                                ));
                                None
                            }
                        }
                    }
                    None => None,
                },
                None => None,
            };
            match attempt {
                Some(Err(Error::NoLeader(_))) | None => {}
                Some(done) => return done,
            }
            if let Some(why) = lost {
                if let LeaderRequest::Propose(p) = &req {
                    tracing::info!(
                        seq = p.id.map_or(0, |id| id.seq),
                        "sending a write to the leader again ({why}); it is applied at most once"
                    );
                }
                in_doubt = Some(why);
            }
            // Wait for the leader to change (or a short while, if the leader is known but did
            // not answer), then try again.
            let now = Instant::now();
            if now >= deadline {
                return Err(match (in_doubt, &req) {
                    (Some(why), LeaderRequest::Propose(_)) => Error::Raft(format!(
                        "{why}; no leader answered within {LEADER_DEADLINE:?}, so the write \
                         may or may not have been applied: read it back before retrying"
                    )),
                    _ => Error::NoLeader(format!("no leader answered within {LEADER_DEADLINE:?}")),
                });
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
            LeaderRequest::Propose(p) => match self.inner.proposer.propose(p).await {
                Ok((r, index)) => Ok(LeaderReply::Applied(Box::new(r), index)),
                Err(ProposeError::NotLeader { .. }) => {
                    Err(Error::NoLeader("leadership moved".into()))
                }
                Err(e @ ProposeError::Stale { .. }) => Err(Error::Raft(e.to_string())),
                Err(ProposeError::Raft(e)) => Err(Error::Raft(e)),
                // Stopping (after a handover, say): the proposal goes to the next leader with
                // the same request id, applied there at most once.
                Err(e @ ProposeError::Stopped(_)) => Err(Error::NoLeader(e.to_string())),
            },
            LeaderRequest::ReadIndex => match raft.ensure_linearizable().await {
                Ok(log_id) => Ok(LeaderReply::ReadIndex(log_id.map_or(0, |l| l.index))),
                Err(e) => Err(Error::NoLeader(e.to_string())),
            },
            LeaderRequest::Join(member) => {
                let id = member.id();
                // An unstarted member registered for this peer address (`member add` without
                // a name): the agent joining there takes its place.
                let placeholders: BTreeSet<NodeId> = self
                    .members()
                    .into_iter()
                    .filter(|m| {
                        m.id != id
                            && m.member.is_unstarted()
                            && m.member.peer_addr == member.peer_addr
                    })
                    .map(|m| m.id)
                    .collect();
                if !placeholders.is_empty() {
                    raft.change_membership(ChangeMembers::RemoveNodes(placeholders), false)
                        .await
                        .map_err(membership_error)?;
                }
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
                let id = member.id();
                let members = self.members();
                if members.iter().any(|m| m.id == id) {
                    return Err(Error::Rejected(format!("member {member} already exists")));
                }
                if let Some(m) = members
                    .iter()
                    .find(|m| m.member.peer_addr == member.peer_addr)
                {
                    return Err(Error::Rejected(format!(
                        "peer URL {} exists: it is member {}",
                        member.peer_addr, m.member
                    )));
                }
                raft.add_learner(id, member, false)
                    .await
                    .map_err(membership_error)?;
                Ok(LeaderReply::Done)
            }
            LeaderRequest::SetNode(member) => {
                let id = member.id();
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
                    // Already gone: a removal sent again after one that went through (the
                    // removed member was the leader and stepped down or stopped before it
                    // answered). The callers check first that the member exists.
                    return Ok(LeaderReply::Done);
                };
                let voters = members.iter().filter(|m| m.voter).count();
                if target.voter && voters == 1 {
                    return Err(Error::Rejected(format!(
                        "member {} is the last voter; add another member first",
                        target.member.name
                    )));
                }
                let change = if target.voter {
                    ChangeMembers::RemoveVoters(BTreeSet::from([id]))
                } else {
                    ChangeMembers::RemoveNodes(BTreeSet::from([id]))
                };
                if let Err(e) = raft.change_membership(change, false).await {
                    // A leader that removes itself may step down (or stop) before the change
                    // answers: once the configuration without it is in the log (the joint one
                    // committed), the removal stands whoever leads next.
                    let listed = raft
                        .metrics()
                        .borrow()
                        .membership_config
                        .membership()
                        .get_node(&id)
                        .is_some();
                    if listed {
                        return Err(membership_error(e));
                    }
                    tracing::debug!(member = %id_hex(id), "removed; the change answered: {e}");
                }
                Ok(LeaderReply::Done)
            }
        }
    }
}

/// A leader's request that this member stand for election at once: the last step of a
/// leadership handover (Raft's `TimeoutNow`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct TimeoutNow {
    /// The leader that asks.
    pub(crate) leader: NodeId,
    /// Its term: a request from an earlier term is refused.
    pub(crate) term: u64,
}

/// What [`Cluster::hand_over`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Handover {
    /// This member did not lead: nothing to hand over.
    NotLeader,
    /// Leadership moved to another member.
    Handed {
        /// The new leader.
        to: NodeId,
        /// From the start of the handover (the proposer held) to a new leader known here.
        took: Duration,
    },
    /// Not handed over: the others elect a leader after an election timeout, as when a leader
    /// fails.
    Skipped(String),
}

impl Cluster {
    /// Hands this member's leadership to another voter before it stops, so that the cluster
    /// has a leader again within a round trip instead of an election timeout (etcd does the
    /// same on SIGTERM).
    ///
    /// openraft 0.9 has no leadership transfer of its own, so this is Raft's (Ongaro's thesis,
    /// 3.10) built from what it offers: the proposer submits nothing new, the voter with the
    /// most of the log (once it has all of it, durably) is asked to stand for election at once
    /// ([`TimeoutNow`], `trigger().elect()` there), and this member grants it its vote and
    /// steps down. The other voters refuse any vote while they hear from a leader (openraft's
    /// leader lease, `election_timeout_max`), so the candidate wins only when it and this
    /// member are a quorum: with at most 3 voters. With 4 or 5 the handover is skipped. The
    /// leader itself grants a vote only once `lease` has passed since it was elected
    /// (`leading_since`), so a young leader waits for that first.
    pub(crate) async fn hand_over(
        &self,
        leading_since: Instant,
        lease: Duration,
        deadline: Duration,
    ) -> Handover {
        let started = Instant::now();
        let deadline = started + deadline;
        let me = self.inner.id;
        let mut metrics = self.inner.raft.metrics();
        let (term, voters) = {
            let m = metrics.borrow_and_update();
            if m.running_state.is_err() || m.current_leader != Some(me) {
                return Handover::NotLeader;
            }
            let voters: BTreeSet<NodeId> = m
                .membership_config
                .membership()
                .voter_ids()
                .filter(|v| *v != me)
                .collect();
            (m.current_term, voters)
        };
        let members = voters.len() + 1;
        let quorum = members / 2 + 1;
        if voters.is_empty() {
            return Handover::Skipped("this member is the only voter".into());
        }
        if quorum > 2 {
            return Handover::Skipped(format!(
                "with {} voters a candidate needs {quorum} votes, and the others refuse theirs \
                 while the leader's lease lasts",
                members
            ));
        }
        let granting = leading_since + lease + Duration::from_millis(50);
        if granting > deadline {
            return Handover::Skipped(format!(
                "elected {:?} ago: it could not grant a vote before the deadline",
                leading_since.elapsed()
            ));
        }
        tokio::time::sleep_until(granting).await;
        let _hold = self.inner.proposer.hold();
        let held = Instant::now();
        // The voter with all of this member's log, durably (a follower acknowledges only
        // durable entries).
        let target = loop {
            {
                let m = metrics.borrow_and_update();
                if m.current_leader != Some(me) {
                    return Handover::Skipped("leadership moved meanwhile".into());
                }
                let last = m.last_log_index;
                let best = m
                    .replication
                    .iter()
                    .flatten()
                    .filter(|(id, _)| voters.contains(id))
                    .max_by_key(|(_, matched)| matched.map(|l| l.index));
                if let Some((id, matched)) = best
                    && matched.map(|l| l.index) >= last
                {
                    break *id;
                }
            }
            if tokio::time::timeout_at(deadline, metrics.changed())
                .await
                .is_err()
            {
                return Handover::Skipped("no voter caught up with the log in time".into());
            }
        };
        let Some(addr) = self.leader_addr(target) else {
            return Handover::Skipped(format!("member {} has no peer address", id_hex(target)));
        };
        let ask = TimeoutNow { leader: me, term };
        let remaining = deadline.saturating_duration_since(Instant::now());
        match self
            .inner
            .peers
            .call::<_, Result<(), Error>>(&addr, path::TIMEOUT_NOW, &ask, remaining)
            .await
        {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Handover::Skipped(format!("{} refused: {e}", id_hex(target))),
            Err(e) => return Handover::Skipped(e.to_string()),
        }
        loop {
            if let Some(l) = metrics.borrow_and_update().current_leader
                && l != me
            {
                return Handover::Handed {
                    to: l,
                    took: held.elapsed(),
                };
            }
            if tokio::time::timeout_at(deadline, metrics.changed())
                .await
                .is_err()
            {
                return Handover::Skipped(format!(
                    "{} did not win its election in time",
                    id_hex(target)
                ));
            }
        }
    }

    /// On a voter, [`TimeoutNow`] from its leader: stand for election now.
    pub(crate) async fn timeout_now(&self, req: TimeoutNow) -> Result<(), Error> {
        {
            let m = self.inner.raft.metrics();
            let m = m.borrow();
            if m.current_leader != Some(req.leader) || m.current_term != req.term {
                return Err(Error::Rejected(format!(
                    "member {} does not lead this member in term {}",
                    id_hex(req.leader),
                    req.term
                )));
            }
            if !m
                .membership_config
                .membership()
                .voter_ids()
                .any(|v| v == self.inner.id)
            {
                return Err(Error::Rejected(format!(
                    "member {} is not a voter",
                    self.inner.me.name
                )));
            }
        }
        tracing::info!(
            leader = %id_hex(req.leader),
            "the leader hands its leadership over: standing for election"
        );
        self.inner
            .raft
            .trigger()
            .elect()
            .await
            .map_err(|e| Error::Raft(e.to_string()))
    }
}

/// How often a request held by the leader checks that the leader is still the same. The
/// metrics change on every write: waking on each change would cost every forwarded write a
/// wake-up per change; an election takes longer than this anyway.
const LEADER_CHECK: Duration = Duration::from_millis(100);

/// Returns once this member knows a leader other than `leader` (or none): a request held by
/// `leader` will not be answered.
async fn leader_replaced(
    metrics: tokio::sync::watch::Receiver<openraft::RaftMetrics<NodeId, Member>>,
    leader: NodeId,
) {
    let mut tick = tokio::time::interval(LEADER_CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if metrics.borrow().current_leader != Some(leader) {
            return;
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
            // An unstarted member's provisional id is not the agent's that will start there.
            members
                .iter()
                .filter(|x| !x.voter && !x.member.is_unstarted())
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
    let mut members = cluster.hub().watch_members();
    let mut was_member = false;
    loop {
        members.borrow_and_update();
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
            changed = members.changed() => if changed.is_err() { return },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expire() -> Command {
        Command::Expire { now_ms: 0 }
    }

    fn seq(p: &Proposal) -> u64 {
        p.id.map_or(0, |id| id.seq)
    }

    #[test]
    fn proposals_carry_the_lowest_number_still_awaiting_an_answer() {
        let requests = Requests::new(7);
        let (p1, t1) = requests.start(expire());
        let (p2, t2) = requests.start(expire());
        assert_eq!((seq(&p1), p1.first_pending), (1, 1));
        assert_eq!((seq(&p2), p2.first_pending), (2, 1));
        drop(t1);
        let (p3, _t3) = requests.start(expire());
        assert_eq!((seq(&p3), p3.first_pending), (3, 2));
        drop(t2);
        let (p4, _t4) = requests.start(expire());
        assert_eq!((seq(&p4), p4.first_pending), (4, 3));
        assert_eq!(p4.id.map(|id| id.session.member), Some(7));
        // Each run of a member is a session of its own.
        assert_ne!(Requests::new(7).session, requests.session);
    }
}
