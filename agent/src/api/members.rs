//! `/v2/members`: the member list etcdctl syncs its endpoints from, and member add/remove.
//!
//! `POST /v2/members` takes etcd's `{"peerURLs": [...]}` alone, as `etcdctl member add`
//! (v2) sends it: the member is listed as etcd lists it, unstarted with the name `""`, under a
//! provisional id (flotilla derives a member's id from its name, which is not known yet); the
//! agent that joins with that peer URL replaces it under its own id. With a `name` the id is
//! final at once.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::Deserialize;
use serde_json::{Value, json as j};

use super::{Api, json};
use crate::cluster::{Error, MemberInfo};
use crate::raft::{Member, id_hex};

fn member_json(api: &Api, m: &MemberInfo) -> Value {
    j!({
        "id": id_hex(m.id),
        "name": m.member.name,
        "peerURLs": [api.cluster.peers().url(&m.member.peer_addr)],
        "clientURLs": m.member.client_urls,
        "isLearner": !m.voter,
    })
}

fn message(status: StatusCode, msg: String) -> Response {
    json(status, HeaderMap::new(), &j!({ "message": msg }))
}

fn cluster_error(e: Error) -> Response {
    match e {
        Error::Rejected(m) => message(StatusCode::CONFLICT, m),
        Error::NoLeader(m) | Error::Raft(m) => message(StatusCode::INTERNAL_SERVER_ERROR, m),
    }
}

/// `GET /v2/members`.
pub(super) async fn list(State(api): State<Api>) -> Response {
    let members: Vec<Value> = api
        .cluster
        .members()
        .iter()
        .map(|m| member_json(&api, m))
        .collect();
    json(
        StatusCode::OK,
        HeaderMap::new(),
        &j!({ "members": members }),
    )
}

/// `GET /v2/members/leader`.
pub(super) async fn leader(State(api): State<Api>) -> Response {
    let leader = api.cluster.leader();
    match api.cluster.members().iter().find(|m| Some(m.id) == leader) {
        Some(m) => json(StatusCode::OK, HeaderMap::new(), &member_json(&api, m)),
        None => message(StatusCode::SERVICE_UNAVAILABLE, "no leader".into()),
    }
}

#[derive(Deserialize)]
struct AddRequest {
    #[serde(rename = "peerURLs")]
    peer_urls: Vec<String>,
    /// Optional (etcd takes none): with it, the member id is final at once.
    #[serde(default)]
    name: Option<String>,
}

/// `POST /v2/members` with `{"peerURLs": ["http://host:2380"]}` (and optionally `"name"`):
/// registers a member that will start with `[cluster] join`.
pub(super) async fn add(State(api): State<Api>, body: Result<Bytes, BytesRejection>) -> Response {
    let body = match body {
        Ok(b) => b,
        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return message(
                e.status(),
                "the member request is larger than [api] max_body_bytes".into(),
            );
        }
        Err(e) => {
            return message(
                e.status(),
                format!("cannot read the member request: {}", e.body_text()),
            );
        }
    };
    let req: AddRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return message(
                StatusCode::BAD_REQUEST,
                format!("invalid member request: {e}"),
            );
        }
    };
    let name = req.name.unwrap_or_default();
    let [peer] = req.peer_urls.as_slice() else {
        return message(
            StatusCode::BAD_REQUEST,
            "exactly one peer URL is required".into(),
        );
    };
    let peer_addr = match crate::raft::network::peer_addr(peer) {
        Ok(a) => a,
        Err(e) => return message(StatusCode::BAD_REQUEST, e),
    };
    let member = Member {
        name,
        peer_addr,
        client_urls: Vec::new(),
    };
    let info = MemberInfo {
        id: member.id(),
        member: member.clone(),
        voter: false,
    };
    match api.cluster.add_learner(member).await {
        Ok(()) => json(
            StatusCode::CREATED,
            HeaderMap::new(),
            &member_json(&api, &info),
        ),
        Err(e) => cluster_error(e),
    }
}

/// `DELETE /v2/members/ID` (ID in hex, or the member's name).
pub(super) async fn remove(State(api): State<Api>, Path(id): Path<String>) -> Response {
    let members = api.cluster.members();
    let found = members
        .iter()
        .find(|m| id_hex(m.id) == id || m.member.name == id);
    let Some(m) = found else {
        return message(StatusCode::NOT_FOUND, format!("No such member: {id}"));
    };
    match api.cluster.remove(m.id).await {
        Ok(()) => Response::builder()
            .status(StatusCode::NO_CONTENT)
            .body(axum::body::Body::empty())
            .unwrap_or_default(),
        Err(e) => cluster_error(e),
    }
}
