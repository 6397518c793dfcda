//! `/v2/keys/...`: etcd's v2 keys API. Parsing and semantics are the state crate's
//! (`kv::v2::parse`, `Store`); this module routes reads (local, or behind a read barrier with
//! `quorum=true`), writes (through Raft, forwarded to the leader) and watches (history, then
//! live events), and writes etcd's headers and bodies.
//!
//! A body larger than `[api] max_body_bytes` is refused as etcd refuses a form over Go's
//! 10 MB limit: 400, `errorCode` 210 (`Invalid POST form`), cause `http: POST too large`
//! (here followed by the setting that limits it).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, OriginalUri, State};
use axum::http::{Method, StatusCode};
use axum::response::Response;
use axum::routing::{MethodFilter, MethodRouter, on};
use flotilla_state::kv::{self, ErrorCode, Event};
use flotilla_state::{Command, Response as Applied};
use tokio::sync::broadcast;

use super::{Api, json};
use crate::liveness::now_ms;

/// The keys handler for every method etcd accepts.
pub(super) fn routes() -> MethodRouter<Api> {
    on(
        MethodFilter::GET
            .or(MethodFilter::PUT)
            .or(MethodFilter::POST)
            .or(MethodFilter::DELETE)
            .or(MethodFilter::HEAD),
        handle,
    )
}

async fn handle(
    State(api): State<Api>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    method: Method,
    OriginalUri(uri): OriginalUri,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(b) => b,
        Err(e) => return error(&api, &unreadable(&api, &e)),
    };
    let key = key_of(uri.path());
    let mut params: Vec<(String, String)> = Vec::new();
    if method != Method::GET && method != Method::HEAD {
        params.extend(form_urlencoded::parse(&body).into_owned());
    }
    if let Some(q) = uri.query() {
        params.extend(form_urlencoded::parse(q.as_bytes()).into_owned());
    }
    let now = now_ms();
    let req = match kv::v2::parse(method.as_str(), &key, &params, now, &api.limits) {
        Ok(r) => r,
        Err(e) => return error(&api, &e),
    };
    match req {
        kv::v2::V2Request::Get {
            key,
            recursive,
            sorted,
            quorum,
        } => {
            if quorum && let Err(e) = api.cluster.read_barrier().await {
                return error(&api, &internal(&api, e.to_string()));
            }
            let result = {
                let a = api.cluster.applied();
                a.state.kv.get(&key, recursive, sorted)
            };
            match result {
                Ok(ev) => event(&api, &ev, now),
                Err(e) => error(&api, &e),
            }
        }
        kv::v2::V2Request::Write(w) => match api.cluster.propose(Command::Kv(w)).await {
            Ok(Applied::Kv(Ok(ev))) => event(&api, &ev, now_ms()),
            Ok(Applied::Kv(Err(e))) => error(&api, &e),
            Ok(other) => error(
                &api,
                &internal(&api, format!("unexpected response {other:?}")),
            ),
            Err(e) => error(&api, &internal(&api, e.to_string())),
        },
        kv::v2::V2Request::Watch {
            key,
            recursive,
            wait_index,
            stream,
        } => watch(api, client, key, recursive, wait_index, stream).await,
    }
}

/// The key path after `/v2/keys`, percent-decoded; `/` for the root.
fn key_of(path: &str) -> String {
    let rest = path.strip_prefix("/v2/keys").unwrap_or(path);
    let decoded: String =
        form_urlencoded::parse(format!("k={}", rest.replace('+', "%2B")).as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default();
    if decoded.is_empty() {
        "/".to_string()
    } else {
        decoded
    }
}

/// etcd's answer to a body it cannot take (`ParseForm` failing: 210, Invalid POST form).
fn unreadable(api: &Api, e: &BytesRejection) -> kv::Error {
    let cause = if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        "http: POST too large (the body is larger than [api] max_body_bytes)".to_string()
    } else {
        format!("cannot read the body: {}", e.body_text())
    };
    kv::Error {
        code: ErrorCode::InvalidForm,
        cause,
        index: store_index(api),
    }
}

fn internal(api: &Api, cause: String) -> kv::Error {
    kv::Error {
        code: ErrorCode::RaftInternal,
        cause,
        index: store_index(api),
    }
}

fn status(code: u16) -> StatusCode {
    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

fn event(api: &Api, ev: &Event, now: u64) -> Response {
    json(
        status(ev.http_status()),
        api.etcd_headers(ev.etcd_index),
        &ev.to_json(now),
    )
}

fn error(api: &Api, e: &kv::Error) -> Response {
    json(
        status(e.http_status()),
        api.etcd_headers(e.index),
        &e.to_json(),
    )
}

/// `wait=true`: answers from the history when the event already happened, else sends the
/// headers at once (etcdctl times out waiting for them) and the body when the event comes;
/// with `stream=true`, every later matching event follows.
async fn watch(
    api: Api,
    client: SocketAddr,
    key: String,
    recursive: bool,
    wait_index: Option<u64>,
    stream: bool,
) -> Response {
    let Some(slot) = api.watcher_slot(client.ip()) else {
        let e = kv::Error {
            code: ErrorCode::WatcherCleared,
            cause: format!(
                "client {} holds {} watchers, the limit",
                client.ip(),
                api.max_watchers_per_client
            ),
            index: store_index(&api),
        };
        return json(
            StatusCode::TOO_MANY_REQUESTS,
            api.etcd_headers(e.index),
            &e.to_json(),
        );
    };
    // Subscribe before reading the history: nothing can fall between the two.
    let events = api.cluster.hub().subscribe();
    let (current, found) = {
        let a = api.cluster.applied();
        let current = a.state.kv.index();
        let since = wait_index.unwrap_or(current + 1);
        (
            current,
            a.state
                .kv
                .watch_history(&key, recursive, since)
                .map(|found| (since, found)),
        )
    };
    let (since, first) = match found {
        Err(e) => return error(&api, &e),
        Ok((since, found)) => (since, found),
    };
    if let (Some(ev), false) = (&first, stream) {
        return json(
            StatusCode::OK,
            api.etcd_headers(current),
            &ev.to_json(now_ms()),
        );
    }
    let headers = api.etcd_headers(current);
    let watching = Watching {
        api,
        key,
        recursive,
        since,
        events,
        first,
        stream,
        done: false,
        _slot: slot,
    };
    let body = futures::stream::unfold(watching, |mut w| async move {
        let text = w.next().await?;
        Some((Ok::<_, Infallible>(Bytes::from(text)), w))
    });
    let mut resp = Response::new(Body::from_stream(body));
    *resp.headers_mut() = headers;
    resp
}

/// A watch waiting for its next event.
struct Watching {
    api: Api,
    key: String,
    recursive: bool,
    /// The lowest index still of interest.
    since: u64,
    events: broadcast::Receiver<Arc<Event>>,
    /// An event found in the history, sent before any live one.
    first: Option<Event>,
    stream: bool,
    done: bool,
    _slot: super::WatcherSlot,
}

impl Watching {
    /// The next body chunk (one JSON line), or `None` when the watch is over.
    async fn next(&mut self) -> Option<String> {
        if self.done {
            return None;
        }
        self.done = !self.stream;
        if let Some(ev) = self.first.take() {
            self.since = ev.index() + 1;
            return Some(ev.to_json(now_ms()).to_string() + "\n");
        }
        loop {
            match self.events.recv().await {
                Ok(ev) if ev.index() >= self.since && ev.matches(&self.key, self.recursive) => {
                    self.since = ev.index() + 1;
                    return Some(ev.to_json(now_ms()).to_string() + "\n");
                }
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    // Fell behind the live events: the history has them (or says they are gone).
                    let found = {
                        let a = self.api.cluster.applied();
                        a.state
                            .kv
                            .watch_history(&self.key, self.recursive, self.since)
                    };
                    match found {
                        Ok(Some(ev)) => {
                            self.since = ev.index() + 1;
                            return Some(ev.to_json(now_ms()).to_string() + "\n");
                        }
                        Ok(None) => {}
                        Err(e) => {
                            self.done = true;
                            return Some(e.to_json().to_string() + "\n");
                        }
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

fn store_index(api: &Api) -> u64 {
    api.cluster.applied().state.kv.index()
}
