//! `/v2/stats/*`: the statistics endpoints, with the fields etcd reports that flotilla knows.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::json as j;

use super::{Api, json};
use crate::raft::id_hex;

fn rfc3339(t: SystemTime) -> String {
    let ms = t
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    flotilla_state::kv::json::rfc3339(ms)
}

/// `GET /v2/stats/self`.
pub(super) async fn this(State(api): State<Api>) -> Response {
    let leader = api.cluster.leader();
    let state = if api.cluster.is_leader() {
        "StateLeader"
    } else {
        "StateFollower"
    };
    let body = j!({
        "name": api.cluster.me().name,
        "id": id_hex(api.cluster.id()),
        "state": state,
        "startTime": rfc3339(api.started),
        "leaderInfo": { "leader": leader.map(id_hex).unwrap_or_default() },
        "recvAppendRequestCnt": 0,
        "sendAppendRequestCnt": 0,
    });
    json(StatusCode::OK, HeaderMap::new(), &body)
}

/// `GET /v2/stats/leader`: only the leader answers, as in etcd.
pub(super) async fn leader(State(api): State<Api>) -> Response {
    if !api.cluster.is_leader() {
        return json(
            StatusCode::FORBIDDEN,
            HeaderMap::new(),
            &j!({"message": "not current leader"}),
        );
    }
    let followers: serde_json::Map<String, serde_json::Value> = api
        .cluster
        .members()
        .iter()
        .filter(|m| m.id != api.cluster.id())
        .map(|m| (id_hex(m.id), j!({})))
        .collect();
    json(
        StatusCode::OK,
        HeaderMap::new(),
        &j!({"leader": id_hex(api.cluster.id()), "followers": followers}),
    )
}

/// `GET /v2/stats/store`.
pub(super) async fn store(State(api): State<Api>) -> Response {
    let (index, machines) = {
        let a = api.cluster.applied();
        (a.state.kv.index(), a.state.machines.by_name.len())
    };
    json(
        StatusCode::OK,
        HeaderMap::new(),
        &j!({"etcdIndex": index, "machines": machines}),
    )
}
