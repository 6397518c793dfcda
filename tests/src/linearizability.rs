//! A linearizability checker for key-value histories: porcupine's algorithm (Wing & Gong's
//! search with Lowe's memoization), one register per key.
//!
//! # Background
//!
//! A history is linearizable when every operation can be given one instant between its
//! invocation and its return such that, taken in the order of those instants, the operations are
//! a legal sequential run of the model: here, one register per key with get, set and etcd v2's
//! compare-and-swap on the value (`prevValue`). Linearizability is compositional (Herlihy &
//! Wing's locality; porcupine's P-compositionality): the history is linearizable iff the
//! sub-history of every key is, so each key is checked alone.
//!
//! # Design
//!
//! [`check`] splits the history by key and runs porcupine's `checkSingle` on each: the calls and
//! returns, sorted by time, form a doubly linked list; a depth-first search picks the first call
//! in the list that the model accepts in the current state, lifts it (and its return) out of the
//! list and goes on; reaching a return whose call is not yet linearized means the choices so far
//! cannot work, so the last choice is undone (the stack of calls) and the next call is tried.
//! Every (set of linearized operations, state) pair reached is cached and never explored twice.
//!
//! The outcomes of [`crate::history`] enter the model as follows:
//!
//! - a read that did not return a value, and any operation never sent, are left out: they had no
//!   effect and observed nothing;
//! - a definitely failed compare-and-swap had no effect but observed something: with error 101
//!   the key held another value, with error 100 it did not exist;
//! - an indeterminate write is given an infinite return time (porcupine's way for Jepsen's
//!   `:info` operations): it may take effect at any point after its invocation, and "it never
//!   took effect" is the same as "it took effect after every other operation", where nothing
//!   observes it.
//!
//! Indeterminate writes are what make the search wide (each may be placed anywhere after its
//! invocation), so two reductions come first, both sound: an indeterminate write whose value
//! nobody observed (no read returned it, no compare expected it) and that no failed compare
//! follows is dropped (it changes nothing either way); and if the history without *every*
//! unobserved indeterminate write is linearizable, so is the whole (they go last). Only when
//! that fails is the search run with them.
//!
//! When a key's history is not linearizable, [`Violation`] carries a minimal explanation: a
//! subset of its operations that is still not linearizable but becomes so when any one of them is
//! removed (found by delta debugging: remove chunks, halving their size, while the rest stays
//! non-linearizable).
//!
//! # Current limitations
//!
//! - Each key starts absent; deletes, TTLs, directories and index compares are not modelled.
//! - The search is exponential in the worst case (many concurrent indeterminate writes): it
//!   gives up with [`CheckError::TooManyStates`] past a bound rather than run for ever.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

use crate::history::{Input, Operation, Outcome};

/// The default bound on the cached search states of one key.
pub const MAX_STATES: usize = 4_000_000;
/// The most linearizability checks spent on minimizing one violation.
const MAX_MINIMIZE_CHECKS: usize = 4_000;
/// No entry.
const NIL: usize = usize::MAX;

/// Why a history could not be checked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckError {
    /// The search outgrew its bound.
    #[error(
        "key {key}: gave up after {states} search states over {ops} operations; the history has too many concurrent indeterminate writes to decide: use shorter client timeouts or more keys"
    )]
    TooManyStates {
        /// The key whose history could not be decided.
        key: String,
        /// Its operations (as checked).
        ops: usize,
        /// The states explored.
        states: usize,
    },
}

/// A key whose history is not linearizable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The key.
    pub key: String,
    /// A non-linearizable subset of the key's operations, in order of invocation.
    pub ops: Vec<Operation>,
    /// Whether removing any one of `ops` makes them linearizable (false when minimizing ran out
    /// of its budget: `ops` is then only smaller than the key's history).
    pub minimal: bool,
    /// How many operations of the key were checked.
    pub key_ops: usize,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "key {}: these {} of its {} operations have no linearization{}:",
            self.key,
            self.ops.len(),
            self.key_ops,
            if self.minimal {
                " (and any one fewer have one)"
            } else {
                ""
            }
        )?;
        for op in &self.ops {
            writeln!(f, "  {op}")?;
        }
        Ok(())
    }
}

/// What checking a history found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Keys checked.
    pub keys: usize,
    /// Operations that entered the model (reads without a value and unsent operations do not).
    pub checked: usize,
    /// Indeterminate writes among them.
    pub indeterminate: usize,
    /// Search states explored, over all keys.
    pub states: usize,
    /// The keys whose history is not linearizable.
    pub violations: Vec<Violation>,
}

/// Checks `ops` for linearizability, key by key, with the default bound on search states.
pub fn check(ops: &[Operation]) -> Result<Report, CheckError> {
    check_with_limit(ops, MAX_STATES)
}

/// As [`check`], giving up on a key after `max_states` search states.
pub fn check_with_limit(ops: &[Operation], max_states: usize) -> Result<Report, CheckError> {
    let mut by_key: BTreeMap<&str, Vec<&Operation>> = BTreeMap::new();
    for op in ops {
        by_key.entry(&op.key).or_default().push(op);
    }
    let mut report = Report {
        keys: by_key.len(),
        ..Report::default()
    };
    for (key, ops) in by_key {
        let kept: Vec<&Operation> = ops.into_iter().filter(|o| enters_model(o)).collect();
        let model = KeyModel::new(&kept);
        report.checked += kept.len();
        report.indeterminate += model.ops.iter().filter(|o| o.ret == u64::MAX).count();
        // Unobserved indeterminate writes can always take effect after everything else: a
        // history without them that is linearizable makes one with them linearizable. Those
        // that no failed compare can follow change nothing either way (see `removable`).
        let exact: Vec<usize> = (0..kept.len()).filter(|&i| !model.removable(i)).collect();
        let optimistic: Vec<usize> = exact
            .iter()
            .copied()
            .filter(|&i| !model.unobserved_write(i))
            .collect();
        let first = model.search(&optimistic, max_states);
        report.states += first.states;
        let verdict = if first.linearizable == Some(true) || optimistic.len() == exact.len() {
            first.linearizable
        } else {
            let full = model.search(&exact, max_states);
            report.states += full.states;
            full.linearizable
        };
        match verdict {
            Some(true) => {}
            Some(false) => {
                let start = if first.linearizable == Some(false) {
                    optimistic
                } else {
                    exact
                };
                let (subset, minimal) = model.minimize(start, max_states);
                report.violations.push(Violation {
                    key: key.to_owned(),
                    ops: subset.iter().map(|&i| kept[i].clone()).collect(),
                    minimal,
                    key_ops: kept.len(),
                });
            }
            None => {
                return Err(CheckError::TooManyStates {
                    key: key.to_owned(),
                    ops: kept.len(),
                    states: report.states,
                });
            }
        }
    }
    Ok(report)
}

/// Whether an operation says anything about the register: reads that returned nothing and
/// operations never sent do not.
fn enters_model(op: &Operation) -> bool {
    match (&op.input, &op.outcome) {
        (_, Outcome::NotSent(_)) => false,
        (Input::Get, Outcome::Ok(_)) => true,
        (Input::Get, _) => false,
        _ => true,
    }
}

/// A value, interned per key.
type Value = u32;
/// The register: `None` while the key does not exist.
type State = Option<Value>;

/// An operation as the model steps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// A read that returned this.
    Get(State),
    /// A write that took effect, or may have (indeterminate).
    Set(Value),
    /// A compare-and-swap that took effect.
    Cas { expect: Value, value: Value },
    /// A compare-and-swap that may have taken effect.
    CasMaybe { expect: Value, value: Value },
    /// A compare-and-swap that failed: the key held another value.
    CasMismatch { expect: Value },
    /// A write that failed because the key did not exist.
    Absent,
    /// A write that definitely failed for another reason: no effect, nothing observed.
    Nothing,
}

impl Step {
    /// The state after this step from `state`, or `None` if the step is illegal there.
    fn apply(self, state: State) -> Option<State> {
        match self {
            Step::Get(v) => (state == v).then_some(state),
            Step::Set(v) => Some(Some(v)),
            Step::Cas { expect, value } => (state == Some(expect)).then_some(Some(value)),
            Step::CasMaybe { expect, value } => Some(if state == Some(expect) {
                Some(value)
            } else {
                state
            }),
            Step::CasMismatch { expect } => {
                (state.is_some() && state != Some(expect)).then_some(state)
            }
            Step::Absent => state.is_none().then_some(state),
            Step::Nothing => Some(state),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct ModelOp {
    step: Step,
    invoke: u64,
    /// `u64::MAX` for an indeterminate write.
    ret: u64,
}

/// The history of one key, ready for the search.
struct KeyModel {
    ops: Vec<ModelOp>,
    /// Every value a read returned or a compare-and-swap expected.
    observed: HashSet<Value>,
    /// The latest return of a compare-and-swap that failed (error 101 or 100).
    last_failed_compare: Option<u64>,
}

/// What a search found.
struct Search {
    /// `None`: the bound was reached.
    linearizable: Option<bool>,
    states: usize,
}

impl KeyModel {
    fn new(ops: &[&Operation]) -> KeyModel {
        let mut values: HashMap<String, Value> = HashMap::new();
        let mut intern = |v: &String| -> Value {
            let next = values.len() as Value;
            *values.entry(v.clone()).or_insert(next)
        };
        let ops: Vec<ModelOp> = ops
            .iter()
            .map(|o| {
                let step = match (&o.input, &o.outcome) {
                    (Input::Get, Outcome::Ok(v)) => Step::Get(v.as_ref().map(&mut intern)),
                    (Input::Get, _) => Step::Nothing,
                    (Input::Set { value }, Outcome::Ok(_) | Outcome::Indeterminate(_)) => {
                        Step::Set(intern(value))
                    }
                    (Input::Cas { expect, value }, Outcome::Ok(_)) => Step::Cas {
                        expect: intern(expect),
                        value: intern(value),
                    },
                    (Input::Cas { expect, value }, Outcome::Indeterminate(_)) => Step::CasMaybe {
                        expect: intern(expect),
                        value: intern(value),
                    },
                    (Input::Cas { expect, .. }, Outcome::Failed(101)) => Step::CasMismatch {
                        expect: intern(expect),
                    },
                    (Input::Cas { .. }, Outcome::Failed(100)) => Step::Absent,
                    (_, Outcome::Failed(_) | Outcome::NotSent(_)) => Step::Nothing,
                };
                let ret = match o.outcome {
                    Outcome::Indeterminate(_) => u64::MAX,
                    _ => o.ret,
                };
                ModelOp {
                    step,
                    invoke: o.invoke,
                    ret,
                }
            })
            .collect();
        let observed = ops
            .iter()
            .filter_map(|o| match o.step {
                Step::Get(seen) => seen,
                Step::Cas { expect, .. }
                | Step::CasMaybe { expect, .. }
                | Step::CasMismatch { expect } => Some(expect),
                _ => None,
            })
            .collect();
        let last_failed_compare = ops
            .iter()
            .filter(|o| matches!(o.step, Step::CasMismatch { .. } | Step::Absent))
            .map(|o| o.ret)
            .max();
        KeyModel {
            ops,
            observed,
            last_failed_compare,
        }
    }

    /// Whether op `i` is an indeterminate write whose value nothing observed: no read returned
    /// it and no compare-and-swap expected it (values are unique per write).
    fn unobserved_write(&self, i: usize) -> bool {
        let (written, ret) = match self.ops[i].step {
            Step::Set(v) | Step::CasMaybe { value: v, .. } => (v, self.ops[i].ret),
            _ => return false,
        };
        ret == u64::MAX && !self.observed.contains(&written)
    }

    /// Whether op `i` can be left out without changing the verdict either way: an unobserved
    /// indeterminate write that no failed compare-and-swap can follow. (Taking it out of a
    /// linearization leaves every later operation legal: reads and successful compares never
    /// saw its value, indeterminate compares it made fail move to the end, the next write
    /// overwrites it; only a failed compare, which needs "any other value", could have needed
    /// it.)
    fn removable(&self, i: usize) -> bool {
        self.unobserved_write(i)
            && self
                .last_failed_compare
                .is_none_or(|last| last < self.ops[i].invoke)
    }

    /// `subset` plus the writes in `within` of every value a read or compare in it observed:
    /// an explanation shows where the values it talks about came from.
    fn closed(&self, within: &[usize], mut subset: Vec<usize>) -> Vec<usize> {
        let observed = |i: usize| match self.ops[i].step {
            Step::Get(Some(v))
            | Step::Cas { expect: v, .. }
            | Step::CasMaybe { expect: v, .. }
            | Step::CasMismatch { expect: v } => Some(v),
            _ => None,
        };
        let written = |i: usize| match self.ops[i].step {
            Step::Set(v) | Step::Cas { value: v, .. } | Step::CasMaybe { value: v, .. } => Some(v),
            _ => None,
        };
        let mut added = true;
        while added {
            added = false;
            let needed: HashSet<Value> = subset.iter().filter_map(|&i| observed(i)).collect();
            for &w in within {
                if written(w).is_some_and(|v| needed.contains(&v)) && !subset.contains(&w) {
                    subset.push(w);
                    added = true;
                }
            }
        }
        subset.sort_unstable();
        subset
    }

    /// porcupine's `checkSingle` over the operations `subset` (indexes into `self.ops`).
    fn search(&self, subset: &[usize], max_states: usize) -> Search {
        let n = subset.len();
        if n == 0 {
            return Search {
                linearizable: Some(true),
                states: 0,
            };
        }
        // Entry 0 is the head; entries 1..=2n are the calls and returns sorted by time, calls
        // before returns at the same instant (such operations overlap).
        let mut events: Vec<(u64, bool, usize)> = Vec::with_capacity(2 * n);
        for (k, &i) in subset.iter().enumerate() {
            events.push((self.ops[i].invoke, false, k));
            events.push((self.ops[i].ret, true, k));
        }
        events.sort_unstable();
        let len = 2 * n + 1;
        let mut next = vec![NIL; len];
        let mut prev = vec![NIL; len];
        let mut op_of = vec![0usize; len];
        let mut return_of = vec![NIL; len];
        let mut call_entry = vec![0usize; n];
        for (pos, &(_, is_return, k)) in events.iter().enumerate() {
            let e = pos + 1;
            prev[e] = e - 1;
            next[e - 1] = e;
            op_of[e] = k;
            if is_return {
                return_of[call_entry[k]] = e;
            } else {
                call_entry[k] = e;
            }
        }

        let lift = |next: &mut [usize], prev: &mut [usize], e: usize| {
            let m = return_of[e];
            next[prev[e]] = next[e];
            prev[next[e]] = prev[e];
            next[prev[m]] = next[m];
            if next[m] != NIL {
                prev[next[m]] = prev[m];
            }
        };
        let unlift = |next: &mut [usize], prev: &mut [usize], e: usize| {
            let m = return_of[e];
            next[prev[m]] = m;
            if next[m] != NIL {
                prev[next[m]] = m;
            }
            next[prev[e]] = e;
            prev[next[e]] = e;
        };

        let words = n.div_ceil(64);
        let mut linearized = vec![0u64; words];
        let mut cache: HashSet<(Box<[u64]>, State)> = HashSet::new();
        let mut calls: Vec<(usize, State)> = Vec::new();
        let mut state: State = None;
        let mut entry = next[0];
        while next[0] != NIL {
            if entry != NIL && return_of[entry] != NIL {
                // A call: try to linearize it now.
                let k = op_of[entry];
                if let Some(after) = self.ops[subset[k]].step.apply(state) {
                    let mut key = linearized.clone();
                    key[k / 64] |= 1 << (k % 64);
                    if cache.insert((key.into_boxed_slice(), after)) {
                        if cache.len() > max_states {
                            return Search {
                                linearizable: None,
                                states: cache.len(),
                            };
                        }
                        calls.push((entry, state));
                        state = after;
                        linearized[k / 64] |= 1 << (k % 64);
                        lift(&mut next, &mut prev, entry);
                        entry = next[0];
                        continue;
                    }
                }
                entry = next[entry];
            } else {
                // A return whose call is not linearized: undo the last choice.
                let Some((top, before)) = calls.pop() else {
                    return Search {
                        linearizable: Some(false),
                        states: cache.len(),
                    };
                };
                let k = op_of[top];
                state = before;
                linearized[k / 64] &= !(1 << (k % 64));
                unlift(&mut next, &mut prev, top);
                entry = next[top];
            }
        }
        Search {
            linearizable: Some(true),
            states: cache.len(),
        }
    }

    /// Shrinks the non-linearizable `subset` by delta debugging; returns what is left and
    /// whether it is 1-minimal.
    fn minimize(&self, mut keep: Vec<usize>, max_states: usize) -> (Vec<usize>, bool) {
        let violates = |subset: &[usize]| {
            !subset.is_empty() && self.search(subset, max_states).linearizable == Some(false)
        };
        // Indeterminate writes rarely explain a violation and make the search wide: try
        // without all of them first.
        let definite: Vec<usize> = keep
            .iter()
            .copied()
            .filter(|&i| self.ops[i].ret != u64::MAX)
            .collect();
        let definite = self.closed(&keep, definite);
        if definite.len() < keep.len() && violates(&definite) {
            keep = definite;
        }
        let mut checks = 0;
        let mut chunk = (keep.len() / 2).max(1);
        loop {
            let mut removed = false;
            let mut i = 0;
            while i < keep.len() {
                let end = (i + chunk).min(keep.len());
                let rest: Vec<usize> = keep[..i].iter().chain(&keep[end..]).copied().collect();
                let candidate = self.closed(&keep, rest);
                checks += 1;
                if checks > MAX_MINIMIZE_CHECKS {
                    return (keep, false);
                }
                if candidate.len() < keep.len() && violates(&candidate) {
                    keep = candidate;
                    removed = true;
                } else {
                    i = end;
                }
            }
            if chunk == 1 {
                if !removed {
                    return (keep, true);
                }
            } else {
                chunk = (chunk / 2).max(1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(client: usize, invoke: u64, ret: u64, input: Input, outcome: Outcome) -> Operation {
        Operation {
            client,
            key: "/k".to_owned(),
            input,
            invoke,
            ret,
            outcome,
        }
    }

    fn set(client: usize, invoke: u64, ret: u64, value: &str) -> Operation {
        let input = Input::Set {
            value: value.to_owned(),
        };
        op(client, invoke, ret, input, Outcome::Ok(None))
    }

    fn set_maybe(client: usize, invoke: u64, ret: u64, value: &str) -> Operation {
        let input = Input::Set {
            value: value.to_owned(),
        };
        op(
            client,
            invoke,
            ret,
            input,
            Outcome::Indeterminate("timeout".into()),
        )
    }

    fn get(client: usize, invoke: u64, ret: u64, value: Option<&str>) -> Operation {
        op(
            client,
            invoke,
            ret,
            Input::Get,
            Outcome::Ok(value.map(str::to_owned)),
        )
    }

    fn cas(
        client: usize,
        invoke: u64,
        ret: u64,
        expect: &str,
        value: &str,
        outcome: Outcome,
    ) -> Operation {
        let input = Input::Cas {
            expect: expect.to_owned(),
            value: value.to_owned(),
        };
        op(client, invoke, ret, input, outcome)
    }

    fn ok() -> Outcome {
        Outcome::Ok(None)
    }

    fn violations(ops: &[Operation]) -> Vec<Violation> {
        check(ops).unwrap().violations
    }

    fn assert_linearizable(ops: &[Operation]) {
        let v = violations(ops);
        assert!(v.is_empty(), "{}", v[0]);
    }

    /// Asserts a violation whose minimal explanation is exactly `culprits`.
    fn assert_violation(ops: &[Operation], culprits: &[&Operation]) {
        let v = violations(ops);
        assert_eq!(v.len(), 1, "expected a violation");
        assert!(v[0].minimal, "{}", v[0]);
        let mut want: Vec<Operation> = culprits.iter().map(|&o| o.clone()).collect();
        want.sort_by_key(|o| (o.invoke, o.ret, o.client));
        assert_eq!(v[0].ops, want, "{}", v[0]);
    }

    #[test]
    fn a_sequential_history_that_follows_the_model_is_linearizable() {
        assert_linearizable(&[
            get(1, 0, 1, None),
            set(1, 2, 3, "a"),
            get(2, 4, 5, Some("a")),
            cas(1, 6, 7, "a", "b", ok()),
            cas(2, 8, 9, "a", "c", Outcome::Failed(101)),
            get(1, 10, 11, Some("b")),
        ]);
    }

    #[test]
    fn a_read_concurrent_with_a_write_may_see_either_value() {
        for seen in ["a", "b"] {
            assert_linearizable(&[
                set(1, 0, 1, "a"),
                set(1, 2, 10, "b"),
                get(2, 3, 4, Some(seen)),
            ]);
        }
    }

    #[test]
    fn an_empty_history_is_linearizable() {
        let report = check(&[]).unwrap();
        assert_eq!((report.keys, report.checked), (0, 0));
    }

    #[test]
    fn a_stale_read_is_a_violation() {
        let a = set(1, 0, 1, "a");
        let b = set(1, 2, 3, "b");
        let stale = get(2, 4, 5, Some("a"));
        let noise = get(3, 6, 7, Some("b"));
        assert_violation(
            &[a.clone(), b.clone(), stale.clone(), noise],
            &[&a, &b, &stale],
        );
    }

    #[test]
    fn two_readers_that_see_the_new_value_then_the_old_one_are_a_violation() {
        // The write is still in flight for both reads, but once one reader saw "b", a later
        // reader cannot see "a" again.
        let a = set(1, 0, 1, "a");
        let b = set(1, 2, 30, "b");
        let new = get(2, 10, 11, Some("b"));
        let old = get(3, 12, 13, Some("a"));
        assert_violation(
            &[a.clone(), b.clone(), new.clone(), old.clone()],
            &[&a, &b, &new, &old],
        );
        // Overlapping reads may see them in either order.
        assert_linearizable(&[a, b, new, get(3, 10, 13, Some("a"))]);
    }

    #[test]
    fn a_lost_acknowledged_write_is_a_violation() {
        let a = set(1, 0, 1, "a");
        let lost = get(2, 5, 6, None);
        assert_violation(&[a.clone(), lost.clone()], &[&a, &lost]);
        // A later write that was acknowledged and then read back as the older value.
        let b = set(2, 2, 3, "b");
        let back = get(3, 4, 5, Some("a"));
        assert_violation(&[a.clone(), b.clone(), back.clone()], &[&a, &b, &back]);
    }

    #[test]
    fn a_compare_and_swap_that_succeeds_twice_is_a_violation() {
        let a = set(1, 0, 1, "a");
        let one = cas(2, 2, 10, "a", "b", ok());
        let two = cas(3, 3, 11, "a", "c", ok());
        assert_violation(&[a.clone(), one.clone(), two.clone()], &[&a, &one, &two]);
        // One of them failing with "compare failed" is fine, in either order.
        assert_linearizable(&[
            a.clone(),
            one.clone(),
            cas(3, 3, 11, "a", "c", Outcome::Failed(101)),
        ]);
        assert_linearizable(&[a, cas(2, 2, 10, "a", "b", Outcome::Failed(101)), two]);
    }

    #[test]
    fn a_compare_and_swap_that_fails_although_the_value_matched_is_a_violation() {
        let z = set(1, 0, 1, "z");
        let a = set(1, 2, 3, "a");
        let failed = cas(2, 4, 5, "a", "b", Outcome::Failed(101));
        assert_violation(&[z, a.clone(), failed.clone()], &[&a, &failed]);
        // On a missing key etcd answers 100, not 101.
        let missing = cas(2, 0, 1, "a", "b", Outcome::Failed(100));
        assert_linearizable(std::slice::from_ref(&missing));
        let mismatch_on_nothing = cas(2, 0, 1, "a", "b", Outcome::Failed(101));
        assert_violation(
            std::slice::from_ref(&mismatch_on_nothing),
            &[&mismatch_on_nothing],
        );
        let absent_after_write = cas(2, 4, 5, "x", "y", Outcome::Failed(100));
        assert_violation(
            &[a.clone(), absent_after_write.clone()],
            &[&a, &absent_after_write],
        );
    }

    #[test]
    fn an_indeterminate_write_may_have_happened_at_any_time_after_its_invocation() {
        let a = set(1, 0, 1, "a");
        let maybe = set_maybe(2, 2, 3, "b");
        // Never seen: it did not happen (or happened after everything).
        assert_linearizable(&[a.clone(), maybe.clone(), get(3, 10, 11, Some("a"))]);
        // Seen long after its client gave up: it happened late.
        assert_linearizable(&[
            a.clone(),
            maybe.clone(),
            get(3, 10, 11, Some("a")),
            get(3, 20, 21, Some("b")),
        ]);
        // But not before it was invoked.
        let early = get(3, 0, 1, Some("b"));
        assert_violation(&[early.clone(), maybe.clone()], &[&early, &maybe]);
        // And once it is seen, it cannot be undone.
        let seen = get(3, 10, 11, Some("b"));
        let undone = get(3, 12, 13, Some("a"));
        assert_violation(
            &[a.clone(), maybe.clone(), seen.clone(), undone.clone()],
            &[&a, &maybe, &seen, &undone],
        );
    }

    #[test]
    fn an_indeterminate_compare_and_swap_applies_only_if_the_value_matched() {
        let a = set(1, 0, 1, "a");
        let timeout = || Outcome::Indeterminate("timeout".into());
        let maybe = cas(2, 2, 3, "a", "b", timeout());
        assert_linearizable(&[a.clone(), maybe.clone(), get(3, 10, 11, Some("b"))]);
        assert_linearizable(&[a.clone(), maybe.clone(), get(3, 10, 11, Some("a"))]);
        // Its expectation never held: its value cannot appear.
        let never = cas(2, 2, 3, "z", "b", timeout());
        let seen = get(3, 10, 11, Some("b"));
        assert_violation(&[a.clone(), never.clone(), seen.clone()], &[&never, &seen]);
    }

    #[test]
    fn an_unseen_indeterminate_write_can_still_explain_a_failed_compare() {
        // Nobody read "u", but only "u" explains why the compare of "a" failed: an indeterminate
        // write may not be dropped just because its value was never seen.
        let history = [
            set(1, 0, 1, "a"),
            set_maybe(2, 2, 3, "u"),
            cas(3, 4, 5, "a", "b", Outcome::Failed(101)),
            set(1, 6, 7, "x"),
            get(3, 8, 9, Some("x")),
        ];
        assert_linearizable(&history);
        // Without it, the same history is a violation.
        let without: Vec<Operation> = history.iter().filter(|o| o.client != 2).cloned().collect();
        assert_eq!(violations(&without).len(), 1);
    }

    #[test]
    fn reads_without_an_answer_and_unsent_writes_say_nothing() {
        let a = set(1, 0, 1, "a");
        let unsent = op(
            2,
            2,
            3,
            Input::Set { value: "b".into() },
            Outcome::NotSent("connection refused".into()),
        );
        let lost_read = op(
            3,
            4,
            5,
            Input::Get,
            Outcome::Indeterminate("timeout".into()),
        );
        let report = check(&[a, unsent, lost_read, get(3, 6, 7, Some("a"))]).unwrap();
        assert!(report.violations.is_empty());
        assert_eq!(report.checked, 2);
        // An unsent write whose value shows up is a violation (a value from nowhere).
        let unsent_b = op(
            2,
            2,
            3,
            Input::Set { value: "b".into() },
            Outcome::NotSent("refused".into()),
        );
        let phantom = get(3, 6, 7, Some("b"));
        assert_violation(&[unsent_b, phantom.clone()], &[&phantom]);
    }

    #[test]
    fn keys_are_checked_apart() {
        let mut on_j = set(1, 0, 1, "a");
        on_j.key = "/j".into();
        // Linearizable only if the keys were (wrongly) one register.
        let report = check(&[on_j, get(2, 2, 3, None)]).unwrap();
        assert!(report.violations.is_empty());
        assert_eq!(report.keys, 2);
        // A violation names its key and only its operations.
        let mut other = get(2, 2, 3, Some("nothing"));
        other.key = "/other".into();
        let v = violations(&[set(1, 0, 1, "a"), other.clone()]);
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].key, "/other");
        assert!(
            v[0].to_string()
                .starts_with("key /other: these 1 of its 1 operations"),
            "{}",
            v[0]
        );
    }

    #[test]
    fn a_long_concurrent_history_is_decided_and_its_violation_is_small() {
        // Six clients, each in turn: write its own value, read it back; overlapping windows.
        let mut ops = Vec::new();
        for round in 0..200u64 {
            let t = round * 100;
            let v = format!("v{round}");
            ops.push(set(1, t, t + 50, &v));
            ops.push(get(2, t + 51, t + 60, Some(&v)));
            ops.push(get(3, t + 40, t + 70, Some(&v)));
            ops.push(set_maybe(4, t + 70, t + 75, &format!("m{round}")));
        }
        let report = check(&ops).unwrap();
        assert!(report.violations.is_empty(), "{}", report.violations[0]);
        // One stale read in the middle.
        ops.push(get(5, 10_061, 10_062, Some("v99")));
        let v = violations(&ops);
        assert_eq!(v.len(), 1);
        assert!(v[0].minimal);
        assert!(v[0].ops.len() <= 4, "{}", v[0]);
        assert!(v[0].ops.iter().any(|o| o.client == 5), "{}", v[0]);
    }

    #[test]
    fn the_search_gives_up_past_its_bound() {
        let ops: Vec<Operation> = (0..20)
            .map(|i| set_maybe(i, 0, 1, &format!("v{i}")))
            .chain([
                cas(98, 2, 3, "x", "y", Outcome::Failed(101)),
                get(99, 2, 3, Some("nope")),
            ])
            .collect();
        let err = check_with_limit(&ops, 1000).unwrap_err();
        assert!(
            matches!(err, CheckError::TooManyStates { ops: 22, .. }),
            "{err}"
        );
    }
}
