//! `/flotilla/v1/units`: flotctl's unit API over HTTP, a thin adapter over [`crate::units`]
//! (which the D-Bus interface calls too). Submit and change units, list them with the states
//! their machines report, destroy them, and read `systemctl status` / `journalctl` of a unit on
//! the machine that runs it (another machine's agent answers through its own client API).
//!
//! - `GET /flotilla/v1/units`: every unit, its desired and current (fleet's) state, machines
//!   and reported states.
//! - `PUT /flotilla/v1/units/NAME` with `{"text"?, "replace"?, "desired"?, "transition"?}`:
//!   submit (a malformed unit is answered 400 with its `file:line:column` diagnostics), then
//!   set the desired state (`inactive|loaded|launched`) or apply a verb (`load|start|stop|
//!   unload`, or `restart`: a rolling restart, one machine after the other).
//! - `DELETE /flotilla/v1/units/NAME`: destroy.
//! - `GET /flotilla/v1/units/NAME/status`, `GET /flotilla/v1/units/NAME/journal?lines=N`:
//!   run on the machine the unit is assigned to (`?machine=M` to pick one of several).

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use flotilla_state::units::{self as registry, Desired, Then, Transition};
use serde::Deserialize;
use serde_json::{Value, json as j};

use super::{Api, json};
use crate::units::{self, Error, Output, UnitView};

/// The body of `PUT /flotilla/v1/units/NAME`.
#[derive(Debug, Deserialize)]
pub(super) struct Put {
    text: Option<String>,
    #[serde(default)]
    replace: bool,
    desired: Option<String>,
    transition: Option<String>,
}

fn error(status: StatusCode, message: &str) -> Response {
    json(status, HeaderMap::new(), &j!({ "error": message }))
}

/// The response for a failed unit operation: its status code, `{"error"}` and, for a malformed
/// unit, `{"diagnostics"}`; a remote agent's answer is passed on as it came.
fn unit_error(e: &Error) -> Response {
    let status = match e {
        Error::Unit(registry::Error::NotFound(_) | registry::Error::NoTemplate { .. })
        | Error::NotAssigned { .. }
        | Error::NotScheduled(_)
        | Error::Unschedulable { .. } => StatusCode::NOT_FOUND,
        Error::Unit(
            registry::Error::Exists { .. }
            | registry::Error::NotLoaded(_)
            | registry::Error::NotLaunched(_)
            | registry::Error::NotPlaced(_),
        ) => StatusCode::CONFLICT,
        Error::Unit(_) => StatusCode::BAD_REQUEST,
        Error::Cluster(_) => StatusCode::SERVICE_UNAVAILABLE,
        Error::NoPeer(_) | Error::Unreachable { .. } => StatusCode::BAD_GATEWAY,
        Error::Run { .. } | Error::Unexpected { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        Error::Remote { status, body, .. } => {
            let status = StatusCode::from_u16(*status).unwrap_or(StatusCode::BAD_GATEWAY);
            return json(status, HeaderMap::new(), body);
        }
    };
    let mut body = j!({ "error": e.to_string() });
    if let Error::Unit(registry::Error::Malformed { diagnostics, .. }) = e {
        body["diagnostics"] = j!(diagnostics);
    }
    json(status, HeaderMap::new(), &body)
}

fn view(v: &UnitView) -> Value {
    let states: Vec<Value> = v
        .states
        .iter()
        .map(|(machine, s)| {
            j!({
                "machine": machine,
                "load": s.load,
                "active": s.active,
                "sub": s.sub,
                "sinceMs": s.since_ms,
                "mainPid": s.main_pid,
                "result": s.result,
            })
        })
        .collect();
    j!({
        "name": v.name,
        "hash": v.hash,
        "desired": v.desired.as_str(),
        "state": v.current(),
        "machines": v.machines,
        "states": states,
        "unschedulable": v.unschedulable,
    })
}

/// `GET /flotilla/v1/units`.
pub(super) async fn list(State(api): State<Api>) -> Response {
    let units: Vec<Value> = units::list(&api.cluster).await.iter().map(view).collect();
    json(StatusCode::OK, HeaderMap::new(), &j!({ "units": units }))
}

/// `GET /flotilla/v1/units/NAME`: the unit with its text.
pub(super) async fn get(State(api): State<Api>, Path(name): Path<String>) -> Response {
    match units::get(&api.cluster, &name) {
        Ok(r) => json(
            StatusCode::OK,
            HeaderMap::new(),
            &j!({ "name": r.name, "hash": r.hash, "desired": r.desired.as_str(), "text": r.text }),
        ),
        Err(e) => unit_error(&e),
    }
}

/// `PUT /flotilla/v1/units/NAME`.
pub(super) async fn put(
    State(api): State<Api>,
    Path(name): Path<String>,
    Json(body): Json<Put>,
) -> Response {
    let cluster = &api.cluster;
    // What follows the submission (if any): a desired state, a verb, or a rolling restart.
    let mut restart = false;
    let then = match (body.desired, body.transition) {
        (Some(d), _) => match d.parse::<Desired>() {
            Ok(desired) => Some(Then::Desired(desired)),
            Err(e) => return unit_error(&Error::Unit(e)),
        },
        (None, Some(t)) => match t.as_str() {
            "load" => Some(Then::Transition(Transition::Load)),
            "start" => Some(Then::Transition(Transition::Start)),
            "stop" => Some(Then::Transition(Transition::Stop)),
            "unload" => Some(Then::Transition(Transition::Unload)),
            "restart" => {
                restart = true;
                None
            }
            other => {
                return error(
                    StatusCode::BAD_REQUEST,
                    &format!(
                        "unknown transition '{other}': expected load, start, stop, unload or restart"
                    ),
                );
            }
        },
        (None, None) => None,
    };
    let mut changed = false;
    let done = match (body.text, then) {
        // One commit for both.
        (Some(text), Some(then)) => {
            units::submit_then(cluster, &name, text, body.replace, then).await
        }
        (text, then) => {
            if let Some(text) = text {
                match units::submit(cluster, &name, text, body.replace).await {
                    Ok(c) => changed = c,
                    Err(e) => return unit_error(&e),
                }
            }
            match then {
                Some(Then::Desired(desired)) => units::set_desired(cluster, &name, desired).await,
                Some(Then::Transition(t)) => units::transition(cluster, &name, t).await,
                None if restart => units::restart(cluster, &name).await,
                None => Ok(false),
            }
        }
    };
    match done {
        Ok(c) => json(
            StatusCode::OK,
            HeaderMap::new(),
            &j!({ "name": name, "changed": changed | c }),
        ),
        Err(e) => unit_error(&e),
    }
}

/// `DELETE /flotilla/v1/units/NAME`.
pub(super) async fn destroy(State(api): State<Api>, Path(name): Path<String>) -> Response {
    match units::destroy(&api.cluster, &name).await {
        Ok(_) => json(StatusCode::OK, HeaderMap::new(), &j!({ "name": name })),
        Err(e) => unit_error(&e),
    }
}

fn output(result: Result<Output, Error>) -> Response {
    match result {
        Ok(o) => json(
            StatusCode::OK,
            HeaderMap::new(),
            &j!({ "machine": o.machine, "output": o.output, "exitCode": o.exit_code }),
        ),
        Err(e) => unit_error(&e),
    }
}

/// `GET /flotilla/v1/units/NAME/status`.
pub(super) async fn status(
    State(api): State<Api>,
    Path(name): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let machine = q.get("machine").map(String::as_str);
    output(units::status(&api.cluster, &name, machine).await)
}

/// `GET /flotilla/v1/units/NAME/journal?lines=N[&cursor=C]` (`cursor`, even empty: follow).
pub(super) async fn journal(
    State(api): State<Api>,
    Path(name): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let lines = match q.get("lines").map(|l| l.parse::<u32>()) {
        None => 10,
        Some(Ok(n)) => n,
        Some(Err(_)) => return error(StatusCode::BAD_REQUEST, "lines must be a number"),
    };
    let machine = q.get("machine").map(String::as_str);
    let cursor = q.get("cursor").map(String::as_str);
    output(units::journal(&api.cluster, &name, lines, cursor, machine).await)
}
