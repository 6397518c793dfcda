//! `/flotilla/v1/machines`: the machine registry as the cluster committed it (who is up, who
//! the leader declared lost, and since when).

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use flotilla_state::machines::Status;
use serde_json::{Value, json as j};

use super::{Api, json};

/// `GET /flotilla/v1/machines`.
pub(super) async fn list(State(api): State<Api>) -> Response {
    let machines: Vec<Value> = {
        let a = api.cluster.applied();
        a.state
            .machines
            .by_name
            .values()
            .map(|m| {
                j!({
                    "name": m.name,
                    "machineID": m.machine_id,
                    "addr": m.addr,
                    "metadata": m.metadata,
                    "status": match m.status { Status::Up => "up", Status::Lost => "lost" },
                    "sinceMs": m.since_ms,
                })
            })
            .collect()
    };
    json(
        StatusCode::OK,
        HeaderMap::new(),
        &j!({ "machines": machines }),
    )
}
