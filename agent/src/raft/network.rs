//! The peer transport's client side: HTTP/1.1 with TCP_NODELAY over a pool of keep-alive
//! connections to the peer port, postcard bodies; over mutual TLS when `[cluster] tls_*` is set
//! (only the cluster CA is trusted, this member's certificate is presented, a peer's
//! certificate must name the address it is reached at and must not be in `tls_crl`; SIGHUP
//! swaps in a client built from the files read again, see [`Peers::reload`]). Raft RPCs,
//! forwarded writes, heartbeats and membership requests all travel this way.
//!
//! HTTP/1.1 rather than HTTP/2: hyper's HTTP/2 client sends a request body from a task of its
//! own, after the headers, which costs a scheduler round trip on every call; HTTP/1.1 writes
//! headers and body in one `writev`. openraft keeps one call in flight per follower, so the
//! pool stays small for Raft; concurrent forwarded writes each take a pooled connection.
//!
//! `AppendEntries` to a follower, the one call on every write's path, goes over a [`Link`]
//! instead: one keep-alive HTTP/1.1 connection per follower (plain or the same mutual TLS),
//! driven inside openraft's replication task for that follower. Through the pool, a call is
//! handed to the connection's own task and its answer handed back, two task hops per call on
//! the leader, per follower, per write.
//!
//! The leader never sends a commit index beyond its own durable log (see `log_store`): when it
//! must hold one back, it sends it in a commit-only `AppendEntries` once its log caught up, so a
//! follower does not wait for the next heartbeat to apply (and answer) a write.
//!
//! Three failures stay apart, as openraft needs them: a peer that cannot be connected to
//! ([`CallError::Unreachable`]), a transport failure mid-call ([`CallError::Network`]), and an
//! error the remote returned (carried inside the decoded `Result`, the caller's business).

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use openraft::LogId;
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

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::rustls::ClientConfig;
use tokio_rustls::rustls::pki_types::ServerName;

use super::log_store::Durable;
use super::{Member, NodeId, TypeConfig};
use crate::tls::TlsFiles;

/// How long a held-back commit index waits for the leader's log to be durable.
const COMMIT_FOLLOW_UP: Duration = Duration::from_secs(5);

/// Paths on the peer server.
pub(crate) mod path {
    pub(crate) const APPEND: &str = "/raft/append";
    pub(crate) const VOTE: &str = "/raft/vote";
    pub(crate) const SNAPSHOT: &str = "/raft/snapshot";
    /// A [`LeaderRequest`](crate::cluster::LeaderRequest) for the leader.
    pub(crate) const LEADER: &str = "/cluster/leader";
    /// A leader's [`TimeoutNow`](crate::cluster::TimeoutNow): stand for election now.
    pub(crate) const TIMEOUT_NOW: &str = "/cluster/timeout-now";
    /// A liveness heartbeat.
    pub(crate) const HEARTBEAT: &str = "/cluster/heartbeat";
    /// A unit's status or journal from the machine that runs it
    /// ([`OutputRequest`](crate::units::OutputRequest)).
    pub(crate) const UNIT_OUTPUT: &str = "/units/output";
}

/// The `host:port` of a peer URL (`http://` or `https://` in front is optional); an error
/// message for anything else.
pub(crate) fn peer_addr(url: &str) -> Result<String, String> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .unwrap_or(url);
    let addr = rest.trim_end_matches('/');
    if addr.is_empty() || !addr.contains(':') || addr.contains('/') {
        return Err(format!("peer URL {url:?} is not http(s)://HOST:PORT"));
    }
    Ok(addr.to_string())
}

/// How one call to a peer failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CallError {
    /// No connection could be made.
    #[error("peer {addr} is unreachable: {reason}")]
    Unreachable {
        /// The peer.
        addr: String,
        /// The connect error and its causes.
        reason: String,
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

/// An error and its causes on one line (reqwest puts a refused certificate in the causes).
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text
}

/// The HTTP client every peer call goes through (one pool of keep-alive connections).
/// Clones share it; [`Peers::reload`] swaps in a client built from new TLS files, and calls
/// in flight finish on the old one (with its connections).
#[derive(Clone)]
pub(crate) struct Peers {
    http: Arc<std::sync::RwLock<reqwest::Client>>,
    /// The TLS of [`Link`]s (`None`: plain), and how often it was replaced: a link made
    /// before the last reload connects again.
    links: Arc<std::sync::RwLock<(Option<Arc<ClientConfig>>, u64)>>,
    /// `http` or `https`.
    scheme: &'static str,
}

impl Peers {
    /// An HTTP/1.1 client with TCP_NODELAY and TCP keep-alive; mutual TLS with `tls`.
    pub(crate) fn new(tls: Option<&TlsFiles>) -> Result<Self, crate::tls::Error> {
        let (http, scheme) = Peers::client(tls)?;
        let link_tls = tls.map(crate::tls::peer_client_config).transpose()?;
        Ok(Peers {
            http: Arc::new(std::sync::RwLock::new(http)),
            links: Arc::new(std::sync::RwLock::new((link_tls, 0))),
            scheme,
        })
    }

    fn client(
        tls: Option<&TlsFiles>,
    ) -> Result<(reqwest::Client, &'static str), crate::tls::Error> {
        let builder = reqwest::Client::builder()
            .http1_only()
            .tcp_nodelay(true)
            .tcp_keepalive(Duration::from_secs(15))
            .connect_timeout(Duration::from_secs(1))
            .pool_idle_timeout(Duration::from_secs(90));
        let (builder, scheme) = match tls {
            Some(files) => (crate::tls::peer_client(builder, files)?, "https"),
            None => (builder, "http"),
        };
        let http = builder
            .build()
            .map_err(|source| crate::tls::Error::Client {
                path: tls.map(|f| f.cert.clone()).unwrap_or_default(),
                source,
            })?;
        Ok((http, scheme))
    }

    /// Builds a client from `tls` (read again) and makes it the one new calls use; on an
    /// error keeps the running one. Turning TLS on or off takes a restart (the scheme stays).
    pub(crate) fn reload(&self, tls: &TlsFiles) -> Result<(), crate::tls::Error> {
        let (http, _) = Peers::client(Some(tls))?;
        let link_tls = crate::tls::peer_client_config(tls)?;
        *self.http.write().unwrap_or_else(|p| p.into_inner()) = http;
        let mut links = self.links.write().unwrap_or_else(|p| p.into_inner());
        *links = (Some(link_tls), links.1 + 1);
        Ok(())
    }

    fn http(&self) -> reqwest::Client {
        self.http.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The URL of the peer at `addr` (`host:port`), as etcd shows peer URLs.
    pub(crate) fn url(&self, addr: &str) -> String {
        format!("{}://{addr}", self.scheme)
    }

    /// POSTs `req` to `http(s)://ADDR/PATH` and decodes the reply.
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
            .http()
            .post(format!("{}://{addr}{path}", self.scheme))
            .timeout(timeout)
            .body(body)
            .send()
            .await
            .map_err(|source| {
                if source.is_connect() {
                    CallError::Unreachable {
                        addr: addr.to_string(),
                        reason: chain(&source),
                    }
                } else {
                    network(chain(&source))
                }
            })?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| network(chain(&e)))?;
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
    /// How far this member's log is on disk: no commit index beyond it is sent.
    pub(crate) durable: Durable,
}

impl RaftNetworkFactory<TypeConfig> for Factory {
    type Network = Connection;

    async fn new_client(&mut self, target: NodeId, node: &Member) -> Connection {
        Connection {
            peers: self.peers.clone(),
            target,
            node: node.clone(),
            durable: self.durable.clone(),
            link: Link::new(node.peer_addr.clone()),
        }
    }
}

/// openraft's view of one peer.
pub(crate) struct Connection {
    peers: Peers,
    target: NodeId,
    node: Member,
    durable: Durable,
    /// The connection `AppendEntries` goes over.
    link: Link,
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
        let reply = self
            .peers
            .call(&self.node.peer_addr, path, req, option.hard_ttl())
            .await;
        self.rpc_result(reply)
    }

    /// openraft's view of a call's outcome: the transport's failure, or the remote's answer
    /// (its error as this peer's).
    #[allow(
        clippy::result_large_err,
        reason = "openraft's RPCError, which its RaftNetwork methods return"
    )]
    fn rpc_result<Resp, E: std::error::Error>(
        &self,
        reply: Result<Result<Resp, RaftError<NodeId, E>>, CallError>,
    ) -> Result<Resp, RPCError<NodeId, Member, RaftError<NodeId, E>>> {
        let reply = reply.map_err(|e| match e {
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

impl Connection {
    /// `AppendEntries` over this follower's [`Link`].
    async fn append(
        &mut self,
        rpc: &AppendEntriesRequest<TypeConfig>,
        option: &RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        let body = postcard::to_allocvec(rpc).map_err(|e| {
            RPCError::Network(NetworkError::new(&CallError::Network {
                addr: self.node.peer_addr.clone(),
                reason: format!("cannot encode the request: {e}"),
            }))
        })?;
        let reply = self
            .link
            .call(&self.peers, path::APPEND, body, option.hard_ttl())
            .await;
        self.rpc_result(reply)
    }
}

/// A byte stream, plain or TLS.
trait Stream: AsyncRead + AsyncWrite + Send + Sync + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Sync + Unpin> Stream for T {}

type LinkConnection = http1::Connection<TokioIo<Box<dyn Stream>>, Full<Bytes>>;

/// One keep-alive HTTP/1.1 connection to one peer, polled only by the task that calls
/// through it (no connection task, no hand-over between tasks). Connected on first use and
/// again after any failure, or after a TLS reload.
pub(crate) struct Link {
    addr: String,
    open: Option<Open>,
}

struct Open {
    sender: http1::SendRequest<Full<Bytes>>,
    conn: Pin<Box<LinkConnection>>,
    /// `conn` has finished (it must not be polled again).
    ended: bool,
    /// The TLS generation it was made with.
    generation: u64,
}

/// Runs `fut` while driving `conn` (which does the reading and writing for it); an error if
/// the connection ends before `fut` is done (a connection can end in the same poll that
/// delivers the answer's last bytes, as with `Connection: close`: `fut` is then done too).
async fn drive<F: std::future::Future>(
    conn: &mut Pin<Box<LinkConnection>>,
    ended: &mut bool,
    fut: F,
) -> Result<F::Output, String> {
    use futures::FutureExt;
    tokio::pin!(fut);
    if *ended {
        // What the connection delivered before it ended may be all `fut` needs.
        return fut
            .now_or_never()
            .ok_or_else(|| "the connection ended".to_string());
    }
    let end = tokio::select! {
        biased;
        out = &mut fut => return Ok(out),
        end = conn.as_mut() => end,
    };
    // Never polled again: the next call makes a new connection.
    *ended = true;
    if let Some(out) = fut.now_or_never() {
        return Ok(out);
    }
    Err(match end {
        Ok(()) => "the peer closed the connection".to_string(),
        Err(e) => chain(&e),
    })
}

impl Link {
    fn new(addr: String) -> Self {
        Link { addr, open: None }
    }

    /// POSTs `body` to `PATH` and returns the decoded reply; a failure closes the connection.
    async fn call<Resp: DeserializeOwned>(
        &mut self,
        peers: &Peers,
        path: &str,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<Resp, CallError> {
        let addr = self.addr.clone();
        let network = |reason: String| CallError::Network { addr, reason };
        let bytes = match tokio::time::timeout(timeout, self.exchange(peers, path, body)).await {
            Ok(Ok(bytes)) => bytes,
            Ok(Err(e)) => {
                self.open = None;
                return Err(e);
            }
            Err(_) => {
                self.open = None;
                return Err(network(format!("no answer within {timeout:?}")));
            }
        };
        postcard::from_bytes(&bytes).map_err(|e| {
            self.open = None;
            network(format!("cannot decode the reply: {e}"))
        })
    }

    async fn exchange(
        &mut self,
        peers: &Peers,
        path: &str,
        body: Vec<u8>,
    ) -> Result<Bytes, CallError> {
        let network = |reason: String| CallError::Network {
            addr: self.addr.clone(),
            reason,
        };
        let (tls, generation) = peers
            .links
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if self
            .open
            .as_ref()
            .is_some_and(|o| o.ended || o.generation != generation)
        {
            self.open = None;
        }
        // A connection kept from an earlier call may have been closed since (by the peer, or
        // by a call that was given up): nothing was sent on it, so a fresh one is tried.
        loop {
            let fresh = self.open.is_none();
            let open = match &mut self.open {
                Some(open) => open,
                None => {
                    let open = connect(&self.addr, tls.clone(), generation).await?;
                    self.open.insert(open)
                }
            };
            match drive(&mut open.conn, &mut open.ended, open.sender.ready())
                .await
                .and_then(|r| r.map_err(|e| chain(&e)))
            {
                Ok(()) => break,
                Err(_) if !fresh => self.open = None,
                Err(e) => return Err(network(e)),
            }
        }
        let open = self.open.as_mut().expect("connected above");
        let request = hyper::Request::post(path)
            .header(hyper::header::HOST, self.addr.as_str())
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| network(e.to_string()))?;
        let response = drive(
            &mut open.conn,
            &mut open.ended,
            open.sender.send_request(request),
        )
        .await
        .and_then(|r| r.map_err(|e| chain(&e)))
        .map_err(network)?;
        let status = response.status();
        let bytes = drive(
            &mut open.conn,
            &mut open.ended,
            response.into_body().collect(),
        )
        .await
        .and_then(|r| r.map_err(|e| chain(&e)))
        .map_err(network)?
        .to_bytes();
        if !status.is_success() {
            return Err(network(format!(
                "{status}: {}",
                String::from_utf8_lossy(&bytes)
            )));
        }
        Ok(bytes)
    }
}

/// Opens a connection to `addr` (TCP_NODELAY, keep-alive; TLS with `tls`).
async fn connect(
    addr: &str,
    tls: Option<Arc<ClientConfig>>,
    generation: u64,
) -> Result<Open, CallError> {
    let unreachable = |reason: String| CallError::Unreachable {
        addr: addr.to_string(),
        reason,
    };
    let tcp = tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(addr))
        .await
        .map_err(|_| unreachable("connect timed out after 1s".into()))?
        .map_err(|e| unreachable(e.to_string()))?;
    tcp.set_nodelay(true)
        .map_err(|e| unreachable(e.to_string()))?;
    let keepalive = socket2::TcpKeepalive::new().with_time(Duration::from_secs(15));
    socket2::SockRef::from(&tcp)
        .set_tcp_keepalive(&keepalive)
        .map_err(|e| unreachable(e.to_string()))?;
    let stream: Box<dyn Stream> = match tls {
        None => Box::new(tcp),
        Some(config) => {
            let host = addr
                .rsplit_once(':')
                .map_or(addr, |(h, _)| h)
                .trim_start_matches('[')
                .trim_end_matches(']');
            let name = ServerName::try_from(host.to_string())
                .map_err(|e| unreachable(format!("{host:?} is not a server name: {e}")))?;
            let tls = tokio::time::timeout(
                Duration::from_secs(3),
                tokio_rustls::TlsConnector::from(config).connect(name, tcp),
            )
            .await
            .map_err(|_| unreachable("TLS handshake timed out after 3s".into()))?
            .map_err(|e| unreachable(format!("TLS handshake: {}", chain(&e))))?;
            Box::new(tls)
        }
    };
    let (sender, conn) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| unreachable(chain(&e)))?;
    Ok(Open {
        sender,
        conn: Box::pin(conn),
        ended: false,
        generation,
    })
}

impl RaftNetwork<TypeConfig> for Connection {
    async fn append_entries(
        &mut self,
        mut rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        let held_back = hold_back_commit(&mut rpc, self.durable.last());
        let reply = self.append(&rpc, &option).await;
        if let (Some(commit), Ok(AppendEntriesResponse::Success)) = (held_back, &reply) {
            // The follower holds everything up to `matched` now: once this log is durable up
            // to the commit index, tell it (the reply does not matter; a later message carries
            // the commit index anyway).
            let follow_up = AppendEntriesRequest::<TypeConfig> {
                vote: rpc.vote,
                prev_log_id: rpc.entries.last().map(|e| e.log_id).or(rpc.prev_log_id),
                entries: Vec::new(),
                leader_commit: Some(commit),
            };
            let (peers, durable, addr) = (
                self.peers.clone(),
                self.durable.clone(),
                self.node.peer_addr.clone(),
            );
            tokio::spawn(async move {
                if durable.wait(commit.index, COMMIT_FOLLOW_UP).await.is_ok() {
                    let _ = peers
                        .call::<_, Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>>(
                            &addr,
                            path::APPEND,
                            &follow_up,
                            COMMIT_FOLLOW_UP,
                        )
                        .await;
                }
            });
        }
        reply
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

/// Lowers `rpc`'s commit index to the last entry durable in this (the leader's) log, and
/// returns the commit index it held back, if it did. An entry in the leader's log at or
/// before its commit index is committed, so the lowered index is still a committed one.
fn hold_back_commit(
    rpc: &mut AppendEntriesRequest<TypeConfig>,
    durable: Option<LogId<NodeId>>,
) -> Option<LogId<NodeId>> {
    let commit = rpc.leader_commit?;
    match durable {
        Some(d) if d.index >= commit.index => None,
        _ => {
            rpc.leader_commit = durable.filter(|d| d.index < commit.index);
            Some(commit)
        }
    }
}

#[cfg(test)]
mod tests {
    use openraft::CommittedLeaderId;

    use super::*;

    fn id(term: u64, index: u64) -> LogId<NodeId> {
        LogId::new(CommittedLeaderId::new(term, 1), index)
    }

    fn heartbeat(commit: Option<LogId<NodeId>>) -> AppendEntriesRequest<TypeConfig> {
        AppendEntriesRequest {
            vote: openraft::Vote::new_committed(2, 1),
            prev_log_id: Some(id(2, 9)),
            entries: Vec::new(),
            leader_commit: commit,
        }
    }

    #[test]
    fn a_commit_index_beyond_the_durable_log_is_held_back() {
        let mut rpc = heartbeat(Some(id(2, 9)));
        assert_eq!(hold_back_commit(&mut rpc, Some(id(2, 7))), Some(id(2, 9)));
        assert_eq!(rpc.leader_commit, Some(id(2, 7)));

        let mut rpc = heartbeat(Some(id(2, 9)));
        assert_eq!(hold_back_commit(&mut rpc, None), Some(id(2, 9)));
        assert_eq!(rpc.leader_commit, None);
    }

    #[test]
    fn a_durable_commit_index_is_sent_as_it_is() {
        for durable in [id(2, 9), id(2, 12)] {
            let mut rpc = heartbeat(Some(id(2, 9)));
            assert_eq!(hold_back_commit(&mut rpc, Some(durable)), None);
            assert_eq!(rpc.leader_commit, Some(id(2, 9)));
        }
        let mut rpc = heartbeat(None);
        assert_eq!(hold_back_commit(&mut rpc, Some(id(2, 3))), None);
        assert_eq!(rpc.leader_commit, None);
    }

    /// A server that answers every POST with `n` (postcard), counting connections, and
    /// closes each connection after one answer.
    async fn one_shot_server() -> (String, Arc<std::sync::atomic::AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binds");
        let addr = listener.local_addr().expect("addr").to_string();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let n = count.fetch_add(1, std::sync::atomic::Ordering::SeqCst) as u64;
                let service = hyper::service::service_fn(move |_req| async move {
                    let body = postcard::to_allocvec(&n).expect("encodes");
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::from(
                        body,
                    ))))
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .keep_alive(false)
                        .serve_connection(TokioIo::new(tcp), service),
                );
            }
        });
        (addr, accepted)
    }

    #[tokio::test]
    async fn a_link_connects_again_when_the_peer_closed_its_connection() {
        let (addr, accepted) = one_shot_server().await;
        let peers = Peers::new(None).expect("client");
        let mut link = Link::new(addr);
        let timeout = Duration::from_secs(10);
        for expected in 0..3u64 {
            let got: u64 = link
                .call(&peers, "/x", Vec::new(), timeout)
                .await
                .expect("answered");
            assert_eq!(got, expected);
        }
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_link_to_nothing_is_unreachable() {
        let free = std::net::TcpListener::bind("127.0.0.1:0").expect("binds");
        let addr = free.local_addr().expect("addr").to_string();
        drop(free);
        let peers = Peers::new(None).expect("client");
        let e = Link::new(addr)
            .call::<u64>(&peers, "/x", Vec::new(), Duration::from_secs(10))
            .await
            .expect_err("nobody listens");
        assert!(matches!(e, CallError::Unreachable { .. }), "{e}");
    }

    #[test]
    fn peer_urls_give_their_address() {
        assert_eq!(peer_addr("http://10.0.0.1:2380").unwrap(), "10.0.0.1:2380");
        assert_eq!(peer_addr("https://n1:2380/").unwrap(), "n1:2380");
        assert_eq!(peer_addr("[::1]:2380").unwrap(), "[::1]:2380");
        for bad in ["", "http://", "http://n1", "https://n1:2380/x"] {
            assert!(peer_addr(bad).is_err(), "{bad:?}");
        }
    }
}
