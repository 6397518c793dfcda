//! The client HTTP API on port 2379: etcd's v2 keys API and what `etcdctl` (v2) calls around
//! it (`/version`, `/health`, `/v2/members`, `/v2/stats/*`), and flotilla's own
//! `/flotilla/v1/machines`, flotctl's `/flotilla/v1/units` and fleet's `/fleet/v1/*`.

mod fleet;
mod images;
mod keys;
mod machines;
mod members;
mod stats;
mod units;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::auth::Auth;
use crate::cluster::Cluster;
use crate::listener::Limits;
use crate::raft::{id_hex, node_id};
use crate::tls::{Acceptor, ServerTls};

/// The etcd server version this API reports (the v2 API of etcd 3.4).
pub(crate) const ETCD_VERSION: &str = "3.4.30";

/// What every handler shares.
#[derive(Clone)]
pub(crate) struct Api {
    pub(crate) cluster: Cluster,
    pub(crate) limits: Arc<flotilla_state::kv::v2::Limits>,
    pub(crate) max_watchers_per_client: usize,
    watchers: Arc<Mutex<HashMap<IpAddr, usize>>>,
    pub(crate) started: SystemTime,
    /// This machine's image store (`/flotilla/v1/images`); none: those requests are refused.
    pub(crate) images: Option<crate::images::Images>,
}

impl Api {
    /// The API over `cluster`.
    pub(crate) fn new(cluster: Cluster, max_watchers_per_client: usize) -> Self {
        Api {
            cluster,
            limits: Arc::new(flotilla_state::kv::v2::Limits::default()),
            max_watchers_per_client,
            watchers: Arc::default(),
            started: SystemTime::now(),
            images: None,
        }
    }

    /// Takes a watcher slot for `client`; `None` when it holds too many.
    pub(crate) fn watcher_slot(&self, client: IpAddr) -> Option<WatcherSlot> {
        let mut w = self.watchers.lock().unwrap_or_else(|p| p.into_inner());
        let n = w.entry(client).or_insert(0);
        if *n >= self.max_watchers_per_client {
            return None;
        }
        *n += 1;
        Some(WatcherSlot {
            watchers: self.watchers.clone(),
            client,
        })
    }

    /// The headers etcd puts on every keys response.
    pub(crate) fn etcd_headers(&self, etcd_index: u64) -> HeaderMap {
        let (term, raft_index) = self.cluster.raft_position();
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.insert("X-Etcd-Cluster-Id", hv(&id_hex(node_id("flotilla"))));
        h.insert("X-Etcd-Index", hv(&etcd_index.to_string()));
        h.insert("X-Raft-Index", hv(&raft_index.to_string()));
        h.insert("X-Raft-Term", hv(&term.to_string()));
        h
    }
}

fn hv(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// A watcher slot, released on drop (when the watch answers or the client goes away).
pub(crate) struct WatcherSlot {
    watchers: Arc<Mutex<HashMap<IpAddr, usize>>>,
    client: IpAddr,
}

impl Drop for WatcherSlot {
    fn drop(&mut self) {
        let mut w = self.watchers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = w.get_mut(&self.client) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                w.remove(&self.client);
            }
        }
    }
}

/// A JSON body as etcd writes it (with a trailing newline).
pub(crate) fn json(status: StatusCode, headers: HeaderMap, body: &serde_json::Value) -> Response {
    let mut text = body.to_string();
    text.push('\n');
    (status, headers, text).into_response()
}

/// Serves the client API on `listener` until `cancel`: HTTPS with `tls`, every route behind
/// `auth` (see `crate::auth`), connections within `limits` (see `crate::listener`).
pub(crate) async fn serve(
    listener: TcpListener,
    tls: Option<ServerTls>,
    api: Api,
    max_body_bytes: usize,
    auth: Arc<Auth>,
    limits: Limits,
    cancel: CancellationToken,
) {
    let app = Router::new()
        .route("/version", get(version))
        .route("/health", get(health))
        .route("/v2/keys", keys::routes())
        .route("/v2/keys/", keys::routes())
        .route("/v2/keys/{*key}", keys::routes())
        .route("/v2/members", get(members::list).post(members::add))
        .route("/v2/members/", get(members::list).post(members::add))
        .route("/v2/members/leader", get(members::leader))
        .route("/v2/members/{id}", axum::routing::delete(members::remove))
        .route("/flotilla/v1/machines", get(machines::list))
        .route("/flotilla/v1/units", get(units::list))
        .route(
            "/flotilla/v1/units/{name}",
            get(units::get).put(units::put).delete(units::destroy),
        )
        .route("/flotilla/v1/units/{name}/status", get(units::status))
        .route("/flotilla/v1/units/{name}/journal", get(units::journal))
        .route(
            "/flotilla/v1/images",
            get(images::list).delete(images::remove),
        )
        .route(
            "/flotilla/v1/images/pull",
            axum::routing::post(images::pull),
        )
        .route(
            "/flotilla/v1/images/service",
            axum::routing::post(images::service),
        )
        .route("/fleet/v1/units", get(fleet::list))
        .route(
            "/fleet/v1/units/{name}",
            get(fleet::get).put(fleet::put).delete(fleet::destroy),
        )
        .route("/fleet/v1/state", get(fleet::state))
        .route("/fleet/v1/machines", get(fleet::machines))
        .route("/v2/stats/self", get(stats::this))
        .route("/v2/stats/leader", get(stats::leader))
        .route("/v2/stats/store", get(stats::store))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(api);
    // Outermost, so it covers every route above and the fallback.
    let app = app.layer(axum::middleware::from_fn_with_state(
        auth,
        crate::auth::layer,
    ));
    let tls = tls.map(|tls| Acceptor::new(tls, "client API"));
    crate::listener::serve(listener, tls, app, limits, "client API", cancel).await;
}

async fn version() -> Response {
    let body = serde_json::json!({"etcdserver": ETCD_VERSION, "etcdcluster": "3.4.0"});
    json(StatusCode::OK, HeaderMap::new(), &body)
}

async fn health(axum::extract::State(api): axum::extract::State<Api>) -> Response {
    let healthy = api.cluster.leader().is_some();
    let body = serde_json::json!({"health": if healthy { "true" } else { "false" }});
    let status = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json(status, HeaderMap::new(), &body)
}
