//! `/v2/stats/*`: the statistics endpoints, in etcd's shapes, from this member's real Raft
//! traffic (`raft::stats`): append requests sent and received with their rates, the leader
//! and since when it leads, and on the leader each follower's append latency and counts.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use openraft::ServerState;
use serde_json::{Map, Value, json as j};

use super::{Api, json};
use crate::raft::id_hex;
use crate::raft::stats::go_duration;

fn rfc3339(t: SystemTime) -> String {
    let ms = t
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    flotilla_state::kv::json::rfc3339(ms)
}

/// `GET /v2/stats/self`: the rates appear only when not zero, as etcd's `omitempty`.
pub(super) async fn this(State(api): State<Api>) -> Response {
    let (server_state, current) = {
        let m = api.cluster.raft().metrics();
        let m = m.borrow();
        (m.state, m.current_leader.map(|l| (l, m.current_term)))
    };
    let state = match server_state {
        ServerState::Leader => "StateLeader",
        ServerState::Candidate => "StateCandidate",
        ServerState::Follower | ServerState::Learner | ServerState::Shutdown => "StateFollower",
    };
    let s = api.cluster.stats().this(current);
    let uptime = SystemTime::now()
        .duration_since(s.leader_since)
        .unwrap_or_default();
    let mut body = Map::new();
    body.insert("name".into(), j!(api.cluster.me().name));
    body.insert("id".into(), j!(id_hex(api.cluster.id())));
    body.insert("state".into(), j!(state));
    body.insert("startTime".into(), j!(rfc3339(api.started)));
    body.insert(
        "leaderInfo".into(),
        j!({
            "leader": s.leader.map(id_hex).unwrap_or_default(),
            "uptime": go_duration(uptime),
            "startTime": rfc3339(s.leader_since),
        }),
    );
    body.insert("recvAppendRequestCnt".into(), j!(s.recv_append));
    insert_rate(&mut body, "recvPkgRate", s.recv_rates.0);
    insert_rate(&mut body, "recvBandwidthRate", s.recv_rates.1);
    body.insert("sendAppendRequestCnt".into(), j!(s.send_append));
    insert_rate(&mut body, "sendPkgRate", s.send_rates.0);
    insert_rate(&mut body, "sendBandwidthRate", s.send_rates.1);
    json(StatusCode::OK, HeaderMap::new(), &Value::Object(body))
}

/// A rate, left out when zero (etcd's `omitempty`).
fn insert_rate(body: &mut Map<String, Value>, name: &str, rate: f64) {
    if rate != 0.0 {
        body.insert(name.into(), j!(rate));
    }
}

/// `GET /v2/stats/leader`: only the leader answers, as in etcd; every other member of the
/// membership is listed, with what this member measured of its append round trips (etcd's
/// latency fields in milliseconds).
pub(super) async fn leader(State(api): State<Api>) -> Response {
    if !api.cluster.is_leader() {
        return json(
            StatusCode::FORBIDDEN,
            HeaderMap::new(),
            &j!({"message": "not current leader"}),
        );
    }
    let measured = api.cluster.stats().followers();
    let followers: Map<String, Value> = api
        .cluster
        .members()
        .iter()
        .filter(|m| m.id != api.cluster.id())
        .map(|m| {
            let f = measured.get(&m.id).cloned().unwrap_or_default();
            let stats = j!({
                "latency": {
                    "current": f.current,
                    "average": f.average,
                    "standardDeviation": f.standard_deviation,
                    "minimum": f.minimum,
                    "maximum": f.maximum,
                },
                "counts": { "fail": f.fail, "success": f.success },
            });
            (id_hex(m.id), stats)
        })
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
