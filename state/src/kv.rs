//! The etcd v2 key space: a tree of directories and keys with etcd v2's semantics.
//!
//! # Design
//!
//! [`Store`] follows etcd's v2 store (`etcdserver/api/v2store`) rule for rule: the same index
//! (+1 per successful write), the same `createdIndex` / `modifiedIndex`, the same events, error
//! codes, messages and causes. It is a pure value: no clock (a write carries its proposer's
//! `now_ms`, expiry is a command with the leader's clock), no I/O, and deterministic iteration
//! everywhere (sorted maps), so every replica that applies the same writes holds an equal store.
//!
//! Nodes live in a map from a directory's path to a sorted map of its children, so a lookup is
//! one or two `O(log n)` map probes and a listing touches only the children it lists. Nodes with
//! a TTL are also indexed by expiration, and the last [`HISTORY_CAPACITY`] events are kept (and
//! replicated) so that `waitIndex` watches answer alike on every replica.
//!
//! JSON rendering (exactly etcd's bytes) is in [`json`], HTTP parameter parsing in [`v2`].
//!
//! # Current limitations
//!
//! - Listings are always sorted (etcd's unsorted order is Go's random map order; sorted is one
//!   of its possible orders).
//! - Expiry is at millisecond, not nanosecond, resolution.
//! - Watches follow etcd's two rules: [`Store::watch_history`] its history scan (hidden keys
//!   included, a deleted directory matches keys it is a string prefix of), [`Event::matches`]
//!   its live notification (hidden keys skipped). The live rule tells watchers of any key below
//!   a deleted directory; etcd tells only those of keys that existed.

pub mod json;
pub mod v2;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::ops::Bound;

use serde::{Deserialize, Serialize};

/// How many events the watch history keeps (etcd: `newWatchHub(1000)`).
pub const HISTORY_CAPACITY: usize = 1000;

/// Expirations before 2000-01-01T00:00:00Z mean "no TTL" (etcd's `minExpireTime`).
const MIN_EXPIRATION_MS: u64 = 946_684_800_000;

/// A write, as the HTTP layer decoded it from an etcd v2 request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Write {
    /// The key, as the client gave it (normalized by the store: leading `/`, no trailing `/`).
    pub key: String,
    /// What to do.
    pub op: WriteOp,
    /// The proposer's clock, used for TTLs (expiration = now_ms + ttl * 1000).
    pub now_ms: u64,
    /// `noValueOnSuccess=true`: the response to a set, create, update or compare-and-swap
    /// carries only the action (see [`Event::render`]). Changes nothing in the store.
    pub no_value_on_success: bool,
}

impl Write {
    /// A write of `op` to `key` proposed at `now_ms`, with a full response.
    pub fn new(key: impl Into<String>, op: WriteOp, now_ms: u64) -> Self {
        Write {
            key: key.into(),
            op,
            now_ms,
            no_value_on_success: false,
        }
    }
}

/// The kinds of write the v2 keys API has.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WriteOp {
    /// `PUT /v2/keys/KEY`: set, create (prevExist=false), update (prevExist=true),
    /// compare-and-swap (prevValue / prevIndex), refresh (refresh=true, TTL only).
    Set {
        /// The value (empty for a directory).
        value: String,
        /// `dir=true`.
        dir: bool,
        /// `ttl=N` seconds; `None` means no TTL (an empty `ttl=` clears one).
        ttl: Option<u64>,
        /// `refresh=true`: only reset the TTL, keep the value, notify no watcher.
        refresh: bool,
        /// Conditions on the existing node.
        prev: Preconditions,
    },
    /// `POST /v2/keys/DIR`: create an in-order key under `DIR` named by the new index.
    CreateInOrder {
        /// The value.
        value: String,
        /// `dir=true`.
        dir: bool,
        /// `ttl=N` seconds.
        ttl: Option<u64>,
    },
    /// `DELETE /v2/keys/KEY`: delete, or compare-and-delete with prevValue / prevIndex.
    Delete {
        /// `dir=true`: delete an empty directory.
        dir: bool,
        /// `recursive=true`: delete a directory and everything under it.
        recursive: bool,
        /// Conditions on the existing node.
        prev: Preconditions,
    },
}

/// `prevExist`, `prevValue`, `prevIndex`.
///
/// As in etcd, an empty `prev_value` and a `prev_index` of 0 mean "not given".
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Preconditions {
    /// `prevExist=true|false`.
    pub prev_exist: Option<bool>,
    /// `prevValue=V`.
    pub prev_value: Option<String>,
    /// `prevIndex=N`.
    pub prev_index: Option<u64>,
}

/// etcd v2 event actions, spelled as etcd spells them in JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Action {
    Get,
    Set,
    Create,
    Update,
    Delete,
    CompareAndSwap,
    CompareAndDelete,
    Expire,
}

impl Action {
    /// The action as etcd writes it in JSON (`"compareAndSwap"`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Get => "get",
            Action::Set => "set",
            Action::Create => "create",
            Action::Update => "update",
            Action::Delete => "delete",
            Action::CompareAndSwap => "compareAndSwap",
            Action::CompareAndDelete => "compareAndDelete",
            Action::Expire => "expire",
        }
    }
}

/// A node of the tree as a response shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub key: String,
    pub value: Option<String>,
    pub dir: bool,
    /// Absolute expiry, ms since the Unix epoch.
    pub expiration_ms: Option<u64>,
    pub modified_index: u64,
    pub created_index: u64,
    /// Children of a directory that was read (sorted when asked), `None` when not listed.
    pub nodes: Option<Vec<Node>>,
}

/// What a read or a write did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub action: Action,
    pub node: Node,
    pub prev_node: Option<Node>,
    /// The store's index after this event (X-Etcd-Index).
    pub etcd_index: u64,
    /// A `refresh=true` write: kept in the history but skipped by watches (etcd notifies no
    /// watcher of a refresh).
    pub refresh: bool,
    /// The clock the TTLs of a write or expiry event are counted from (its `now_ms`), so that
    /// a watcher reading it from the history later sees the `ttl` etcd would have shown. Reads
    /// count from the clock given to [`Event::render`].
    pub time_ms: u64,
}

impl Event {
    /// The index this event happened at (its node's `modifiedIndex`, as etcd's `Event.Index`).
    pub fn index(&self) -> u64 {
        self.node.modified_index
    }

    /// Whether a watcher of `key` (normalized as [`normalize_key`] does) is told of this event:
    /// the key itself; with `recursive`, any key below it that is not hidden relative to it (no
    /// path component after `key` starts with `_`); and, for the delete or expiry of a
    /// directory, every key below that directory. Refresh events match nothing.
    pub fn matches(&self, key: &str, recursive: bool) -> bool {
        if self.refresh {
            return false;
        }
        let event_key = self.node.key.as_str();
        if event_key == key {
            return true;
        }
        if recursive && is_below(event_key, key) && !hidden_below(key, event_key) {
            return true;
        }
        matches!(self.action, Action::Delete | Action::Expire)
            && self.prev_node.as_ref().is_some_and(|p| p.dir)
            && is_below(key, event_key)
    }

    /// etcd's `EventHistory.scan` rule, which differs from the live one in [`Event::matches`]:
    /// hidden keys are not skipped, and a deleted directory matches every key it is a string
    /// prefix of (`/foo` matches `/foobar`).
    fn matches_history(&self, key: &str, recursive: bool) -> bool {
        if self.refresh {
            return false;
        }
        let event_key = self.node.key.as_str();
        if event_key == key {
            return true;
        }
        if recursive {
            let below = event_key
                .strip_prefix(key)
                .is_some_and(|rest| key.ends_with('/') || rest.starts_with('/'));
            if below {
                return true;
            }
        }
        matches!(self.action, Action::Delete | Action::Expire)
            && self
                .prev_node
                .as_ref()
                .is_some_and(|p| p.dir && key.starts_with(p.key.as_str()))
    }

    /// The HTTP status etcd answers this event with: 201 for a create (a `create`, a POST, or a
    /// `set` of a key that did not exist), 200 otherwise.
    pub fn http_status(&self) -> u16 {
        let created = self.action == Action::Create
            || (self.action == Action::Set && self.prev_node.is_none());
        if created { 201 } else { 200 }
    }
}

/// etcd's error codes, with etcd's numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    KeyNotFound = 100,
    TestFailed = 101,
    NotFile = 102,
    NotDir = 104,
    NodeExist = 105,
    RootReadOnly = 107,
    DirNotEmpty = 108,
    PrevValueRequired = 201,
    TtlNaN = 202,
    IndexNaN = 203,
    InvalidField = 209,
    InvalidForm = 210,
    RaftInternal = 300,
    LeaderElect = 301,
    WatcherCleared = 400,
    EventIndexCleared = 401,
    /// `refresh=true` with a non-empty value.
    RefreshValue = 211,
    /// `refresh=true` without a TTL.
    RefreshTtlRequired = 212,
}

impl ErrorCode {
    /// etcd's number for this code (`errorCode` in JSON).
    pub fn number(self) -> u16 {
        self as u16
    }

    /// etcd's message for this code, word for word.
    pub fn message(self) -> &'static str {
        match self {
            ErrorCode::KeyNotFound => "Key not found",
            ErrorCode::TestFailed => "Compare failed",
            ErrorCode::NotFile => "Not a file",
            ErrorCode::NotDir => "Not a directory",
            ErrorCode::NodeExist => "Key already exists",
            ErrorCode::RootReadOnly => "Root is read only",
            ErrorCode::DirNotEmpty => "Directory not empty",
            ErrorCode::PrevValueRequired => "PrevValue is Required in POST form",
            ErrorCode::TtlNaN => "The given TTL in POST form is not a number",
            ErrorCode::IndexNaN => "The given index in POST form is not a number",
            ErrorCode::InvalidField => "Invalid field",
            ErrorCode::InvalidForm => "Invalid POST form",
            ErrorCode::RefreshValue => "Value provided on refresh",
            ErrorCode::RefreshTtlRequired => "A TTL must be provided on refresh",
            ErrorCode::RaftInternal => "Raft Internal Error",
            ErrorCode::LeaderElect => "During Leader Election",
            ErrorCode::WatcherCleared => "watcher is cleared due to etcd recovery",
            ErrorCode::EventIndexCleared => "The event in requested index is outdated and cleared",
        }
    }

    /// The HTTP status etcd answers this code with (etcd's `errorStatus`; 400 for the rest).
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::KeyNotFound => 404,
            ErrorCode::NotFile | ErrorCode::DirNotEmpty => 403,
            ErrorCode::TestFailed | ErrorCode::NodeExist => 412,
            ErrorCode::RaftInternal | ErrorCode::LeaderElect => 500,
            _ => 400,
        }
    }
}

/// An etcd v2 error: `{"errorCode":100,"message":"Key not found","cause":"/foo","index":7}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("etcd error {}: {} ({cause})", .code.number(), .code.message())]
pub struct Error {
    pub code: ErrorCode,
    pub cause: String,
    /// The store's index when the error happened.
    pub index: u64,
}

impl Error {
    /// An error with etcd's `code`, `cause` and the store `index` it happened at.
    pub fn new(code: ErrorCode, cause: impl Into<String>, index: u64) -> Self {
        Error {
            code,
            cause: cause.into(),
            index,
        }
    }

    /// The HTTP status etcd answers this error with.
    pub fn http_status(&self) -> u16 {
        self.code.http_status()
    }
}

/// A stored node (its path is its place in [`Store`]'s maps).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Entry {
    /// `Some(value)` for a key, `None` for a directory.
    value: Option<String>,
    created_index: u64,
    modified_index: u64,
    expiration_ms: Option<u64>,
}

impl Entry {
    fn is_dir(&self) -> bool {
        self.value.is_none()
    }

    fn dir(index: u64) -> Self {
        Entry {
            value: None,
            created_index: index,
            modified_index: index,
            expiration_ms: None,
        }
    }

    /// The node as a response shows it, without children (etcd's `Repr(false, false)`).
    fn repr(&self, key: &str) -> Node {
        Node {
            key: key.to_owned(),
            value: self.value.clone(),
            dir: self.is_dir(),
            expiration_ms: self.expiration_ms,
            modified_index: self.modified_index,
            created_index: self.created_index,
            nodes: None,
        }
    }
}

/// The root directory: always there, index 0, read-only.
const ROOT: Entry = Entry {
    value: None,
    created_index: 0,
    modified_index: 0,
    expiration_ms: None,
};

/// Which comparison of a compare-and-swap / compare-and-delete failed.
enum Mismatch {
    Index,
    Value,
    Both,
}

/// The key space.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Store {
    index: u64,
    /// The children of every non-empty directory: directory path -> child name -> node.
    /// A directory with no children has no entry here.
    dirs: BTreeMap<String, BTreeMap<String, Entry>>,
    /// Every node with a TTL, as (expiration ms, path).
    ttls: BTreeSet<(u64, String)>,
    /// The last [`HISTORY_CAPACITY`] events, oldest first.
    history: VecDeque<Event>,
}

impl Store {
    /// The store's current index (X-Etcd-Index).
    pub fn index(&self) -> u64 {
        self.index
    }

    /// Applies a write as etcd's v2 applier does: a PUT is a set, a create (`prevExist=false`),
    /// an update (`prevExist=true`) or a compare-and-swap (`prevValue` / `prevIndex`); a POST an
    /// in-order create; a DELETE a delete or a compare-and-delete. A successful write moves the
    /// index by one and joins the watch history; a failed one changes nothing.
    pub fn apply(&mut self, w: &Write) -> Result<Event, Error> {
        let mut event = self.write(w)?;
        event.time_ms = w.now_ms;
        self.record(&event);
        Ok(event)
    }

    /// Applies a write without recording its event.
    fn write(&mut self, w: &Write) -> Result<Event, Error> {
        let key = normalize_key(&w.key);
        match &w.op {
            WriteOp::Set {
                value,
                dir,
                ttl,
                refresh,
                prev,
            } => {
                let expiration = expiration(w.now_ms, *ttl);
                let prev_value = prev.prev_value.as_deref().filter(|v| !v.is_empty());
                let prev_index = prev.prev_index.filter(|i| *i > 0);
                let compare = prev_value.is_some() || prev_index.is_some();
                match prev.prev_exist {
                    Some(true) if !compare => self.update(&key, value, expiration, *refresh),
                    Some(false) => self.create(key, *dir, value, false, expiration),
                    Some(true) | None if compare => self.compare_and_swap(
                        &key,
                        prev_value.unwrap_or(""),
                        prev_index.unwrap_or(0),
                        value,
                        expiration,
                        *refresh,
                    ),
                    _ => self.set(key, *dir, value, expiration, *refresh),
                }
            }
            WriteOp::CreateInOrder { value, dir, ttl } => {
                self.create(key, *dir, value, true, expiration(w.now_ms, *ttl))
            }
            WriteOp::Delete {
                dir,
                recursive,
                prev,
            } => {
                let prev_value = prev.prev_value.as_deref().filter(|v| !v.is_empty());
                let prev_index = prev.prev_index.filter(|i| *i > 0);
                if prev_value.is_some() || prev_index.is_some() {
                    self.compare_and_delete(&key, prev_value.unwrap_or(""), prev_index.unwrap_or(0))
                } else {
                    self.delete(&key, *dir, *recursive)
                }
            }
        }
    }

    /// Removes every key that expired at or before `now_ms`, earliest first (ties in key
    /// order), one `expire` event each.
    pub fn expire(&mut self, now_ms: u64) -> Vec<Event> {
        let mut events = Vec::new();
        while let Some((at, path)) = self.ttls.first().cloned() {
            if at > now_ms {
                break;
            }
            let Some(entry) = self.entry(&path).cloned() else {
                // Unreachable while the TTL index is kept in step; drop the stale entry.
                self.ttls.remove(&(at, path));
                continue;
            };
            self.index += 1;
            let event = Event {
                action: Action::Expire,
                node: Node {
                    key: path.clone(),
                    value: None,
                    dir: entry.is_dir(),
                    expiration_ms: None,
                    modified_index: self.index,
                    created_index: entry.created_index,
                    nodes: None,
                },
                prev_node: Some(entry.repr(&path)),
                etcd_index: self.index,
                refresh: false,
                time_ms: now_ms,
            };
            self.remove_subtree(&path);
            self.record(&event);
            events.push(event);
        }
        events
    }

    /// Reads `key`: a key's value, or a directory's children (all levels with `recursive`);
    /// hidden children (names starting with `_`) are not listed.
    pub fn get(&self, key: &str, recursive: bool, sorted: bool) -> Result<Event, Error> {
        // Children are kept sorted, so a listing is always sorted.
        let _ = sorted;
        let key = normalize_key(key);
        let entry = self.lookup(&key)?;
        let mut node = entry.repr(&key);
        if entry.is_dir() {
            node.nodes = Some(self.children(&key, recursive));
        }
        Ok(Event {
            action: Action::Get,
            node,
            prev_node: None,
            etcd_index: self.index,
            refresh: false,
            time_ms: 0,
        })
    }

    /// The earliest expiration of any node, ms since the Unix epoch (for the leader's ticker).
    pub fn next_expiry(&self) -> Option<u64> {
        self.ttls.first().map(|(at, _)| *at)
    }

    /// The first event at or after `since_index` that a watch of `key` sees (by etcd's history
    /// rule, which unlike [`Event::matches`] does not skip hidden keys), from the last [`HISTORY_CAPACITY`] events, with `etcd_index` set
    /// to the current index; `None` when none has happened yet (the watcher waits).
    /// `since_index` 0 means "the next event". [`ErrorCode::EventIndexCleared`] when
    /// `since_index` is older than the history.
    pub fn watch_history(
        &self,
        key: &str,
        recursive: bool,
        since_index: u64,
    ) -> Result<Option<Event>, Error> {
        let key = normalize_key(key);
        let since = if since_index == 0 {
            self.index.saturating_add(1)
        } else {
            since_index
        };
        let start = self.history.front().map_or(0, Event::index);
        if since < start {
            return Err(Error::new(
                ErrorCode::EventIndexCleared,
                format!("the requested history has been cleared [{start}/{since}]"),
                self.index,
            ));
        }
        let from = self.history.partition_point(|e| e.index() < since);
        Ok(self
            .history
            .range(from..)
            .find(|e| e.matches_history(&key, recursive))
            .map(|e| Event {
                etcd_index: self.index,
                ..e.clone()
            }))
    }

    /// The index of the oldest event still in the watch history (0 when there is none).
    pub fn history_start(&self) -> u64 {
        self.history.front().map_or(0, Event::index)
    }

    /// `Set`: create or replace a key (or create a directory).
    fn set(
        &mut self,
        key: String,
        dir: bool,
        value: &str,
        expiration: Option<u64>,
        refresh: bool,
    ) -> Result<Event, Error> {
        let existing = match self.lookup(&key) {
            Ok(entry) => Some(entry),
            Err(e) if e.code == ErrorCode::KeyNotFound && !refresh => None,
            Err(e) => return Err(e),
        };
        let value = match (refresh, existing) {
            (true, Some(entry)) => entry.value.clone().unwrap_or_default(),
            _ => value.to_owned(),
        };
        self.insert(key, dir, value, true, expiration, Action::Set, refresh)
    }

    /// `Create`: create a key or directory that must not exist, or (`unique`) an in-order key
    /// under `key` named by the new index.
    fn create(
        &mut self,
        key: String,
        dir: bool,
        value: &str,
        unique: bool,
        expiration: Option<u64>,
    ) -> Result<Event, Error> {
        let key = if unique {
            normalize_key(&format!("{key}/{:020}", self.index + 1))
        } else {
            key
        };
        self.insert(
            key,
            dir,
            value.to_owned(),
            false,
            expiration,
            Action::Create,
            false,
        )
    }

    /// `Update`: change the value and TTL of a key, or the TTL of a directory.
    fn update(
        &mut self,
        key: &str,
        value: &str,
        expiration: Option<u64>,
        refresh: bool,
    ) -> Result<Event, Error> {
        if key == "/" {
            return Err(self.error(ErrorCode::RootReadOnly, "/"));
        }
        let entry = self.lookup(key)?;
        if entry.is_dir() && !value.is_empty() {
            return Err(self.error(ErrorCode::NotFile, key));
        }
        let prev = entry.repr(key);
        let next = self.index + 1;
        let new_value = if refresh {
            entry.value.clone()
        } else {
            entry.value.as_ref().map(|_| value.to_owned())
        };
        let entry = self.entry_mut(key).expect("looked up above");
        if !entry.is_dir() {
            // etcd 3.4 leaves a directory's modifiedIndex alone on update (its write fails).
            entry.value = new_value;
            entry.modified_index = next;
        }
        let mut node = entry.repr(key);
        node.modified_index = next;
        node.expiration_ms = expiration;
        self.set_expiration(key, expiration);
        self.index = next;
        let event = Event {
            action: Action::Update,
            node,
            prev_node: Some(prev),
            etcd_index: next,
            refresh,
            time_ms: 0,
        };
        Ok(event)
    }

    /// `CompareAndSwap`: set a key's value if its value and/or modifiedIndex match.
    fn compare_and_swap(
        &mut self,
        key: &str,
        prev_value: &str,
        prev_index: u64,
        value: &str,
        expiration: Option<u64>,
        refresh: bool,
    ) -> Result<Event, Error> {
        if key == "/" {
            return Err(self.error(ErrorCode::RootReadOnly, "/"));
        }
        let entry = self.lookup(key)?;
        if entry.is_dir() {
            return Err(self.error(ErrorCode::NotFile, key));
        }
        if let Some(cause) = compare_failure(entry, prev_value, prev_index) {
            return Err(self.error(ErrorCode::TestFailed, cause));
        }
        let prev = entry.repr(key);
        self.index += 1;
        let index = self.index;
        let entry = self.entry_mut(key).expect("looked up above");
        if !refresh {
            entry.value = Some(value.to_owned());
        }
        entry.modified_index = index;
        let mut node = entry.repr(key);
        node.expiration_ms = expiration;
        self.set_expiration(key, expiration);
        let event = Event {
            action: Action::CompareAndSwap,
            node,
            prev_node: Some(prev),
            etcd_index: index,
            refresh,
            time_ms: 0,
        };
        Ok(event)
    }

    /// `Delete`: remove a key, an empty directory (`dir`), or a directory tree (`recursive`).
    fn delete(&mut self, key: &str, dir: bool, recursive: bool) -> Result<Event, Error> {
        if key == "/" {
            return Err(self.error(ErrorCode::RootReadOnly, "/"));
        }
        let dir = dir || recursive;
        let entry = self.lookup(key)?;
        if entry.is_dir() {
            if !dir {
                return Err(self.error(ErrorCode::NotFile, key));
            }
            if !recursive && self.dirs.contains_key(key) {
                return Err(self.error(ErrorCode::DirNotEmpty, key));
            }
        }
        let next = self.index + 1;
        let event = Event {
            action: Action::Delete,
            node: Node {
                key: key.to_owned(),
                value: None,
                dir: entry.is_dir(),
                expiration_ms: None,
                modified_index: next,
                created_index: entry.created_index,
                nodes: None,
            },
            prev_node: Some(entry.repr(key)),
            etcd_index: next,
            refresh: false,
            time_ms: 0,
        };
        self.remove_subtree(key);
        self.index = next;
        Ok(event)
    }

    /// `CompareAndDelete`: remove a key if its value and/or modifiedIndex match.
    fn compare_and_delete(
        &mut self,
        key: &str,
        prev_value: &str,
        prev_index: u64,
    ) -> Result<Event, Error> {
        let entry = self.lookup(key)?;
        if entry.is_dir() {
            // etcd reports the root as "" here (its root is "/1" with the prefix trimmed).
            let cause = if key == "/" { "" } else { key };
            return Err(self.error(ErrorCode::NotFile, cause));
        }
        if let Some(cause) = compare_failure(entry, prev_value, prev_index) {
            return Err(self.error(ErrorCode::TestFailed, cause));
        }
        let prev = entry.repr(key);
        let created_index = entry.created_index;
        self.index += 1;
        let event = Event {
            action: Action::CompareAndDelete,
            node: Node {
                key: key.to_owned(),
                value: None,
                dir: false,
                expiration_ms: None,
                modified_index: self.index,
                created_index,
                nodes: None,
            },
            prev_node: Some(prev),
            etcd_index: self.index,
            refresh: false,
            time_ms: 0,
        };
        self.remove_subtree(key);
        Ok(event)
    }

    /// etcd's `internalCreate`: creates missing parent directories, then the node; an existing
    /// key is replaced when `replace` (never an existing directory).
    #[allow(clippy::too_many_arguments)]
    fn insert(
        &mut self,
        key: String,
        dir: bool,
        value: String,
        replace: bool,
        expiration: Option<u64>,
        action: Action,
        refresh: bool,
    ) -> Result<Event, Error> {
        if key == "/" {
            return Err(self.error(ErrorCode::RootReadOnly, "/"));
        }
        let next = self.index + 1;
        let (parent, name) = split(&key);
        self.make_dirs(parent, next)?;
        let mut prev_node = None;
        if let Some(existing) = self.dirs.get(parent).and_then(|c| c.get(name)) {
            if !replace {
                return Err(self.error(ErrorCode::NodeExist, &key));
            }
            if existing.is_dir() {
                return Err(self.error(ErrorCode::NotFile, &key));
            }
            prev_node = Some(existing.repr(&key));
            self.remove_subtree(&key);
        }
        let entry = Entry {
            value: if dir { None } else { Some(value) },
            created_index: next,
            modified_index: next,
            expiration_ms: expiration,
        };
        let node = entry.repr(&key);
        if let Some(at) = expiration {
            self.ttls.insert((at, key.clone()));
        }
        self.dirs
            .entry(parent.to_owned())
            .or_default()
            .insert(name.to_owned(), entry);
        self.index = next;
        let event = Event {
            action,
            node,
            prev_node,
            etcd_index: next,
            refresh,
            time_ms: 0,
        };
        Ok(event)
    }

    /// Creates the missing directories of `path` (etcd's `checkDir` walk), at `index`.
    fn make_dirs(&mut self, path: &str, index: u64) -> Result<(), Error> {
        // Find where the existing part ends first, so that an error creates nothing.
        let mut missing_from = None;
        for end in component_ends(path) {
            match self.entry(&path[..end]) {
                Some(entry) if entry.is_dir() => {}
                Some(_) => return Err(self.error(ErrorCode::NotDir, &path[..end])),
                None => {
                    missing_from = Some(end);
                    break;
                }
            }
        }
        let Some(first) = missing_from else {
            return Ok(());
        };
        for end in component_ends(path).filter(|end| *end >= first) {
            let (parent, name) = split(&path[..end]);
            self.dirs
                .entry(parent.to_owned())
                .or_default()
                .insert(name.to_owned(), Entry::dir(index));
        }
        Ok(())
    }

    /// etcd's `internalGet`: the node at `key`, or the first missing / non-directory component.
    fn lookup(&self, key: &str) -> Result<&Entry, Error> {
        if key == "/" {
            return Ok(&ROOT);
        }
        if let Some(entry) = self.entry(key) {
            return Ok(entry);
        }
        let mut parent: (&str, &Entry) = ("/", &ROOT);
        for end in component_ends(key) {
            if !parent.1.is_dir() {
                return Err(self.error(ErrorCode::NotDir, parent.0));
            }
            match self.entry(&key[..end]) {
                Some(entry) => parent = (&key[..end], entry),
                None => return Err(self.error(ErrorCode::KeyNotFound, &key[..end])),
            }
        }
        Ok(parent.1)
    }

    /// The node at a normalized, non-root path, if any.
    fn entry(&self, path: &str) -> Option<&Entry> {
        let (parent, name) = split(path);
        self.dirs.get(parent)?.get(name)
    }

    fn entry_mut(&mut self, path: &str) -> Option<&mut Entry> {
        let (parent, name) = split(path);
        self.dirs.get_mut(parent)?.get_mut(name)
    }

    /// The visible children of directory `path`, with their children when `recursive`.
    fn children(&self, path: &str, recursive: bool) -> Vec<Node> {
        let Some(children) = self.dirs.get(path) else {
            return Vec::new();
        };
        children
            .iter()
            .filter(|(name, _)| !name.starts_with('_'))
            .map(|(name, entry)| {
                let child = join(path, name);
                let mut node = entry.repr(&child);
                if recursive && entry.is_dir() {
                    node.nodes = Some(self.children(&child, true));
                }
                node
            })
            .collect()
    }

    /// Removes the node at `path` and everything below it, with their TTLs.
    fn remove_subtree(&mut self, path: &str) {
        let (parent, name) = split(path);
        let Some(siblings) = self.dirs.get_mut(parent) else {
            return;
        };
        let Some(entry) = siblings.remove(name) else {
            return;
        };
        if siblings.is_empty() {
            self.dirs.remove(parent);
        }
        if let Some(at) = entry.expiration_ms {
            self.ttls.remove(&(at, path.to_owned()));
        }
        if !entry.is_dir() {
            return;
        }
        let below = format!("{path}/");
        let mut doomed: Vec<String> = self
            .dirs
            .range::<str, _>((Bound::Included(below.as_str()), Bound::Unbounded))
            .map(|(dir, _)| dir)
            .take_while(|dir| dir.starts_with(&below))
            .cloned()
            .collect();
        if self.dirs.contains_key(path) {
            doomed.push(path.to_owned());
        }
        for dir in doomed {
            let Some(children) = self.dirs.remove(&dir) else {
                continue;
            };
            for (name, child) in children {
                if let Some(at) = child.expiration_ms {
                    self.ttls.remove(&(at, join(&dir, &name)));
                }
            }
        }
    }

    /// Sets (or clears) the TTL of the existing node at `path`.
    fn set_expiration(&mut self, path: &str, expiration: Option<u64>) {
        let Some(entry) = self.entry_mut(path) else {
            return;
        };
        let old = std::mem::replace(&mut entry.expiration_ms, expiration);
        if let Some(at) = old {
            self.ttls.remove(&(at, path.to_owned()));
        }
        if let Some(at) = expiration {
            self.ttls.insert((at, path.to_owned()));
        }
    }

    /// Appends a write's event to the watch history, dropping the oldest beyond capacity.
    fn record(&mut self, event: &Event) {
        if self.history.len() == HISTORY_CAPACITY {
            self.history.pop_front();
        }
        self.history.push_back(event.clone());
    }

    fn error(&self, code: ErrorCode, cause: impl Into<String>) -> Error {
        Error::new(code, cause, self.index)
    }
}

/// etcd's `node.Compare` plus `getCompareFailCause`: `None` when both conditions hold.
fn compare_failure(entry: &Entry, prev_value: &str, prev_index: u64) -> Option<String> {
    let value = entry.value.as_deref().unwrap_or("");
    let index_ok = prev_index == 0 || entry.modified_index == prev_index;
    let value_ok = prev_value.is_empty() || value == prev_value;
    let mismatch = match (value_ok, index_ok) {
        (true, true) => return None,
        (true, false) => Mismatch::Index,
        (false, true) => Mismatch::Value,
        (false, false) => Mismatch::Both,
    };
    let index = entry.modified_index;
    Some(match mismatch {
        Mismatch::Index => format!("[{prev_index} != {index}]"),
        Mismatch::Value => format!("[{prev_value} != {value}]"),
        Mismatch::Both => format!("[{prev_value} != {value}] [{prev_index} != {index}]"),
    })
}

/// The absolute expiration of a TTL set at `now_ms` (`None`: no TTL, as are times before 2000).
fn expiration(now_ms: u64, ttl: Option<u64>) -> Option<u64> {
    ttl.map(|secs| now_ms.saturating_add(secs.saturating_mul(1000)))
        .filter(|at| *at >= MIN_EXPIRATION_MS)
}

/// A key as the store names it: Go's `path.Clean(path.Join("/", key))` (leading `/`, no
/// trailing `/`, no empty, `.` or `..` components).
pub fn normalize_key(key: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in key.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            part => parts.push(part),
        }
    }
    let mut out = String::with_capacity(key.len() + 1);
    for part in &parts {
        out.push('/');
        out.push_str(part);
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

/// Splits a normalized, non-root path into its parent directory and its name.
fn split(path: &str) -> (&str, &str) {
    match path.rfind('/') {
        Some(0) | None => ("/", path.trim_start_matches('/')),
        Some(i) => (&path[..i], &path[i + 1..]),
    }
}

/// `dir/name`, for a normalized directory path (`/` included).
fn join(dir: &str, name: &str) -> String {
    if dir == "/" {
        format!("/{name}")
    } else {
        format!("{dir}/{name}")
    }
}

/// The end offsets of each component of a normalized path: `/a/b` gives 2, 4.
fn component_ends(path: &str) -> impl Iterator<Item = usize> + '_ {
    let bytes = path.as_bytes();
    (1..=bytes.len())
        .filter(move |&i| i == bytes.len() || bytes[i] == b'/')
        .filter(|&i| i > 1)
}

/// Whether `key` is strictly below directory `dir` (both normalized).
fn is_below(key: &str, dir: &str) -> bool {
    if dir == "/" {
        return key.len() > 1;
    }
    key.len() > dir.len() && key.starts_with(dir) && key.as_bytes()[dir.len()] == b'/'
}

/// etcd's `isHidden(watchPath, keyPath)`: a component of `key` after `watch` starts with `_`.
fn hidden_below(watch: &str, key: &str) -> bool {
    if watch.len() > key.len() {
        return false;
    }
    key[watch.len()..]
        .split('/')
        .any(|part| part.starts_with('_'))
}
