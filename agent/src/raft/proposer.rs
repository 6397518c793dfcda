//! Batches proposals: commands that arrive while earlier batches are being committed ride
//! together in the next log entry, so one fsync and one replication round trip serve many
//! clients and throughput grows with their number.

use std::sync::Arc;

use flotilla_state::Response;
use flotilla_state::sessions::{Outcome, Proposal};
use openraft::error::{ClientWriteError, RaftError};
use serde::{Deserialize, Serialize};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::{Member, NodeId, Raft};

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
    /// Raft failed or is shutting down.
    #[error("raft failed: {0}")]
    Raft(String),
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
}

impl Proposer {
    /// Starts the batching task on `raft`; it ends with `cancel`.
    pub(crate) fn spawn(
        raft: Raft,
        cancel: CancellationToken,
        tasks: &mut tokio::task::JoinSet<()>,
    ) -> Self {
        let (tx, rx) = mpsc::channel(8 * MAX_BATCH);
        tasks.spawn(run(raft, rx, cancel));
        Proposer { tx }
    }

    /// Proposes `p` through this member's Raft (which must be the leader); returns its
    /// response (of this copy, or of an earlier one with the same request id) and the index of
    /// the log entry that carried it.
    pub(crate) async fn propose(&self, p: Proposal) -> Result<(Response, u64), ProposeError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send((p, tx))
            .await
            .map_err(|_| ProposeError::Raft("the proposer stopped".into()))?;
        rx.await
            .map_err(|_| ProposeError::Raft("the proposer stopped".into()))?
    }
}

async fn run(raft: Raft, mut rx: mpsc::Receiver<Pending>, cancel: CancellationToken) {
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
        match raft.client_write_ff(cmds).await {
            Ok(reply) => {
                tokio::spawn(async move {
                    let result = match reply.await {
                        Ok(Ok(resp)) => Ok((resp.data, resp.log_id.index)),
                        Ok(Err(e)) => Err(write_error(RaftError::APIError(e))),
                        Err(_) => Err(ProposeError::Raft("raft dropped the proposal".into())),
                    };
                    drop(permit);
                    answer(waiters, result);
                });
            }
            Err(e) => answer(waiters, Err(ProposeError::Raft(e.to_string()))),
        }
    }
}

type Waiter = oneshot::Sender<Result<(Response, u64), ProposeError>>;

fn answer(waiters: Vec<Waiter>, result: Result<(Vec<Outcome>, u64), ProposeError>) {
    match result {
        Ok((outcomes, index)) => {
            for (w, o) in waiters.into_iter().zip(outcomes) {
                let answer = match o {
                    Outcome::Applied(r) | Outcome::Replayed(r) => Ok((r, index)),
                    Outcome::Stale => Err(ProposeError::Stale { index }),
                };
                let _ = w.send(answer);
            }
        }
        Err(e) => {
            for w in waiters {
                let _ = w.send(Err(e.clone()));
            }
        }
    }
}

/// Maps openraft's write error to [`ProposeError`].
pub(crate) fn write_error(e: RaftError<NodeId, ClientWriteError<NodeId, Member>>) -> ProposeError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => ProposeError::NotLeader {
            leader: f.leader_id.zip(f.leader_node),
        },
        other => ProposeError::Raft(other.to_string()),
    }
}
