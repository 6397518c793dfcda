//! The peer server on port 2380: Raft RPCs, requests for the leader, and heartbeats, as
//! postcard bodies over HTTP/1.1 (or HTTP/2) with keep-alive connections and TCP_NODELAY.
//! With `[cluster] tls_*` it speaks mutual TLS only: a peer without a certificate from the
//! cluster CA never completes a handshake, so it reaches none of these handlers.

use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, VoteRequest,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::cluster::{Cluster, LeaderRequest, TimeoutNow};
use crate::listener::Limits;
use crate::liveness::{Heartbeat, Liveness};
use crate::raft::TypeConfig;
use crate::raft::network::path;
use crate::tls::{Acceptor, ServerTls};

/// The largest peer message (a batch of log entries or a snapshot chunk).
const MAX_PEER_BODY: usize = 64 * 1024 * 1024;
/// What the peer port allows. Members handshake in milliseconds, so a handshake gets 3 s; the
/// client API's are `[api]` keys instead. A member keeps a few pooled connections to each
/// other member, and on one host (tests) every member connects from the same address.
const LIMITS: Limits = Limits {
    max_connections: 4096,
    max_connections_per_client: 1024,
    max_handshakes_per_client: 16,
    handshake_timeout: Duration::from_secs(3),
    header_timeout: Duration::from_secs(10),
    idle_timeout: Duration::from_secs(120),
};
/// How long an `AppendEntries` answer waits for its entries to be durable.
const DURABLE_DEADLINE: Duration = Duration::from_secs(5);

#[derive(Clone)]
struct Peer {
    cluster: Cluster,
    liveness: Liveness,
}

/// Serves the peer API on `listener` until `cancel`; mutual TLS with `tls`; connections within
/// [`LIMITS`] (see `crate::listener`).
pub(crate) async fn serve(
    listener: TcpListener,
    tls: Option<ServerTls>,
    cluster: Cluster,
    liveness: Liveness,
    cancel: CancellationToken,
) {
    let app = Router::new()
        .route(path::APPEND, post(append))
        .route(path::VOTE, post(vote))
        .route(path::SNAPSHOT, post(snapshot))
        .route(path::LEADER, post(leader))
        .route(path::HEARTBEAT, post(heartbeat))
        .route(path::TIMEOUT_NOW, post(timeout_now))
        .route(path::UNIT_OUTPUT, post(unit_output))
        .layer(DefaultBodyLimit::max(MAX_PEER_BODY))
        .with_state(Peer { cluster, liveness });
    let tls = tls.map(|tls| Acceptor::members_only(tls, "peer server"));
    crate::listener::serve(listener, tls, app, LIMITS, "peer server", cancel).await;
}

fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, Box<Response>> {
    postcard::from_bytes(body).map_err(|e| {
        Box::new(
            (
                StatusCode::BAD_REQUEST,
                format!("cannot decode the request: {e}"),
            )
                .into_response(),
        )
    })
}

fn encode<T: Serialize>(v: &T) -> Response {
    match postcard::to_allocvec(v) {
        Ok(b) => b.into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode the reply: {e}"),
        )
            .into_response(),
    }
}

/// Appends through Raft, and answers a success only once the entries it claims are durable in
/// this member's log (the log reports appends flushed before they are: see `raft::log_store`),
/// and not replaced by a truncation meanwhile; else the leader hears a failure and resends.
async fn append(State(p): State<Peer>, body: Bytes) -> Response {
    let req = match decode::<AppendEntriesRequest<TypeConfig>>(&body) {
        Ok(req) => req,
        Err(r) => return *r,
    };
    p.cluster.stats().received_append(&req, body.len());
    let matched = req.entries.last().map(|e| e.log_id).or(req.prev_log_id);
    let durable = p.cluster.durable();
    let truncations = durable.truncations();
    let reply = p.cluster.raft().append_entries(req).await;
    let claimed = match &reply {
        Ok(AppendEntriesResponse::Success) => matched,
        Ok(AppendEntriesResponse::PartialSuccess(m)) => *m,
        _ => None,
    };
    if let Some(claimed) = claimed {
        if let Err(e) = durable.wait(claimed.index, DURABLE_DEADLINE).await {
            return (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response();
        }
        if durable.truncations() != truncations {
            return (
                StatusCode::CONFLICT,
                format!("the raft log was truncated while entry {claimed} was being stored"),
            )
                .into_response();
        }
    }
    encode(&reply)
}

async fn vote(State(p): State<Peer>, body: Bytes) -> Response {
    match decode::<VoteRequest<u64>>(&body) {
        Ok(req) => encode(&p.cluster.raft().vote(req).await),
        Err(r) => *r,
    }
}

async fn snapshot(State(p): State<Peer>, body: Bytes) -> Response {
    match decode::<InstallSnapshotRequest<TypeConfig>>(&body) {
        Ok(req) => encode(&p.cluster.raft().install_snapshot(req).await),
        Err(r) => *r,
    }
}

async fn leader(State(p): State<Peer>, body: Bytes) -> Response {
    match decode::<LeaderRequest>(&body) {
        Ok(req) => encode(&p.cluster.on_leader(req).await),
        Err(r) => *r,
    }
}

async fn timeout_now(State(p): State<Peer>, body: Bytes) -> Response {
    match decode::<TimeoutNow>(&body) {
        Ok(req) => encode(&p.cluster.timeout_now(req).await),
        Err(r) => *r,
    }
}

async fn heartbeat(State(p): State<Peer>, body: Bytes) -> Response {
    match decode::<Heartbeat>(&body) {
        Ok(hb) => {
            p.liveness.seen(hb);
            encode(&())
        }
        Err(r) => *r,
    }
}

async fn unit_output(State(p): State<Peer>, body: Bytes) -> Response {
    match decode::<crate::units::OutputRequest>(&body) {
        Ok(req) => encode(&crate::units::output_for_peer(&p.cluster, req).await),
        Err(r) => *r,
    }
}
