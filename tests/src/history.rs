//! A concurrent history of key-value operations, recorded by many clients at once, for the
//! linearizability checker ([`crate::linearizability`]).
//!
//! # Design
//!
//! Each operation is recorded twice: when it is invoked ([`History::invoke`], which returns a
//! [`Pending`]) and when its answer is in ([`History::complete`]). Times are nanoseconds since the
//! history began, read from one monotonic clock ([`Instant`]), so "A returned before B was
//! invoked" means the same thing for every client. A client has at most one operation in
//! flight: its [`Pending`] is consumed by `complete`.
//!
//! An answer is one of four [`Outcome`]s, and the difference matters:
//!
//! - [`Outcome::Ok`]: it took effect (a read carries the value it saw);
//! - [`Outcome::Failed`]: it definitely took no effect, and the server said why (etcd's error
//!   codes 100 "key not found" and 101 "compare failed" of a compare-and-swap);
//! - [`Outcome::Indeterminate`]: it may or may not have taken effect, now or at any later time
//!   (a timeout, a connection lost after the request was sent, a 5xx or etcd error 300): the
//!   checker treats such a write as possibly applied at any point after its invocation, and a
//!   read of this kind says nothing;
//! - [`Outcome::NotSent`]: the request never left the client (the connection could not be
//!   made): no effect, nothing observed.
//!
//! # Current limitations
//!
//! - Only one register per key and three operations (get, set, compare-and-swap on the value):
//!   what the fault tests use. Deletes, directories and index-based compares are not modelled.

use std::fmt;
use std::sync::Mutex;
use std::time::Instant;

/// What an operation asked for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Input {
    /// A linearizable read (`GET ?quorum=true`).
    Get,
    /// `PUT value=V`.
    Set {
        /// The value written.
        value: String,
    },
    /// `PUT value=V&prevValue=E`: compare-and-swap.
    Cas {
        /// The value the key must hold.
        expect: String,
        /// The value written if it does.
        value: String,
    },
}

/// How an operation ended.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// It took effect. A read carries the value it saw (`None`: the key did not exist); a write
    /// carries nothing.
    Ok(Option<String>),
    /// It definitely took no effect: the server's etcd error code (100 key not found, 101
    /// compare failed).
    Failed(u16),
    /// It may or may not have taken effect (timeout, connection lost, a server error): why.
    Indeterminate(String),
    /// It was never sent (no connection): why.
    NotSent(String),
}

/// One operation of one client, complete.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Operation {
    /// The client that issued it.
    pub client: usize,
    /// The key it was about.
    pub key: String,
    /// What it asked for.
    pub input: Input,
    /// When it was invoked: nanoseconds since the history began.
    pub invoke: u64,
    /// When its answer came: nanoseconds since the history began.
    pub ret: u64,
    /// The answer.
    pub outcome: Outcome,
}

impl Operation {
    /// Whether it may change the key's value.
    pub fn is_write(&self) -> bool {
        !matches!(self.input, Input::Get)
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = |ns: u64| ns as f64 / 1e9;
        write!(
            f,
            "client {} [{:.6}s..{:.6}s] {} ",
            self.client,
            secs(self.invoke),
            secs(self.ret),
            self.key
        )?;
        match &self.input {
            Input::Get => write!(f, "get")?,
            Input::Set { value } => write!(f, "set {value}")?,
            Input::Cas { expect, value } => write!(f, "cas {expect} -> {value}")?,
        }
        match &self.outcome {
            Outcome::Ok(None) if self.is_write() => write!(f, " => ok"),
            Outcome::Ok(None) => write!(f, " => (no such key)"),
            Outcome::Ok(Some(v)) => write!(f, " => {v}"),
            Outcome::Failed(code) => write!(f, " => failed (etcd error {code})"),
            Outcome::Indeterminate(why) => write!(f, " => indeterminate ({why})"),
            Outcome::NotSent(why) => write!(f, " => not sent ({why})"),
        }
    }
}

/// A history that is not well formed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HistoryError {
    /// An operation returned before it was invoked.
    #[error(
        "operation of client {client} on {key} returns at {ret} ns, before its invocation at {invoke} ns"
    )]
    Backwards {
        /// The client.
        client: usize,
        /// The key.
        key: String,
        /// Its invocation.
        invoke: u64,
        /// Its return.
        ret: u64,
    },
    /// A client had two operations in flight at once.
    #[error(
        "client {client} invoked an operation at {second} ns while its operation invoked at {first} ns was in flight until {until} ns"
    )]
    Overlap {
        /// The client.
        client: usize,
        /// The earlier operation's invocation.
        first: u64,
        /// The earlier operation's return.
        until: u64,
        /// The later operation's invocation.
        second: u64,
    },
}

/// An operation invoked and not yet complete.
#[derive(Debug)]
#[must_use = "complete the operation with History::complete"]
pub struct Pending {
    client: usize,
    key: String,
    input: Input,
    invoke: u64,
}

/// The history being recorded; shared by reference among the client threads.
#[derive(Debug)]
pub struct History {
    start: Instant,
    ops: Mutex<Vec<Operation>>,
}

impl Default for History {
    fn default() -> Self {
        History::new()
    }
}

impl History {
    /// An empty history whose clock starts now.
    pub fn new() -> History {
        History {
            start: Instant::now(),
            ops: Mutex::new(Vec::new()),
        }
    }

    /// Nanoseconds since the history began.
    pub fn now(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Records that `client` invokes `input` on `key` now.
    pub fn invoke(&self, client: usize, key: &str, input: Input) -> Pending {
        Pending {
            client,
            key: key.to_owned(),
            input,
            invoke: self.now(),
        }
    }

    /// Records the answer of `pending`, now; returns the operation recorded.
    pub fn complete(&self, pending: Pending, outcome: Outcome) -> Operation {
        let op = Operation {
            client: pending.client,
            key: pending.key,
            input: pending.input,
            invoke: pending.invoke,
            ret: self.now().max(pending.invoke),
            outcome,
        };
        self.ops
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(op.clone());
        op
    }

    /// Every complete operation, in order of invocation.
    pub fn operations(&self) -> Vec<Operation> {
        let mut ops = self.ops.lock().unwrap_or_else(|p| p.into_inner()).clone();
        ops.sort_by_key(|o| (o.invoke, o.ret, o.client));
        ops
    }

    /// How many operations ended how.
    pub fn tally(&self) -> Tally {
        Tally::of(&self.operations())
    }
}

/// Checks that `ops` is a well-formed history: every operation returns after its invocation and
/// no client has two operations in flight at once.
pub fn validate(ops: &[Operation]) -> Result<(), HistoryError> {
    let mut by_client: Vec<&Operation> = ops.iter().collect();
    by_client.sort_by_key(|o| (o.client, o.invoke));
    for o in &by_client {
        if o.ret < o.invoke {
            return Err(HistoryError::Backwards {
                client: o.client,
                key: o.key.clone(),
                invoke: o.invoke,
                ret: o.ret,
            });
        }
    }
    for pair in by_client.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        if a.client == b.client && b.invoke < a.ret {
            return Err(HistoryError::Overlap {
                client: a.client,
                first: a.invoke,
                until: a.ret,
                second: b.invoke,
            });
        }
    }
    Ok(())
}

/// Counts of operations by outcome, reads and writes apart.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Reads that returned a value (or "no such key").
    pub reads_ok: usize,
    /// Reads that timed out or failed.
    pub reads_indeterminate: usize,
    /// Writes that took effect.
    pub writes_ok: usize,
    /// Writes that definitely took no effect (compare failed, key not found).
    pub writes_failed: usize,
    /// Writes that may or may not have taken effect.
    pub writes_indeterminate: usize,
    /// Operations never sent.
    pub not_sent: usize,
}

impl Tally {
    /// Counts `ops`.
    pub fn of(ops: &[Operation]) -> Tally {
        let mut t = Tally::default();
        for o in ops {
            match (&o.outcome, o.is_write()) {
                (Outcome::NotSent(_), _) => t.not_sent += 1,
                (Outcome::Ok(_), false) => t.reads_ok += 1,
                (_, false) => t.reads_indeterminate += 1,
                (Outcome::Ok(_), true) => t.writes_ok += 1,
                (Outcome::Failed(_), true) => t.writes_failed += 1,
                (Outcome::Indeterminate(_), true) => t.writes_indeterminate += 1,
            }
        }
        t
    }

    /// Every operation counted.
    pub fn total(&self) -> usize {
        self.reads_ok
            + self.reads_indeterminate
            + self.writes_ok
            + self.writes_failed
            + self.writes_indeterminate
            + self.not_sent
    }
}

impl fmt::Display for Tally {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} operations: ok {} (reads {}, writes {}), failed {}, indeterminate {} (reads {}, writes {}), not sent {}",
            self.total(),
            self.reads_ok + self.writes_ok,
            self.reads_ok,
            self.writes_ok,
            self.writes_failed,
            self.reads_indeterminate + self.writes_indeterminate,
            self.reads_indeterminate,
            self.writes_indeterminate,
            self.not_sent
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_come_back_in_order_of_invocation_with_their_times() {
        let h = History::new();
        let a = h.invoke(1, "/k", Input::Get);
        let b = h.invoke(
            2,
            "/k",
            Input::Set {
                value: "x".to_owned(),
            },
        );
        let b = h.complete(b, Outcome::Ok(None));
        let a = h.complete(a, Outcome::Ok(Some("x".to_owned())));
        assert!(a.invoke <= b.invoke && b.ret <= a.ret);
        let ops = h.operations();
        assert_eq!(ops, vec![a, b]);
        validate(&ops).unwrap();
        let t = h.tally();
        assert_eq!((t.reads_ok, t.writes_ok, t.total()), (1, 1, 2));
    }

    #[test]
    fn a_client_with_two_operations_in_flight_is_refused() {
        let op = |invoke, ret| Operation {
            client: 3,
            key: "/k".to_owned(),
            input: Input::Get,
            invoke,
            ret,
            outcome: Outcome::Ok(None),
        };
        assert_eq!(
            validate(&[op(0, 10), op(5, 20)]).unwrap_err().to_string(),
            "client 3 invoked an operation at 5 ns while its operation invoked at 0 ns was in flight until 10 ns"
        );
        assert!(validate(&[op(10, 5)]).is_err());
        validate(&[op(0, 10), op(10, 20)]).unwrap();
    }

    #[test]
    fn an_operation_prints_what_it_did_and_how_it_ended() {
        let op = Operation {
            client: 2,
            key: "/k".to_owned(),
            input: Input::Cas {
                expect: "a".to_owned(),
                value: "b".to_owned(),
            },
            invoke: 1_500_000_000,
            ret: 1_750_000_000,
            outcome: Outcome::Failed(101),
        };
        assert_eq!(
            op.to_string(),
            "client 2 [1.500000s..1.750000s] /k cas a -> b => failed (etcd error 101)"
        );
    }
}
