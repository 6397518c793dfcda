//! Consensus: openraft's type configuration, the member identity, and the pieces openraft is
//! built from (durable log, state machine with snapshots, peer network client).
//!
//! A log entry carries a *batch* of [`Proposal`]s (a command and its request id): the proposer
//! collects the writes that arrive while the previous batch is being committed, so one fsync
//! and one round trip serve many clients. The state machine applies each request id at most
//! once ([`flotilla_state::sessions`]), so a proposal sent again after a failure in transit is
//! answered, not applied twice.

pub(crate) mod log_store;
pub(crate) mod network;
pub(crate) mod proposer;
pub(crate) mod state_machine;
pub(crate) mod stats;
pub(crate) mod wal;

use std::fmt;
use std::io::Cursor;

use flotilla_state::sessions::{Outcome, Proposal};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The node id of a member: the first 8 bytes of the SHA-256 of its name.
pub(crate) type NodeId = u64;

openraft::declare_raft_types!(
    /// flotilla's Raft types.
    pub(crate) TypeConfig:
        D = Vec<Proposal>,
        R = Vec<Outcome>,
        NodeId = NodeId,
        Node = Member,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// The running Raft node.
pub(crate) type Raft = openraft::Raft<TypeConfig>;

/// A member of the Raft group as the membership config records it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Member {
    /// `name` from the member's config.
    pub(crate) name: String,
    /// `host:port` its peer server listens on (`[cluster] advertise_peer`).
    pub(crate) peer_addr: String,
    /// The client URLs it serves the HTTP API on (`[api] advertise`); empty until the member
    /// announced them.
    pub(crate) client_urls: Vec<String>,
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.name, self.peer_addr)
    }
}

impl Member {
    /// The member's node id: [`node_id`] of its name; a member added without a name (etcd's
    /// "unstarted" member, `etcdctl member add`) gets a provisional one from its peer address,
    /// until an agent with that peer address joins and takes its place.
    pub(crate) fn id(&self) -> NodeId {
        if self.name.is_empty() {
            node_id(&format!("unstarted@{}", self.peer_addr))
        } else {
            node_id(&self.name)
        }
    }

    /// Whether the member was added without a name and no agent has joined in its place yet.
    pub(crate) fn is_unstarted(&self) -> bool {
        self.name.is_empty()
    }
}

/// The node id a member name maps to.
pub(crate) fn node_id(name: &str) -> NodeId {
    let digest = Sha256::digest(name.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

/// A node id as etcd prints member ids: 16 lowercase hex digits.
pub(crate) fn id_hex(id: NodeId) -> String {
    format!("{id:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Stores;

    impl
        openraft::testing::StoreBuilder<
            TypeConfig,
            log_store::LogStore,
            state_machine::StateMachine,
            tempfile::TempDir,
        > for Stores
    {
        async fn build(
            &self,
        ) -> Result<
            (
                tempfile::TempDir,
                log_store::LogStore,
                state_machine::StateMachine,
            ),
            openraft::StorageError<NodeId>,
        > {
            let dir = tempfile::tempdir().expect("temp dir");
            let log = log_store::LogStore::open(dir.path()).expect("log store opens");
            let sm = state_machine::StateMachine::open(dir.path(), crate::watch::Hub::default())
                .expect("sm opens");
            Ok((dir, log, sm))
        }
    }

    /// openraft's own conformance suite for log stores and state machines.
    #[test]
    fn storage_passes_the_openraft_suite() {
        openraft::testing::Suite::test_all(Stores).expect("storage suite");
    }

    #[test]
    fn node_ids_are_stable_and_distinct() {
        assert_eq!(node_id("node1"), node_id("node1"));
        assert_ne!(node_id("node1"), node_id("node2"));
        assert_eq!(id_hex(0xab), "00000000000000ab");
        let named = Member {
            name: "node1".into(),
            peer_addr: "10.0.0.1:2380".into(),
            client_urls: Vec::new(),
        };
        assert_eq!(named.id(), node_id("node1"));
        let unstarted = |addr: &str| Member {
            name: String::new(),
            peer_addr: addr.into(),
            client_urls: Vec::new(),
        };
        assert_eq!(
            unstarted("10.0.0.4:2380").id(),
            unstarted("10.0.0.4:2380").id()
        );
        assert_ne!(
            unstarted("10.0.0.4:2380").id(),
            unstarted("10.0.0.5:2380").id()
        );
        assert_ne!(unstarted("10.0.0.4:2380").id(), node_id(""));
    }
}
