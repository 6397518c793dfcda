//! fleet's v1 HTTP API (`/fleet/v1/units`, `/fleet/v1/state`, `/fleet/v1/machines`) in
//! fleet's shapes (github.com/coreos/fleet, `Documentation/api-v1.md`), so that fleet's
//! clients can talk to flotilla.
//!
//! # Current limitations
//!
//! - No pagination: every collection is one page (no `nextPageToken`).
//! - `hash` is flotilla's SHA-256 of the normalized unit, not fleet's SHA-1.
//! - `PATCH /fleet/v1/machines` (metadata edits) and `/discovery` are not served.

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use flotilla_state::machines::Status;
use flotilla_state::units;
use flotilla_state::units::{Desired, Units};
use serde::Deserialize;
use serde_json::{Value, json as j};

use super::{Api, json};

/// One option of a unit file, as fleet gives it.
#[derive(Debug, Deserialize)]
pub(super) struct UnitOption {
    section: String,
    name: String,
    value: String,
}

/// The body of `PUT /fleet/v1/units/NAME`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Put {
    name: Option<String>,
    desired_state: Option<String>,
    options: Option<Vec<UnitOption>>,
}

/// fleet's error entity.
fn error(status: StatusCode, message: &str) -> Response {
    json(
        status,
        HeaderMap::new(),
        &j!({ "error": { "code": status.as_u16(), "message": message } }),
    )
}

fn unit_error(e: &units::Error) -> Response {
    let status = match e {
        units::Error::NotFound(_) => StatusCode::NOT_FOUND,
        units::Error::Exists { .. } | units::Error::NotLoaded(_) => StatusCode::CONFLICT,
        _ => StatusCode::BAD_REQUEST,
    };
    error(status, &e.to_string())
}

/// The unit text of fleet's options: sections in order of first appearance.
fn text_of(options: &[UnitOption]) -> String {
    let mut sections: Vec<(&str, Vec<&UnitOption>)> = Vec::new();
    for o in options {
        match sections.iter_mut().find(|(s, _)| *s == o.section) {
            Some((_, list)) => list.push(o),
            None => sections.push((&o.section, vec![o])),
        }
    }
    let mut text = String::new();
    for (i, (section, list)) in sections.iter().enumerate() {
        if i > 0 {
            text.push('\n');
        }
        text.push_str(&format!("[{section}]\n"));
        for o in list {
            text.push_str(&format!("{}={}\n", o.name, o.value));
        }
    }
    text
}

/// fleet's options of a stored (normalized) unit text.
fn options_of(name: &str, text: &str) -> Vec<Value> {
    let v = flotilla_units::verify(name, text, &[]);
    v.unit
        .content()
        .into_iter()
        .flat_map(|(section, entries)| {
            entries
                .into_iter()
                .map(move |(k, val)| j!({ "section": section, "name": k, "value": val }))
        })
        .collect()
}

/// fleet's current state of a unit from what its machine reports.
fn current_state(u: &Units, name: &str, machine: Option<&str>) -> &'static str {
    let reported = machine.and_then(|m| u.reported.get(name).and_then(|r| r.get(m)));
    match reported {
        Some(r) if r.active == "active" || r.active == "activating" => "launched",
        Some(r) if r.load == "loaded" => "loaded",
        _ => "inactive",
    }
}

fn unit_entity(a: &crate::raft::state_machine::Applied, name: &str) -> Option<Value> {
    let u = &a.state.units;
    let r = u.by_name.get(name)?;
    let machine = u
        .assignments
        .get(name)
        .and_then(|s| s.iter().next())
        .map(String::as_str);
    let machine_id = machine
        .and_then(|m| a.state.machines.by_name.get(m))
        .map(|m| m.machine_id.clone());
    let mut e = j!({
        "name": r.name,
        "options": options_of(&r.name, &r.text),
        "desiredState": r.desired.as_str(),
        "currentState": current_state(u, name, machine),
    });
    if let Some(id) = machine_id {
        e["machineID"] = j!(id);
    }
    Some(e)
}

/// `GET /fleet/v1/units`.
pub(super) async fn list(State(api): State<Api>) -> Response {
    let units: Vec<Value> = {
        let a = api.cluster.applied();
        a.state
            .units
            .by_name
            .keys()
            .filter_map(|n| unit_entity(&a, n))
            .collect()
    };
    json(StatusCode::OK, HeaderMap::new(), &j!({ "units": units }))
}

/// `GET /fleet/v1/units/NAME`.
pub(super) async fn get(State(api): State<Api>, Path(name): Path<String>) -> Response {
    let entity = {
        let a = api.cluster.applied();
        unit_entity(&a, &name)
    };
    match entity {
        Some(e) => json(StatusCode::OK, HeaderMap::new(), &e),
        None => error(
            StatusCode::NOT_FOUND,
            &format!("unit '{name}' does not exist"),
        ),
    }
}

/// fleet's error entity for a failed unit operation.
fn op_error(e: &crate::units::Error) -> Response {
    match e {
        crate::units::Error::Unit(e) => unit_error(e),
        crate::units::Error::Cluster(e) => error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
        e => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

/// `PUT /fleet/v1/units/NAME`: create (201) or change the desired state (204).
pub(super) async fn put(
    State(api): State<Api>,
    Path(name): Path<String>,
    Json(body): Json<Put>,
) -> Response {
    if body.name.as_ref().is_some_and(|n| *n != name) {
        return error(
            StatusCode::BAD_REQUEST,
            &format!("the name in the body does not match unit '{name}'"),
        );
    }
    let Some(desired) = body.desired_state else {
        return error(StatusCode::BAD_REQUEST, "desiredState is required");
    };
    let desired = match desired.parse::<Desired>() {
        Ok(d) => d,
        Err(e) => return unit_error(&e),
    };
    let exists = {
        let a = api.cluster.applied();
        a.state.units.by_name.contains_key(&name)
    };
    let created = match body.options {
        // The submission and the desired state in one commit.
        Some(options) if !options.is_empty() => {
            let then = flotilla_state::units::Then::Desired(desired);
            match crate::units::submit_then(&api.cluster, &name, text_of(&options), false, then)
                .await
            {
                Ok(_) => !exists,
                Err(e) => return op_error(&e),
            }
        }
        _ if !exists => {
            return error(
                StatusCode::CONFLICT,
                &format!("unit '{name}' does not exist: create it with options"),
            );
        }
        _ => {
            if let Err(e) = crate::units::set_desired(&api.cluster, &name, desired).await {
                return op_error(&e);
            }
            false
        }
    };
    if created {
        StatusCode::CREATED.into_response()
    } else {
        StatusCode::NO_CONTENT.into_response()
    }
}

/// `DELETE /fleet/v1/units/NAME`.
pub(super) async fn destroy(State(api): State<Api>, Path(name): Path<String>) -> Response {
    match crate::units::destroy(&api.cluster, &name).await {
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => op_error(&e),
    }
}

/// `GET /fleet/v1/state?machineID=&unitName=`.
pub(super) async fn state(
    State(api): State<Api>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let states: Vec<Value> = {
        let a = api.cluster.applied();
        let u = &a.state.units;
        let mut out = Vec::new();
        for (name, machines) in &u.assignments {
            if q.get("unitName").is_some_and(|n| n != name) {
                continue;
            }
            let Some(record) = u.by_name.get(name) else {
                continue;
            };
            for m in machines {
                let id = a
                    .state
                    .machines
                    .by_name
                    .get(m)
                    .map_or(String::new(), |m| m.machine_id.clone());
                if q.get("machineID").is_some_and(|want| *want != id) {
                    continue;
                }
                let Some(r) = u.reported.get(name).and_then(|r| r.get(m)) else {
                    continue;
                };
                out.push(j!({
                    "name": name,
                    "hash": record.hash,
                    "machineID": id,
                    "systemdLoadState": r.load,
                    "systemdActiveState": r.active,
                    "systemdSubState": r.sub,
                }));
            }
        }
        out
    };
    json(StatusCode::OK, HeaderMap::new(), &j!({ "states": states }))
}

/// `GET /fleet/v1/machines`: the machines that are up.
pub(super) async fn machines(State(api): State<Api>) -> Response {
    let machines: Vec<Value> = {
        let a = api.cluster.applied();
        a.state
            .machines
            .by_name
            .values()
            .filter(|m| m.status == Status::Up)
            .map(|m| j!({ "id": m.machine_id, "primaryIP": m.addr, "metadata": m.metadata }))
            .collect()
    };
    json(
        StatusCode::OK,
        HeaderMap::new(),
        &j!({ "machines": machines }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_become_a_unit_file_and_back() {
        let options = vec![
            UnitOption {
                section: "Unit".into(),
                name: "Description".into(),
                value: "hello".into(),
            },
            UnitOption {
                section: "Service".into(),
                name: "ExecStart".into(),
                value: "/usr/bin/sleep 3000".into(),
            },
            UnitOption {
                section: "Unit".into(),
                name: "After".into(),
                value: "network.target".into(),
            },
        ];
        let text = text_of(&options);
        assert_eq!(
            text,
            "[Unit]\nDescription=hello\nAfter=network.target\n\n[Service]\nExecStart=/usr/bin/sleep 3000\n"
        );
        let back = options_of("hello.service", &text);
        assert_eq!(back.len(), 3);
        assert_eq!(
            back[2],
            j!({ "section": "Service", "name": "ExecStart", "value": "/usr/bin/sleep 3000" })
        );
    }
}
