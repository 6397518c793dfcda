//! Proposals applied at most once: the responses of recent requests, by proposer session, so
//! that a proposal sent again (after a failure in transit or a leader change) returns what the
//! first copy produced instead of applying twice.
//!
//! # Design
//!
//! Every process that proposes is a *session* ([`Session`]: its member id and a random number
//! drawn at start) and numbers its proposals (`seq`). A [`Proposal`] carries its
//! [`RequestId`] and the lowest `seq` its proposer still waits for an answer to
//! (`first_pending`), as in the client sessions of Ongaro's Raft dissertation (§6.3). The state
//! machine keeps the response of every applied `seq` at or above `first_pending`; the proposer
//! moving `first_pending` past a `seq` is its acknowledgement that the response is no longer
//! needed. A copy whose `seq` is below `first_pending` is never applied ([`Outcome::Stale`]):
//! its proposer stopped waiting for it, and it may have been applied already.
//!
//! Everything is decided from the log alone (no clock): sessions age by the count of proposals
//! applied, and the table is part of [`crate::State`] (so of every snapshot).
//!
//! # Current limitations
//!
//! - At most [`MAX_SESSIONS`] sessions are remembered; the one unused longest is forgotten
//!   first (a process that restarted left its old session behind). A copy from a forgotten
//!   session would be applied again; it takes `MAX_SESSIONS` other sessions proposing after it
//!   went quiet.
//! - At most [`MAX_RESPONSES`] responses per session: past that the oldest is forgotten and
//!   `first_pending` moves past it, so a late copy of it is refused rather than applied twice.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{Command, Response};

/// The most sessions remembered: one per run of each member that proposes (every machine
/// does), so well above the machines of a cluster.
pub const MAX_SESSIONS: usize = 4096;
/// The most responses remembered per session.
pub const MAX_RESPONSES: usize = 8192;

/// One proposing process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Session {
    /// The proposing member's node id.
    pub member: u64,
    /// A random number the process drew when it started.
    pub boot: u64,
}

/// Which proposal of which session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RequestId {
    /// The proposer.
    pub session: Session,
    /// The proposal's number within the session (from 1, increasing).
    pub seq: u64,
}

/// A command as it travels the Raft log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    /// What to apply.
    pub command: Command,
    /// Who proposed it; `None`: applied every time it is in the log (no retries).
    pub id: Option<RequestId>,
    /// The lowest `seq` of the session still waiting for an answer when this was sent: the
    /// responses of lower ones are forgotten, and a later copy of one is refused.
    pub first_pending: u64,
}

impl Proposal {
    /// A proposal without a request id (applied each time it is in the log).
    pub fn anonymous(command: Command) -> Self {
        Proposal {
            command,
            id: None,
            first_pending: 0,
        }
    }
}

/// What applying a [`Proposal`] did.
// Lives only until the proposer answers; boxing the response buys nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Applied now; the response.
    Applied(Response),
    /// Applied before (an earlier copy of the same request): the response it had then.
    Replayed(Response),
    /// Not applied: its proposer no longer waits for it (acknowledged or given up), so it may
    /// have been applied before and its response forgotten.
    Stale,
}

impl Outcome {
    /// The response, applied now or before.
    pub fn response(self) -> Option<Response> {
        match self {
            Outcome::Applied(r) | Outcome::Replayed(r) => Some(r),
            Outcome::Stale => None,
        }
    }
}

/// What one session left behind.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Record {
    /// Copies of a lower `seq` are refused.
    first_pending: u64,
    /// [`Sessions::clock`] when the session last proposed.
    last_used: u64,
    /// The responses of applied requests at or above `first_pending`, by `seq`.
    responses: BTreeMap<u64, Response>,
}

/// The responses of recent requests, by session.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sessions {
    by_session: BTreeMap<Session, Record>,
    /// Proposals with an id applied so far: the clock sessions age by.
    clock: u64,
}

/// Whether to apply a request, decided before applying it.
// Lives for one apply; boxing the response buys nothing.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Admission {
    /// Apply it, then [`Sessions::record`] the response.
    Fresh,
    /// Seen before: answer with this.
    Seen(Response),
    /// Refuse it.
    Stale,
}

impl Sessions {
    /// How many sessions are remembered.
    pub fn len(&self) -> usize {
        self.by_session.len()
    }

    /// Whether no session is remembered.
    pub fn is_empty(&self) -> bool {
        self.by_session.is_empty()
    }

    /// How many responses are remembered in all.
    pub fn responses(&self) -> usize {
        self.by_session.values().map(|r| r.responses.len()).sum()
    }

    /// Takes in the acknowledgement of `id`'s proposal and says whether to apply it.
    pub(crate) fn admit(&mut self, id: RequestId, first_pending: u64) -> Admission {
        self.clock += 1;
        if !self.by_session.contains_key(&id.session) && self.by_session.len() >= MAX_SESSIONS {
            let oldest = self
                .by_session
                .iter()
                .min_by_key(|(s, r)| (r.last_used, **s))
                .map(|(s, _)| *s);
            if let Some(s) = oldest {
                self.by_session.remove(&s);
            }
        }
        let record = self.by_session.entry(id.session).or_default();
        record.last_used = self.clock;
        if first_pending > record.first_pending {
            record.first_pending = first_pending;
            // Each response is dropped once: amortized O(log n) per request.
            while let Some(entry) = record.responses.first_entry()
                && *entry.key() < first_pending
            {
                entry.remove();
            }
        }
        if id.seq < record.first_pending {
            return Admission::Stale;
        }
        match record.responses.get(&id.seq) {
            Some(r) => Admission::Seen(r.clone()),
            None => Admission::Fresh,
        }
    }

    /// Remembers the response of `id`, admitted as fresh.
    pub(crate) fn record(&mut self, id: RequestId, response: &Response) {
        let Some(record) = self.by_session.get_mut(&id.session) else {
            return;
        };
        record.responses.insert(id.seq, response.clone());
        while record.responses.len() > MAX_RESPONSES {
            if let Some((seq, _)) = record.responses.pop_first() {
                record.first_pending = record.first_pending.max(seq + 1);
            }
        }
    }
}
