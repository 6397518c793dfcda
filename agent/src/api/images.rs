//! `/flotilla/v1/images`: this machine's image store over HTTP, a thin adapter over
//! [`crate::images::Images`] (what `flotctl pull`, `images`, `rmi` and `run` call).
//!
//! - `GET /flotilla/v1/images`: `{"images": [...]}`, every image of this machine's store.
//! - `POST /flotilla/v1/images/pull` with `{"image": REF}`: pulls, answering with JSON lines
//!   (`application/x-ndjson`) as it goes: `{"layer", "state", "done", "total"}` per progress
//!   event, then `{"image": {...}}` or `{"error": "..."}` (the status is 200 once lines flow).
//! - `DELETE /flotilla/v1/images?image=REF`: removes an image and what only it used; 409 while
//!   a unit assigned to this machine uses it, 404 when there is no such image.
//!   `?unused=true`: every image no unit assigned to this machine uses (`{"removed": [...]}`).
//! - `POST /flotilla/v1/images/service` with `{"image": REF, "command"?: [...]}`: how systemd
//!   runs that image here (`RootDirectory=`, the sandbox, environment, working directory,
//!   user, the command resolved in the image: its entrypoint then `command`, or then its cmd
//!   when `command` is empty, as `docker run`), for `flotctl run`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use flotilla_images::{Image, Progress};
use serde::Deserialize;
use serde_json::{Value, json as j};

use super::{Api, json};
use crate::images::Error;

/// The body of `POST /flotilla/v1/images/pull` and `.../service`.
#[derive(Debug, Deserialize)]
pub(super) struct ImageRequest {
    image: String,
    #[serde(default)]
    command: Vec<String>,
}

fn error(status: StatusCode, message: &str) -> Response {
    json(status, HeaderMap::new(), &j!({ "error": message }))
}

fn no_store() -> Response {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "this agent runs without an image store",
    )
}

fn image_error(e: &Error) -> Response {
    let status = match e {
        Error::NotFound(_) => StatusCode::NOT_FOUND,
        Error::InUse { .. } => StatusCode::CONFLICT,
        Error::NoCommand(_) | Error::CommandNotFound { .. } | Error::UnknownUser { .. } => {
            StatusCode::BAD_REQUEST
        }
        Error::Pull(_) => StatusCode::BAD_GATEWAY,
        Error::Store(_) | Error::Auth(_) | Error::Lost(_) | Error::Task(_) => {
            StatusCode::INTERNAL_SERVER_ERROR
        }
    };
    error(status, &e.to_string())
}

/// An image as the API shows it: `repository`, `tag` and `digest` as `docker images` does.
pub(crate) fn view(i: &Image) -> Value {
    let (repository, tag) = crate::images::repository_and_tag(&i.reference);
    j!({
        "reference": i.reference,
        "repository": repository,
        "tag": tag,
        "digest": i.manifest.as_str(),
        "config": i.config.as_str(),
        "layers": i.layers.iter().map(|l| l.as_str()).collect::<Vec<_>>(),
        "size": i.size,
        "pulledAt": i.pulled_at,
    })
}

fn progress_line(p: &Progress) -> Value {
    let state = crate::images::layer_state_name(p.state);
    j!({ "layer": p.digest.as_str(), "state": state, "done": p.done, "total": p.total })
}

/// `GET /flotilla/v1/images`.
pub(super) async fn list(State(api): State<Api>) -> Response {
    let Some(images) = &api.images else {
        return no_store();
    };
    match images.list().await {
        Ok(list) => {
            let list: Vec<Value> = list.iter().map(view).collect();
            json(StatusCode::OK, HeaderMap::new(), &j!({ "images": list }))
        }
        Err(e) => image_error(&e),
    }
}

/// `POST /flotilla/v1/images/pull`: JSON lines of progress, then the image or the error.
pub(super) async fn pull(State(api): State<Api>, Json(req): Json<ImageRequest>) -> Response {
    let Some(images) = api.images.clone() else {
        return no_store();
    };
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let report = tx.clone();
    let progress: flotilla_images::ProgressFn = Arc::new(move |p: Progress| {
        let _ = report.send(format!("{}\n", progress_line(&p)));
    });
    // The pull goes on (and commits) even if the client goes away: the service owns it.
    tokio::spawn(async move {
        let last = match images.pull(&req.image, Some(progress)).await {
            Ok(image) => j!({ "image": view(&image) }),
            Err(e) => j!({ "error": e.to_string() }),
        };
        let _ = tx.send(format!("{last}\n"));
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|line| (Ok::<_, std::convert::Infallible>(line), rx))
    });
    let mut response = Body::from_stream(stream).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    response
}

/// `DELETE /flotilla/v1/images?image=REF`.
pub(super) async fn remove(
    State(api): State<Api>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let Some(images) = &api.images else {
        return no_store();
    };
    if q.get("unused").is_some_and(|v| v == "true") {
        return match images.prune(&api.cluster).await {
            Ok(list) => json(
                StatusCode::OK,
                HeaderMap::new(),
                &j!({ "removed": list.iter().map(view).collect::<Vec<_>>() }),
            ),
            Err(e) => image_error(&e),
        };
    }
    let Some(name) = q.get("image") else {
        return error(
            StatusCode::BAD_REQUEST,
            "give the image: ?image=REF (or ?unused=true for every image no unit here uses)",
        );
    };
    match images.remove_unused(&api.cluster, name).await {
        Ok(i) => json(
            StatusCode::OK,
            HeaderMap::new(),
            &j!({ "removed": view(&i) }),
        ),
        Err(e) => image_error(&e),
    }
}

/// `POST /flotilla/v1/images/service`.
pub(super) async fn service(State(api): State<Api>, Json(req): Json<ImageRequest>) -> Response {
    let Some(images) = &api.images else {
        return no_store();
    };
    let image = match images.find(&req.image).await {
        Ok(Some(i)) => i,
        Ok(None) => return image_error(&Error::NotFound(req.image.clone())),
        Err(e) => return image_error(&e),
    };
    match images.service(&image, Some(&req.command)).await {
        Ok(spec) => json(StatusCode::OK, HeaderMap::new(), &j!(spec)),
        Err(e) => image_error(&e),
    }
}
