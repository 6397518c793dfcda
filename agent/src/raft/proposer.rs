//! Batches proposals: commands that arrive while earlier batches are being committed ride
//! together in the next log entry, so one fsync and one replication round trip serve many
//! clients and throughput grows with their number.
//!
//! A proposal that finds nothing queued and nothing in flight (a lone client) skips the
//! batching task: it is submitted from the caller's task and answered from openraft's reply
//! directly, two task hops fewer on the path that decides a single client's latency.
//!
//! A leader handing its leadership over ([`Proposer::hold`]) submits nothing new until the
//! handover is over: the candidate must have the leader's whole log to win its vote.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use flotilla_state::Response;
use flotilla_state::sessions::{Outcome, Proposal};
use openraft::error::{ClientWriteError, RaftError};
use openraft::raft::ClientWriteResponse;
use serde::{Deserialize, Serialize};
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::{Member, NodeId, Raft, TypeConfig};

/// The most commands in one log entry.
const MAX_BATCH: usize = 512;
/// Batches submitted and not yet committed at once (pipelining).
const IN_FLIGHT: usize = 8;

/// Why a proposal was not applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub(crate) enum ProposeError {
    /// This member is not the leader; the leader, if one is known.
    #[error("not the leader (leader: {})", leader.as_ref().map_or("unknown".to_string(), |(_, m)| m.to_string()))]
    NotLeader {
        /// The leader as this member knows it.
        leader: Option<(NodeId, Member)>,
    },
    /// Raft refused the write.
    #[error("raft failed: {0}")]
    Raft(String),
    /// This member's proposer or Raft stopped (a shutdown, or a fatal storage error) before
    /// the proposal was answered: it may or may not commit through another leader.
    #[error("this member stopped: {0}")]
    Stopped(String),
    /// The state machine refused the proposal: its proposer had stopped waiting for it (see
    /// `flotilla_state::sessions`).
    #[error(
        "the proposal at log index {index} came too late (its proposer no longer waits for it): not applied"
    )]
    Stale {
        /// The log entry that carried it.
        index: u64,
    },
}

/// A proposal and where its response and log index go.
type Pending = (
    Proposal,
    oneshot::Sender<Result<(Response, u64), ProposeError>>,
);

/// The handle: send a command, get its response once it is committed and applied.
#[derive(Clone)]
pub(crate) struct Proposer {
    tx: mpsc::Sender<Pending>,
    /// Holds in force; while above zero no batch goes to Raft (they wait in the queue).
    held: Arc<watch::Sender<usize>>,
    raft: Raft,
    /// Batches submitted and not yet answered, by the task or by a caller directly.
    in_flight: Arc<AtomicUsize>,
}

/// While alive, the proposer submits nothing to Raft (see [`Proposer::hold`]).
pub(crate) struct Hold {
    held: Arc<watch::Sender<usize>>,
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.held.send_modify(|n| *n -= 1);
    }
}

impl Proposer {
    /// Starts the batching task on `raft`; it ends with `cancel`.
    pub(crate) fn spawn(
        raft: Raft,
        cancel: CancellationToken,
        tasks: &mut tokio::task::JoinSet<()>,
    ) -> Self {
        let (tx, rx) = mpsc::channel(8 * MAX_BATCH);
        let (held, held_rx) = watch::channel(0);
        let in_flight = Arc::new(AtomicUsize::new(0));
        tasks.spawn(run(raft.clone(), rx, held_rx, in_flight.clone(), cancel));
        Proposer {
            tx,
            held: Arc::new(held),
            raft,
            in_flight,
        }
    }

    /// Stops submitting proposals to Raft until the returned [`Hold`] is dropped: they queue
    /// (and are answered once released, by this member's Raft or with `NotLeader`). Batches
    /// already submitted go on.
    pub(crate) fn hold(&self) -> Hold {
        self.held.send_modify(|n| *n += 1);
        Hold {
            held: self.held.clone(),
        }
    }

    /// Proposes `p` through this member's Raft (which must be the leader); returns its
    /// response (of this copy, or of an earlier one with the same request id) and the index of
    /// the log entry that carried it.
    pub(crate) async fn propose(&self, p: Proposal) -> Result<(Response, u64), ProposeError> {
        // Alone: nothing to batch with, nothing to wait behind.
        if self.tx.capacity() == self.tx.max_capacity()
            && *self.held.borrow() == 0
            && self
                .in_flight
                .compare_exchange(0, 1, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            let _in_flight = InFlight(self.in_flight.clone());
            let result = match self.raft.client_write_ff(vec![p]).await {
                Ok(reply) => written(reply.await),
                Err(e) => Err(ProposeError::Stopped(e.to_string())),
            };
            return result.and_then(|(outcomes, index)| {
                let outcome = outcomes.into_iter().next().ok_or_else(|| {
                    ProposeError::Raft(format!("no outcome for the proposal at index {index}"))
                })?;
                outcome_answer(outcome, index)
            });
        }
        let (tx, rx) = oneshot::channel();
        self.tx
            .send((p, tx))
            .await
            .map_err(|_| ProposeError::Stopped("the proposer stopped".into()))?;
        rx.await
            .map_err(|_| ProposeError::Stopped("the proposer stopped".into()))?
    }
}

/// Counts a batch in flight until dropped.
struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

async fn run(
    raft: Raft,
    mut rx: mpsc::Receiver<Pending>,
    mut held: watch::Receiver<usize>,
    in_flight: Arc<AtomicUsize>,
    cancel: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    loop {
        let permit = tokio::select! {
            _ = cancel.cancelled() => return,
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
        };
        let first = tokio::select! {
            _ = cancel.cancelled() => return,
            p = rx.recv() => match p { Some(p) => p, None => return },
        };
        tokio::select! {
            _ = cancel.cancelled() => return,
            r = held.wait_for(|n| *n == 0) => if r.is_err() { return },
        }
        let mut cmds = Vec::with_capacity(16);
        let mut waiters = Vec::with_capacity(16);
        cmds.push(first.0);
        waiters.push(first.1);
        while cmds.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok((c, w)) => {
                    cmds.push(c);
                    waiters.push(w);
                }
                Err(_) => break,
            }
        }
        in_flight.fetch_add(1, Ordering::AcqRel);
        let counted = InFlight(in_flight.clone());
        match raft.client_write_ff(cmds).await {
            Ok(reply) => {
                tokio::spawn(async move {
                    let _counted = counted;
                    let result = written(reply.await);
                    drop(permit);
                    answer(waiters, result);
                });
            }
            Err(e) => {
                drop(counted);
                answer(waiters, Err(ProposeError::Stopped(e.to_string())));
            }
        }
    }
}

type Waiter = oneshot::Sender<Result<(Response, u64), ProposeError>>;

fn answer(waiters: Vec<Waiter>, result: Result<(Vec<Outcome>, u64), ProposeError>) {
    match result {
        Ok((outcomes, index)) => {
            for (w, o) in waiters.into_iter().zip(outcomes) {
                let _ = w.send(outcome_answer(o, index));
            }
        }
        Err(e) => {
            for w in waiters {
                let _ = w.send(Err(e.clone()));
            }
        }
    }
}

/// What openraft's reply to a submitted batch says: its outcomes and log index, or why not.
fn written<E>(
    reply: Result<Result<ClientWriteResponse<TypeConfig>, ClientWriteError<NodeId, Member>>, E>,
) -> Result<(Vec<Outcome>, u64), ProposeError> {
    match reply {
        Ok(Ok(resp)) => Ok((resp.data, resp.log_id.index)),
        Ok(Err(e)) => Err(write_error(RaftError::APIError(e))),
        Err(_) => Err(ProposeError::Stopped("raft dropped the proposal".into())),
    }
}

fn outcome_answer(o: Outcome, index: u64) -> Result<(Response, u64), ProposeError> {
    match o {
        Outcome::Applied(r) | Outcome::Replayed(r) => Ok((r, index)),
        Outcome::Stale => Err(ProposeError::Stale { index }),
    }
}

/// Maps openraft's write error to [`ProposeError`].
pub(crate) fn write_error(e: RaftError<NodeId, ClientWriteError<NodeId, Member>>) -> ProposeError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => ProposeError::NotLeader {
            leader: f.leader_id.zip(f.leader_node),
        },
        RaftError::Fatal(f) => ProposeError::Stopped(f.to_string()),
        other => ProposeError::Raft(other.to_string()),
    }
}
