//! flotillad: the flotilla agent. One per machine; together the agents replicate the cluster
//! state with Raft and serve it over etcd's v2 API.
//!
//! # Tasks
//!
//! One tokio runtime. Sockets are bound here and passed in. Every task runs until the shared
//! `CancellationToken` fires (SIGTERM/SIGINT) and lives in one `JoinSet`: the Raft core
//! (openraft's own tasks), the proposer (batches writes), the peer server (2380), one client
//! API server per `[api] listen` address (2379), the heartbeat sender, the leader's machine
//! watcher, the TTL ticker, the learner promoter and the stop-when-removed watch. Start-up
//! (bootstrap or join, then publishing this member's client URLs) happens before READY=1.

mod api;
mod bus;
mod cluster;
mod config;
mod expiry;
mod liveness;
mod peer;
mod raft;
mod watch;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;
use flotilla_state::machines::{Machine, Status};
use openraft::SnapshotPolicy;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::cluster::{Cluster, LeaderReply, LeaderRequest};
use crate::config::{Config, Settings};
use crate::liveness::Liveness;
use crate::raft::network::{Factory, Peers, path};
use crate::raft::{Member, Raft, node_id};

/// The flotilla agent.
#[derive(Debug, Parser)]
#[command(name = "flotillad", version, about)]
struct Args {
    /// The configuration file.
    #[arg(
        long,
        default_value = "/etc/flotilla/flotilla.toml",
        env = "FLOTILLA_CONFIG"
    )]
    config: PathBuf,
    /// Overrides `name` from the config file.
    #[arg(long)]
    name: Option<String>,
    /// Overrides `data_dir` from the config file.
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn")),
        )
        .init();
    let mut cfg = Config::load(&args.config)?;
    if let Some(n) = args.name {
        cfg.name = Some(n);
    }
    if let Some(d) = args.data_dir {
        cfg.data_dir = d;
    }
    let settings = cfg.settings()?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(settings))
}

async fn run(s: Settings) -> Result<()> {
    std::fs::create_dir_all(&s.data_dir)
        .with_context(|| format!("cannot create {}", s.data_dir.display()))?;
    let peer_listener = TcpListener::bind(s.listen_peer)
        .await
        .with_context(|| format!("cannot listen on {}", s.listen_peer))?;
    let mut api_listeners = Vec::new();
    for addr in &s.api_listen {
        api_listeners.push(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr}"))?,
        );
    }

    let id = node_id(&s.name);
    let me = Member {
        name: s.name.clone(),
        peer_addr: s.advertise_peer.clone(),
        client_urls: s.client_urls.clone(),
    };
    let hub = watch::Hub::default();
    let log = raft::log_store::LogStore::open(&s.data_dir)?;
    let sm = raft::state_machine::StateMachine::open(&s.data_dir, hub.clone())?;
    let shared = sm.shared();
    let peers = Peers::new().context("cannot build the peer client")?;
    let raft_config = openraft::Config {
        cluster_name: "flotilla".into(),
        heartbeat_interval: 150,
        election_timeout_min: 750,
        election_timeout_max: 1500,
        max_payload_entries: 1000,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(s.snapshot_entries),
        max_in_snapshot_log_to_keep: s.snapshot_entries / 10,
        snapshot_max_chunk_size: 1024 * 1024,
        ..Default::default()
    }
    .validate()
    .context("invalid raft settings")?;
    let raft = Raft::new(
        id,
        Arc::new(raft_config),
        Factory {
            peers: peers.clone(),
        },
        log,
        sm,
    )
    .await
    .context("cannot start raft")?;

    let cancel = CancellationToken::new();
    let mut tasks = JoinSet::new();
    let proposer = raft::proposer::Proposer::spawn(raft.clone(), cancel.clone(), &mut tasks);
    let cluster = Cluster::new(id, me.clone(), raft.clone(), shared, hub, peers, proposer);
    let liveness = Liveness::default();

    tasks.spawn(peer::serve(
        peer_listener,
        cluster.clone(),
        liveness.clone(),
        cancel.clone(),
    ));
    let api = api::Api::new(cluster.clone(), s.max_watchers_per_client);
    for l in api_listeners {
        tasks.spawn(api::serve(l, api.clone(), s.max_body_bytes, cancel.clone()));
    }
    tracing::info!(name = %s.name, id = %raft::id_hex(id), peer = %s.advertise_peer, "flotillad listening");

    // The D-Bus object is served and its name requested before READY=1 (sent by bootstrap).
    bus::start(
        cluster.clone(),
        s.name.clone(),
        machine_id(&s.name),
        cancel.clone(),
        &mut tasks,
    )
    .await;
    bootstrap(&s, &cluster, &me, &cancel).await?;

    let machine = Machine {
        name: s.name.clone(),
        machine_id: machine_id(&s.name),
        addr: s
            .advertise_peer
            .rsplit_once(':')
            .map_or(s.advertise_peer.clone(), |(h, _)| h.to_string()),
        metadata: s.metadata.clone(),
        status: Status::Up,
        since_ms: 0,
    };
    tasks.spawn(liveness::send_heartbeats(
        cluster.clone(),
        liveness.clone(),
        machine,
        s.heartbeat_interval,
        cancel.clone(),
    ));
    tasks.spawn(liveness::watch_machines(
        cluster.clone(),
        liveness,
        s.heartbeat_interval,
        s.machine_lost_after,
        cancel.clone(),
    ));
    tasks.spawn(expiry::run(cluster.clone(), cancel.clone()));
    tasks.spawn(cluster::stop_when_removed(cluster.clone(), cancel.clone()));
    tasks.spawn(cluster::promote_learners(
        cluster.clone(),
        Duration::from_secs(1),
        cancel.clone(),
    ));

    let signal = shutdown_signal();
    tokio::pin!(signal);
    loop {
        tokio::select! {
            _ = &mut signal => {
                tracing::info!("shutting down");
                break;
            }
            _ = cancel.cancelled() => break,
            Some(done) = tasks.join_next() => {
                // A task that finishes its job ends normally; a panic ends the agent.
                if let Err(e) = done {
                    tracing::error!("a task failed: {e}, shutting down");
                    break;
                }
            }
        }
    }
    cancel.cancel();
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    if let Err(e) = raft.shutdown().await {
        tracing::warn!("raft shutdown: {e}, ignoring");
    }
    while tasks.join_next().await.is_some() {}
    Ok(())
}

/// Joins or founds the cluster, then waits for a leader and tells systemd it is ready.
async fn bootstrap(
    s: &Settings,
    cluster: &Cluster,
    me: &Member,
    cancel: &CancellationToken,
) -> Result<()> {
    let raft = cluster.raft();
    let initialized = raft.is_initialized().await?;
    if !initialized {
        if !s.join.is_empty() {
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Status("joining the cluster")]);
            join(s, cluster, me, cancel).await?;
        } else {
            let founders: BTreeMap<_, _> = if s.initial_cluster.is_empty() {
                BTreeMap::from([(cluster.id(), me.clone())])
            } else {
                s.initial_cluster
                    .iter()
                    .map(|f| {
                        let member = Member {
                            name: f.name.clone(),
                            peer_addr: f.peer_addr.clone(),
                            client_urls: Vec::new(),
                        };
                        (node_id(&f.name), member)
                    })
                    .collect()
            };
            // Every founder initializes with the same membership: the same first log entry.
            if let Err(e) = raft.initialize(founders).await {
                tracing::info!("initialize: {e}, ignoring");
            }
        }
    }
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Status("waiting for quorum")]);
    let mut metrics = raft.metrics();
    loop {
        if metrics.borrow_and_update().current_leader.is_some() {
            break;
        }
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            changed = metrics.changed() => changed.context("raft stopped")?,
        }
    }
    // Clients (etcdctl syncs /v2/members first) find this member only once its client URLs
    // are in the membership: publish them before telling systemd the agent is ready.
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Status("publishing the client URLs")]);
    announce(cluster, cancel).await;
    let _ = sd_notify::notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status("serving"),
    ]);
    Ok(())
}

/// Asks the peers in `[cluster] join` to add this member, until one succeeds.
async fn join(
    s: &Settings,
    cluster: &Cluster,
    me: &Member,
    cancel: &CancellationToken,
) -> Result<()> {
    let mut delay = Duration::from_millis(100);
    loop {
        for addr in &s.join {
            let reply = cluster
                .peers()
                .call::<_, Result<LeaderReply, cluster::Error>>(
                    addr,
                    path::LEADER,
                    &LeaderRequest::Join(me.clone()),
                    Duration::from_secs(60),
                )
                .await;
            match reply {
                Ok(Ok(_)) => {
                    tracing::info!(peer = %addr, "joined the cluster");
                    return Ok(());
                }
                Ok(Err(e)) => tracing::warn!(peer = %addr, "join refused: {e}"),
                Err(e) => tracing::warn!(peer = %addr, "cannot join through this peer: {e}"),
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => bail!("cancelled while joining"),
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// Records this member's client URLs in the membership (founders start without them); returns
/// once they are there, or on cancellation.
async fn announce(cluster: &Cluster, cancel: &CancellationToken) {
    let mut delay = Duration::from_millis(100);
    loop {
        match cluster.announce_self().await {
            Ok(()) => return,
            Err(e) => tracing::debug!("announcing the client URLs: {e}, retrying"),
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// /etc/machine-id, or an id derived from the member name where there is none.
fn machine_id(name: &str) -> String {
    match std::fs::read_to_string("/etc/machine-id") {
        Ok(id) if id.trim().len() == 32 => id.trim().to_string(),
        _ => format!(
            "{:016x}{:016x}",
            node_id(name),
            node_id(&format!("{name}/machine"))
        ),
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("cannot listen for SIGTERM: {e}, ignoring");
            return std::future::pending().await;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
