//! The peer transport's client side: HTTP/2 (prior knowledge, keep-alive, multiplexed) to the
//! peer port, postcard bodies. Raft RPCs, forwarded writes, heartbeats and membership requests
//! all travel this way.
//!
//! Three failures stay apart, as openraft needs them: a peer that cannot be connected to
//! ([`CallError::Unreachable`]), a transport failure mid-call ([`CallError::Network`]), and an
//! error the remote returned (carried inside the decoded `Result`, the caller's business).

use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{Member, NodeId, TypeConfig};

/// Paths on the peer server.
pub(crate) mod path {
    pub(crate) const APPEND: &str = "/raft/append";
    pub(crate) const VOTE: &str = "/raft/vote";
    pub(crate) const SNAPSHOT: &str = "/raft/snapshot";
    /// A [`LeaderRequest`](crate::cluster::LeaderRequest) for the leader.
    pub(crate) const LEADER: &str = "/cluster/leader";
    /// A liveness heartbeat.
    pub(crate) const HEARTBEAT: &str = "/cluster/heartbeat";
}

/// How one call to a peer failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CallError {
    /// No connection could be made.
    #[error("peer {addr} is unreachable: {source}")]
    Unreachable {
        /// The peer.
        addr: String,
        /// The connect error.
        source: reqwest::Error,
    },
    /// The connection failed during the call, or the answer was not understood.
    #[error("call to peer {addr} failed: {reason}")]
    Network {
        /// The peer.
        addr: String,
        /// What happened.
        reason: String,
    },
}

/// The HTTP/2 client every peer call goes through (one pool of keep-alive connections).
#[derive(Clone)]
pub(crate) struct Peers {
    http: reqwest::Client,
}

impl Peers {
    /// A client with HTTP/2 prior knowledge and TCP keep-alive.
    pub(crate) fn new() -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .http2_prior_knowledge()
            .tcp_nodelay(true)
            .tcp_keepalive(Duration::from_secs(15))
            .http2_keep_alive_interval(Duration::from_secs(5))
            .http2_keep_alive_while_idle(true)
            .connect_timeout(Duration::from_secs(1))
            .pool_idle_timeout(Duration::from_secs(90))
            .build()?;
        Ok(Peers { http })
    }

    /// POSTs `req` to `http://ADDR/PATH` and decodes the reply.
    pub(crate) async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        addr: &str,
        path: &str,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, CallError> {
        let network = |reason: String| CallError::Network {
            addr: addr.to_string(),
            reason,
        };
        let body = postcard::to_allocvec(req)
            .map_err(|e| network(format!("cannot encode the request: {e}")))?;
        let resp = self
            .http
            .post(format!("http://{addr}{path}"))
            .timeout(timeout)
            .body(body)
            .send()
            .await
            .map_err(|source| {
                if source.is_connect() {
                    CallError::Unreachable {
                        addr: addr.to_string(),
                        source,
                    }
                } else {
                    network(source.to_string())
                }
            })?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| network(e.to_string()))?;
        if !status.is_success() {
            return Err(network(format!(
                "{status}: {}",
                String::from_utf8_lossy(&bytes)
            )));
        }
        postcard::from_bytes(&bytes).map_err(|e| network(format!("cannot decode the reply: {e}")))
    }
}

/// Hands openraft one [`Connection`] per target.
pub(crate) struct Factory {
    /// The shared client.
    pub(crate) peers: Peers,
}

impl RaftNetworkFactory<TypeConfig> for Factory {
    type Network = Connection;

    async fn new_client(&mut self, target: NodeId, node: &Member) -> Connection {
        Connection {
            peers: self.peers.clone(),
            target,
            node: node.clone(),
        }
    }
}

/// openraft's view of one peer.
pub(crate) struct Connection {
    peers: Peers,
    target: NodeId,
    node: Member,
}

impl Connection {
    async fn rpc<Req, Resp, E>(
        &self,
        path: &str,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, Member, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let reply: Result<Resp, RaftError<NodeId, E>> = self
            .peers
            .call(&self.node.peer_addr, path, req, option.hard_ttl())
            .await
            .map_err(|e| match e {
                CallError::Unreachable { .. } => RPCError::Unreachable(Unreachable::new(&e)),
                CallError::Network { .. } => RPCError::Network(NetworkError::new(&e)),
            })?;
        reply.map_err(|e| {
            RPCError::RemoteError(RemoteError::new_with_node(
                self.target,
                self.node.clone(),
                e,
            ))
        })
    }
}

impl RaftNetwork<TypeConfig> for Connection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        self.rpc(path::APPEND, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, Member, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.rpc(path::SNAPSHOT, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        self.rpc(path::VOTE, &rpc, &option).await
    }
}
