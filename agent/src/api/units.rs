//! `/flotilla/v1/units`: flotctl's unit API. Submit and change units, list them with the
//! states their machines report, destroy them, and read `systemctl status` / `journalctl` of a
//! unit on the machine that runs it (another machine's agent answers through its own client
//! API).
//!
//! - `GET /flotilla/v1/units`: every unit, its desired state, machines and reported states.
//! - `PUT /flotilla/v1/units/NAME` with `{"text"?, "replace"?, "desired"?, "transition"?}`:
//!   submit (a malformed unit is answered 400 with its `file:line:column` diagnostics), then
//!   set the desired state (`inactive|loaded|launched`) or apply a verb (`load|start|stop|
//!   unload`).
//! - `DELETE /flotilla/v1/units/NAME`: destroy.
//! - `GET /flotilla/v1/units/NAME/status`, `GET /flotilla/v1/units/NAME/journal?lines=N`:
//!   run on the machine the unit is assigned to (`?machine=M` to pick one of several).

use std::collections::HashMap;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use flotilla_state::units::{Change, Desired, Transition};
use flotilla_state::{Command, Response as Applied, units};
use serde::Deserialize;
use serde_json::{Value, json as j};

use super::{Api, json};

/// How long a forwarded status or journal request may take.
const FORWARD_DEADLINE: Duration = Duration::from_secs(10);
/// The most journal lines one request returns.
const MAX_LINES: u32 = 10_000;

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

fn unit_error(e: &units::Error) -> Response {
    let status = match e {
        units::Error::NotFound(_) => StatusCode::NOT_FOUND,
        units::Error::Exists { .. } | units::Error::NotLoaded(_) => StatusCode::CONFLICT,
        _ => StatusCode::BAD_REQUEST,
    };
    let mut body = j!({ "error": e.to_string() });
    if let units::Error::Malformed { diagnostics, .. } = e {
        body["diagnostics"] = j!(diagnostics);
    }
    json(status, HeaderMap::new(), &body)
}

fn cluster_error(e: &crate::cluster::Error) -> Response {
    error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string())
}

/// Proposes a unit change: `Ok(changed)` or the response to send.
async fn propose(api: &Api, change: Change) -> Result<bool, Response> {
    match api.cluster.propose(Command::Unit(change)).await {
        Ok(Applied::Unit(Ok(changed))) => Ok(changed),
        Ok(Applied::Unit(Err(e))) => Err(unit_error(&e)),
        Ok(other) => Err(error(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("unexpected response {other:?}"),
        )),
        Err(e) => Err(cluster_error(&e)),
    }
}

/// `GET /flotilla/v1/units`.
pub(super) async fn list(State(api): State<Api>) -> Response {
    if let Err(e) = api.cluster.read_barrier().await {
        tracing::debug!("units list without a read barrier: {e}");
    }
    let units: Vec<Value> = {
        let a = api.cluster.applied();
        let u = &a.state.units;
        u.by_name
            .values()
            .map(|r| {
                let machines: Vec<&String> = u
                    .assignments
                    .get(&r.name)
                    .map(|s| s.iter().collect())
                    .unwrap_or_default();
                let states: Vec<Value> = u
                    .reported
                    .get(&r.name)
                    .map(|m| {
                        m.iter()
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
                            .collect()
                    })
                    .unwrap_or_default();
                j!({
                    "name": r.name,
                    "hash": r.hash,
                    "desired": r.desired.as_str(),
                    "machines": machines,
                    "states": states,
                    "unschedulable": u.unschedulable.get(&r.name),
                })
            })
            .collect()
    };
    json(StatusCode::OK, HeaderMap::new(), &j!({ "units": units }))
}

/// `GET /flotilla/v1/units/NAME`: the unit with its text.
pub(super) async fn get(State(api): State<Api>, Path(name): Path<String>) -> Response {
    let a = api.cluster.applied();
    match a.state.units.by_name.get(&name) {
        Some(r) => json(
            StatusCode::OK,
            HeaderMap::new(),
            &j!({ "name": r.name, "hash": r.hash, "desired": r.desired.as_str(), "text": r.text }),
        ),
        None => unit_error(&units::Error::NotFound(name)),
    }
}

/// `PUT /flotilla/v1/units/NAME`.
pub(super) async fn put(
    State(api): State<Api>,
    Path(name): Path<String>,
    Json(body): Json<Put>,
) -> Response {
    let mut changed = false;
    if let Some(text) = body.text {
        match propose(
            &api,
            Change::Submit {
                name: name.clone(),
                text: Some(text),
                replace: body.replace,
            },
        )
        .await
        {
            Ok(c) => changed |= c,
            Err(r) => return r,
        }
    }
    let change = match (body.desired, body.transition) {
        (Some(d), _) => match d.parse::<Desired>() {
            Ok(desired) => Some(Change::SetDesired {
                name: name.clone(),
                desired,
            }),
            Err(e) => return unit_error(&e),
        },
        (None, Some(t)) => {
            let transition = match t.as_str() {
                "load" => Transition::Load,
                "start" => Transition::Start,
                "stop" => Transition::Stop,
                "unload" => Transition::Unload,
                other => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        &format!(
                            "unknown transition '{other}': expected load, start, stop or unload"
                        ),
                    );
                }
            };
            Some(Change::Transition {
                name: name.clone(),
                transition,
            })
        }
        (None, None) => None,
    };
    if let Some(change) = change {
        match propose(&api, change).await {
            Ok(c) => changed |= c,
            Err(r) => return r,
        }
    }
    json(
        StatusCode::OK,
        HeaderMap::new(),
        &j!({ "name": name, "changed": changed }),
    )
}

/// `DELETE /flotilla/v1/units/NAME`.
pub(super) async fn destroy(State(api): State<Api>, Path(name): Path<String>) -> Response {
    match propose(&api, Change::Destroy { name: name.clone() }).await {
        Ok(_) => json(StatusCode::OK, HeaderMap::new(), &j!({ "name": name })),
        Err(r) => r,
    }
}

/// `GET /flotilla/v1/units/NAME/status`.
pub(super) async fn status(
    State(api): State<Api>,
    Path(name): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    on_machine(
        &api,
        &name,
        &q,
        "status",
        &["systemctl", "status", "--no-pager", "--full", "--", &name],
    )
    .await
}

/// `GET /flotilla/v1/units/NAME/journal?lines=N`.
pub(super) async fn journal(
    State(api): State<Api>,
    Path(name): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let lines = match q.get("lines").map(|l| l.parse::<u32>()) {
        None => 10,
        Some(Ok(n)) => n.min(MAX_LINES),
        Some(Err(_)) => return error(StatusCode::BAD_REQUEST, "lines must be a number"),
    };
    let lines = lines.to_string();
    on_machine(
        &api,
        &name,
        &q,
        "journal",
        &["journalctl", "-u", &name, "-n", &lines, "--no-pager"],
    )
    .await
}

/// Runs `argv` here when `name` runs on this machine, else asks the agent of the machine that
/// runs it (`what` is the endpoint's last path segment).
async fn on_machine(
    api: &Api,
    name: &str,
    q: &HashMap<String, String>,
    what: &str,
    argv: &[&str],
) -> Response {
    if let Err(e) = api.cluster.read_barrier().await {
        tracing::debug!("unit {what} without a read barrier: {e}");
    }
    let me = api.cluster.me().name.clone();
    let machine = match pick_machine(api, name, q, &me) {
        Ok(m) => m,
        Err(r) => return r,
    };
    if machine == me {
        return run_here(&me, argv).await;
    }
    forward(api, name, &machine, what, q).await
}

/// The machine whose agent answers for `name`: `?machine=` if the unit is assigned there, this
/// machine if it runs the unit, else the first machine it is assigned to.
#[allow(
    clippy::result_large_err,
    reason = "the error is the response to send, built once per request"
)]
fn pick_machine(
    api: &Api,
    name: &str,
    q: &HashMap<String, String>,
    me: &str,
) -> Result<String, Response> {
    {
        let a = api.cluster.applied();
        let u = &a.state.units;
        if !u.by_name.contains_key(name) {
            return Err(unit_error(&units::Error::NotFound(name.to_owned())));
        }
        let assigned: Vec<String> = u
            .assignments
            .get(name)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default();
        Ok(match q.get("machine") {
            Some(m) if assigned.contains(m) => m.clone(),
            Some(m) => {
                return Err(error(
                    StatusCode::NOT_FOUND,
                    &format!("unit '{name}' is not assigned to machine '{m}'"),
                ));
            }
            None if assigned.iter().any(|a| a == me) => me.to_owned(),
            None => match assigned.into_iter().next() {
                Some(m) => m,
                None => {
                    return Err(error(
                        StatusCode::NOT_FOUND,
                        &format!("unit '{name}' runs on no machine: start or load it first"),
                    ));
                }
            },
        })
    }
}

async fn run_here(me: &str, argv: &[&str]) -> Response {
    let out = tokio::process::Command::new(argv[0])
        .args(&argv[1..])
        .env("SYSTEMD_COLORS", "0")
        .stdin(std::process::Stdio::null())
        .output()
        .await;
    match out {
        Ok(out) => {
            let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.push_str(&String::from_utf8_lossy(&out.stderr));
            json(
                StatusCode::OK,
                HeaderMap::new(),
                &j!({ "machine": me, "output": text, "exitCode": out.status.code() }),
            )
        }
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("cannot run {} on machine '{me}': {e}", argv[0]),
        ),
    }
}

/// Asks `machine`'s agent (its first client URL) for the unit's `what`.
async fn forward(
    api: &Api,
    name: &str,
    machine: &str,
    what: &str,
    q: &HashMap<String, String>,
) -> Response {
    let member = api
        .cluster
        .members()
        .into_iter()
        .find(|m| m.member.name == machine);
    let Some(url) = member.and_then(|m| m.member.client_urls.first().cloned()) else {
        return error(
            StatusCode::BAD_GATEWAY,
            &format!("machine '{machine}' has published no client URL"),
        );
    };
    let query = {
        let mut query = form_urlencoded::Serializer::new(String::new());
        query.append_pair("machine", machine);
        if let Some(lines) = q.get("lines") {
            query.append_pair("lines", lines);
        }
        query.finish()
    };
    let url = format!(
        "{}/flotilla/v1/units/{name}/{what}?{query}",
        url.trim_end_matches('/'),
    );
    let reply = reqwest::Client::new()
        .get(&url)
        .timeout(FORWARD_DEADLINE)
        .send()
        .await;
    let reply = match reply {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_GATEWAY,
                &format!("cannot reach machine '{machine}' at {url}: {e}"),
            );
        }
    };
    let status = StatusCode::from_u16(reply.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    match reply.json::<Value>().await {
        Ok(body) => json(status, HeaderMap::new(), &body),
        Err(e) => error(
            StatusCode::BAD_GATEWAY,
            &format!("machine '{machine}' sent a reply that is not JSON: {e}"),
        ),
    }
}
