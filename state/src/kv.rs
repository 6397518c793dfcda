//! The etcd v2 key space: a tree of directories and keys with etcd v2's semantics.
//!
//! CONTRACT (the agent codes against exactly these names; bodies are being filled in).

use serde::{Deserialize, Serialize};

/// A write, as the HTTP layer decoded it from an etcd v2 request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Write {
    /// The key, as the client gave it (normalized by the store: leading `/`, no trailing `/`).
    pub key: String,
    /// What to do.
    pub op: WriteOp,
    /// The proposer's clock, used for TTLs (expiration = now_ms + ttl * 1000).
    pub now_ms: u64,
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
}

/// An etcd v2 error: `{"errorCode":100,"message":"Key not found","cause":"/foo","index":7}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code:?}: {cause}")]
pub struct Error {
    pub code: ErrorCode,
    pub cause: String,
    /// The store's index when the error happened.
    pub index: u64,
}

/// The key space.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Store {
    index: u64,
}

impl Store {
    /// The store's current index (X-Etcd-Index).
    pub fn index(&self) -> u64 {
        self.index
    }

    /// Applies a write.
    pub fn apply(&mut self, w: &Write) -> Result<Event, Error> {
        Err(Error { code: ErrorCode::RaftInternal, cause: w.key.clone(), index: self.index })
    }

    /// Removes every key that expired at or before `now_ms`.
    pub fn expire(&mut self, _now_ms: u64) -> Vec<Event> {
        Vec::new()
    }
}
