//! flotillad: the flotilla agent. One per machine; together the agents replicate the cluster
//! state with Raft and serve it over etcd's v2 API.
//!
//! # Tasks
//!
//! One tokio runtime. Sockets are bound here and passed in. Every task runs until the shared
//! `CancellationToken` fires (SIGTERM/SIGINT) and lives in one `JoinSet`: the Raft core
//! (openraft's own tasks), the proposer (batches writes), the peer server (2380), one client
//! API server per `[api] listen` address (2379), the heartbeat sender, the leader's machine
//! watcher, the TTL ticker, the scheduler (plans on the leader), the reconciler (drives this
//! machine's systemd), the learner promoter and the stop-when-removed watch. Start-up
//! (bootstrap or join, then publishing this member's client URLs) happens before READY=1.
//!
//! # Under systemd
//!
//! This task (the main loop) pings the watchdog after probing the Raft core, refreshes the
//! STATUS= line every second (`notify`), reloads on SIGHUP, and stops gracefully on SIGTERM:
//! the client API servers (their own `JoinSet`, under a child token) stop accepting and drain
//! first, while Raft and the peer server still commit and answer; then everything else stops.
//! A leader then hands its leadership over to a voter that has its whole log
//! (`Cluster::hand_over`), so the cluster has a leader again within a round trip; then
//! everything else stops.

mod api;
mod auth;
mod bus;
mod cluster;
mod config;
mod dns;
mod expiry;
mod images;
mod listener;
mod liveness;
mod logging;
mod notify;
mod peer;
mod raft;
mod reconciler;
mod scheduler;
mod tls;
mod units;
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
#[command(name = "flotillad", version, about, disable_help_subcommand = true)]
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
    #[command(subcommand)]
    command: Option<Generate>,
}

/// What packaging generates from these definitions (hidden from `--help`).
#[derive(Debug, clap::Subcommand)]
enum Generate {
    /// Writes the man page flotillad.8 into DIR.
    #[command(hide = true)]
    Man {
        /// The directory.
        #[arg(long)]
        dir: PathBuf,
    },
    /// Prints the shell completion script for SHELL.
    #[command(hide = true)]
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
}

/// mimalloc, not glibc's malloc: under 256 concurrent clients glibc's malloc (with its
/// consolidation and cross-thread frees) took about 17% of all CPU samples of a loopback
/// cluster (`perf record -a` during kvbench). Built without transparent huge pages
/// (`no_thp`): mimalloc asks for them on the arenas it commits up front, which took an idle
/// agent's RSS from 18 to 30 MiB (agentbench).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> Result<()> {
    let args = Args::parse();
    if let Some(g) = args.command {
        return generate(g);
    }
    let logging = logging::Logging::init();
    let source = Source {
        path: args.config,
        name: args.name,
        data_dir: args.data_dir,
    };
    let settings = source.load()?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(settings, source, logging))
}

/// Where the settings come from: the config file and the command line's overrides (read
/// again on reload).
#[derive(Debug)]
struct Source {
    path: PathBuf,
    name: Option<String>,
    data_dir: Option<PathBuf>,
}

impl Source {
    fn load(&self) -> Result<Settings> {
        let mut cfg = Config::load(&self.path)?;
        if let Some(n) = &self.name {
            cfg.name = Some(n.clone());
        }
        if let Some(d) = &self.data_dir {
            cfg.data_dir = d.clone();
        }
        Ok(cfg.settings()?)
    }
}

/// The man page's text beyond the options.
const MANUAL: &str = "\
Signals:
  SIGTERM, SIGINT  A graceful stop: STOPPING=1; the client API stops accepting and its in-flight
                   requests finish (at most 5 s); a leader hands its leadership over to a
                   voter that has its whole log (with at most 3 voters; at most 3 s); then
                   Raft shuts down. Exit status 0.
  SIGHUP           Reload (systemctl reload flotillad): the config file is read again and checked.
                   [machine] metadata applies at once (the next heartbeat carries it), the
                   log filter is set again from the environment, and the tls_ca, tls_cert,
                   tls_key and tls_crl files of [cluster] and [api] are read again: if they
                   check, new connections use them (established ones go on, except those whose
                   client certificate the new revocation list revokes); if not, the running
                   ones are kept and an error names the file. Other keys that changed (and
                   turning TLS on or off) are named and take effect on restart.

systemd:
  Run as Type=notify. READY=1 once the sockets are bound, the D-Bus name is owned and this member
  has joined the cluster and published its client URLs, or after 10 s without a leader, with
  STATUS= saying it waits for a quorum. STATUS= shows the role, the leader, voters, machines and
  units (systemctl status flotillad). With WatchdogSec=, WATCHDOG=1 is sent every half period
  while the Raft core answers; a hung agent is restarted. A task that fails ends the agent with a
  non-zero status (Restart=on-failure).

Logging:
  To the journal, with structured fields (F_PEER=, F_NAME=, ...), when stderr is the journal
  (JOURNAL_STREAM); as text to stderr otherwise. The filter is FLOTILLA_LOG, else RUST_LOG
  (tracing's EnvFilter syntax), else info,openraft=error,hickory_server=warn.

Files:
  /etc/flotilla/flotilla.toml  the configuration (FLOTILLA_CONFIG, --config)
  /var/lib/flotilla            the Raft log, snapshots and images (data_dir)

See also: flotctl(1), systemd.service(5), sd_notify(3)";

/// `flotillad man` / `flotillad completions`: generated from the same definitions as `--help`.
fn generate(g: Generate) -> Result<()> {
    use clap::CommandFactory;
    let cmd = Args::command().after_long_help(MANUAL);
    match g {
        Generate::Man { dir } => {
            let path = dir.join("flotillad.8");
            let mut out = Vec::new();
            clap_mangen::Man::new(cmd).section("8").render(&mut out)?;
            std::fs::write(&path, out)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        Generate::Completions { shell } => {
            let mut cmd = cmd;
            clap_complete::generate(shell, &mut cmd, "flotillad", &mut std::io::stdout());
        }
    }
    Ok(())
}

async fn run(s: Settings, source: Source, logging: logging::Logging) -> Result<()> {
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
    let dns_sockets = dns::Sockets::bind(&s.dns_listen)?;
    let dns_zone = dns::zone_config(&s.dns_domain, s.dns_ttl)?;

    if (!s.api_users.is_empty() || s.api_tls.is_some()) && s.peer_tls.is_none() {
        tracing::warn!(
            "the client API asks for credentials but the peer port ({}) does not: whoever \
             reaches it speaks Raft unauthenticated; set [cluster] tls_ca, tls_cert, tls_key",
            s.listen_peer
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
    let durable = log.durable();
    let sm =
        raft::state_machine::StateMachine::open(&s.data_dir, hub.clone())?.gate_on(durable.clone());
    let shared = sm.shared();
    let peers = Peers::new(s.peer_tls.as_ref()).context("cannot build the peer client")?;
    let peer_tls = s.peer_tls.as_ref().map(tls::ServerTls::peer).transpose()?;
    let api_tls = s.api_tls.as_ref().map(tls::ServerTls::api).transpose()?;
    let reloadable_tls = tls::Reloadable {
        peer: peer_tls.clone(),
        api: api_tls.clone(),
        client: peers.clone(),
    };
    let api_auth = auth::Auth::new(&s.api_users, api_tls.is_some());
    let raft_config = openraft::Config {
        cluster_name: "flotilla".into(),
        heartbeat_interval: 150,
        election_timeout_min: 750,
        election_timeout_max: ELECTION_TIMEOUT_MAX.as_millis() as u64,
        max_payload_entries: 1000,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(s.snapshot_entries),
        max_in_snapshot_log_to_keep: s.snapshot_entries / 10,
        snapshot_max_chunk_size: 1024 * 1024,
        ..Default::default()
    }
    .validate()
    .context("invalid raft settings")?;
    let peer_stats = raft::stats::PeerStats::default();
    let raft = Raft::new(
        id,
        Arc::new(raft_config),
        raft::stats::Measured::new(
            Factory {
                peers: peers.clone(),
                durable: durable.clone(),
            },
            peer_stats.clone(),
        ),
        log,
        sm,
    )
    .await
    .context("cannot start raft")?;

    let cancel = CancellationToken::new();
    let mut tasks = JoinSet::new();
    let proposer = raft::proposer::Proposer::spawn(raft.clone(), cancel.clone(), &mut tasks);
    let cluster = Cluster::new(
        id,
        me.clone(),
        raft.clone(),
        shared,
        hub,
        peers,
        proposer,
        durable,
        peer_stats,
    );
    let liveness = Liveness::default();

    tasks.spawn(peer::serve(
        peer_listener,
        peer_tls,
        cluster.clone(),
        liveness.clone(),
        cancel.clone(),
    ));
    let images = images::Images::open(&s.data_dir.join("images"), &s.images)
        .context("cannot open the image store")?;
    let mut api = api::Api::new(cluster.clone(), s.max_watchers_per_client);
    api.images = Some(images.clone());
    // On shutdown the client API stops first (no new connections, in-flight requests finish)
    // while Raft, the proposer and the peer server still run to commit and answer them.
    let accepting = cancel.child_token();
    let mut api_tasks = JoinSet::new();
    for l in api_listeners {
        api_tasks.spawn(api::serve(
            l,
            api_tls.clone(),
            api.clone(),
            s.max_body_bytes,
            api_auth.clone(),
            s.api_limits,
            accepting.clone(),
        ));
    }
    tracing::info!(name = %s.name, id = %raft::id_hex(id), peer = %s.advertise_peer, "flotillad listening");
    // DNS answers from the local applied state: it serves during start-up and without a quorum.
    if !dns_sockets.is_empty() {
        tracing::info!(listen = ?dns_sockets.addrs(), domain = %s.dns_domain, "serving dns");
        tasks.spawn(dns::run(
            cluster.clone(),
            dns_zone,
            dns_sockets,
            s.dns_upstreams.clone(),
            cancel.clone(),
        ));
    }

    // The D-Bus object is served and its name requested before READY=1 (sent by bootstrap).
    bus::start(
        cluster.clone(),
        Some(images.clone()),
        s.name.clone(),
        machine_id(&s.name),
        cancel.clone(),
        &mut tasks,
    )
    .await;
    // SIGTERM/SIGINT, as a token: seen during start-up and in the main loop alike.
    let terminate = CancellationToken::new();
    tokio::spawn({
        let t = terminate.clone();
        async move {
            shutdown_signal().await;
            t.cancel();
        }
    });
    // The watchdog is pinged from this task (the one that would hang), after the Raft core
    // answered: during start-up too, as systemd's watchdog runs from the start.
    let watchdog = notify::Watchdog::from_env();
    let mut watchdog_tick =
        tokio::time::interval(watchdog.map_or(Duration::from_secs(3600), |w| w.interval()));
    watchdog_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    {
        let boot = bootstrap(&s, &cluster, &me, &cancel);
        tokio::pin!(boot);
        loop {
            tokio::select! {
                done = &mut boot => {
                    done?;
                    break;
                }
                _ = terminate.cancelled() => break,
                _ = watchdog_tick.tick(), if watchdog.is_some() => {
                    if let Some(w) = &watchdog {
                        w.probe_and_ping(&raft).await;
                    }
                }
            }
        }
    }

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
    // The record heartbeats carry; SIGHUP changes its metadata while the agent runs.
    let (machine_tx, machine_rx) = tokio::sync::watch::channel(machine);
    tasks.spawn(liveness::send_heartbeats(
        cluster.clone(),
        liveness.clone(),
        machine_rx,
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
    tasks.spawn(scheduler::run(
        cluster.clone(),
        s.scheduler.clone(),
        cancel.clone(),
    ));
    tasks.spawn(reconciler::run(
        cluster.clone(),
        Some(images),
        cancel.clone(),
    ));
    tasks.spawn(cluster::stop_when_removed(cluster.clone(), cancel.clone()));
    tasks.spawn(cluster::promote_learners(
        cluster.clone(),
        Duration::from_secs(1),
        cancel.clone(),
    ));

    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("cannot listen for SIGHUP")?;
    let mut status_tick = tokio::time::interval(STATUS_EVERY);
    status_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut shown = Shown::default();
    let mut failed = None;
    // A Raft core that stopped on a fatal error (a log it cannot write: a full disk, a failed
    // fsync) leaves this member unable to serve: end the agent with a non-zero status so that
    // systemd restarts it (Restart=on-failure), rather than run on and answer from a frozen
    // state.
    // Raft's server metrics change with the vote, the leader and the membership, not with every
    // write; the core drops them when it stops (the fatal error is then in its full metrics).
    let mut raft_metrics = raft.server_metrics();
    // Since when this member leads (in which term), for the handover on SIGTERM: never earlier
    // than the election itself.
    let mut leading: (Option<u64>, tokio::time::Instant) = (None, tokio::time::Instant::now());
    loop {
        tokio::select! {
            _ = terminate.cancelled() => {
                tracing::info!("shutting down");
                break;
            }
            _ = cancel.cancelled() => break,
            Some(done) = tasks.join_next() => {
                // A task that finishes its job ends normally; a panic ends the agent.
                if let Err(e) = done {
                    tracing::error!("a task failed: {e}, shutting down");
                    failed = Some(format!("a task failed: {e}"));
                    break;
                }
            }
            changed = raft_metrics.changed() => {
                let fatal = match changed {
                    Err(_) => Some(
                        raft.metrics()
                            .borrow()
                            .running_state
                            .as_ref()
                            .err()
                            .map_or_else(|| "raft stopped".to_string(), |e| e.to_string()),
                    ),
                    Ok(()) => {
                        let m = raft_metrics.borrow_and_update();
                        let term =
                            (m.current_leader == Some(id)).then_some(m.vote.leader_id().term);
                        if term != leading.0 {
                            leading = (term, tokio::time::Instant::now());
                        }
                        None
                    }
                };
                if let Some(fatal) = fatal {
                    tracing::error!("the raft core stopped: {fatal}; shutting down");
                    failed = Some(format!("the raft core stopped: {fatal}"));
                    break;
                }
            }
            _ = watchdog_tick.tick(), if watchdog.is_some() => {
                if let Some(w) = &watchdog {
                    w.probe_and_ping(&raft).await;
                }
            }
            _ = status_tick.tick() => shown.update(&s.name, &cluster),
            _ = hangup.recv() => {
                reload(&source, &s, &logging, &machine_tx, &reloadable_tls);
                shown.line.clear();
                shown.update(&s.name, &cluster);
                notify::ready(&shown.line);
            }
        }
    }

    // Graceful shutdown: stop accepting clients and let their requests finish (bounded: watches
    // would hold on forever), then stop Raft, which has committed and fsynced what it answered.
    notify::stopping("stopping: finishing in-flight client requests");
    accepting.cancel();
    let drained = tokio::time::timeout(DRAIN_DEADLINE, async {
        while api_tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::info!(
            "client connections still open after {DRAIN_DEADLINE:?} (watches), closing them"
        );
        api_tasks.abort_all();
    }
    // Hand leadership over (a leader that just stops leaves the cluster without one for an
    // election timeout); the peer server and Raft still run for it.
    if failed.is_none() && cluster.is_leader() {
        notify::status("stopping: handing leadership over");
        match cluster
            .hand_over(leading.1, ELECTION_TIMEOUT_MAX, HANDOVER_DEADLINE)
            .await
        {
            cluster::Handover::Handed { to, took } => {
                let name = cluster
                    .members()
                    .into_iter()
                    .find(|m| m.id == to)
                    .map_or_else(|| raft::id_hex(to), |m| m.member.name);
                tracing::info!("handed leadership over to {name} in {took:?}");
            }
            cluster::Handover::Skipped(why) => {
                tracing::info!("leadership not handed over: {why}; the others elect a leader");
            }
            cluster::Handover::NotLeader => {}
        }
    }
    notify::status("stopping: shutting Raft down");
    cancel.cancel();
    if let Err(e) = raft.shutdown().await {
        tracing::warn!("raft shutdown: {e}, ignoring");
    }
    while tasks.join_next().await.is_some() {}
    while api_tasks.join_next().await.is_some() {}
    tracing::info!("stopped");
    match failed {
        // A non-zero exit: Restart=on-failure restarts the agent.
        Some(e) => bail!("{e}"),
        None => Ok(()),
    }
}

/// How often the STATUS= line is refreshed (only sent when it changed).
const STATUS_EVERY: Duration = Duration::from_secs(1);
/// openraft's longest election timeout, which is also its leader lease: a voter that heard
/// from its leader within it refuses to vote for anyone else.
const ELECTION_TIMEOUT_MAX: Duration = Duration::from_millis(1500);
/// How long a stopping leader tries to hand its leadership over (including waiting out its own
/// lease when it was elected just before).
const HANDOVER_DEADLINE: Duration = Duration::from_secs(3);
/// How long shutdown waits for in-flight client requests.
const DRAIN_DEADLINE: Duration = Duration::from_secs(5);
/// How long a member of a cluster waits for a leader before it reports ready anyway, with a
/// STATUS= line saying it waits for a quorum (so a machine that boots alone does not fail).
const QUORUM_PATIENCE: Duration = Duration::from_secs(10);

/// The STATUS= line last sent, and the leader last logged.
#[derive(Debug, Default)]
struct Shown {
    line: String,
    leader: Option<Option<String>>,
}

impl Shown {
    /// Sends STATUS= if it changed; logs leader changes.
    fn update(&mut self, me: &str, cluster: &Cluster) {
        let metrics = cluster.raft().metrics().borrow().clone();
        let summary = {
            let applied = cluster.applied();
            notify::Summary::read(me, &metrics, &applied.state)
        };
        if self.leader.as_ref() != Some(&summary.leader) {
            match &summary.leader {
                Some(l) => tracing::info!(leader = %l, term = summary.term, "the leader is {l}"),
                None => tracing::warn!(term = summary.term, "no leader: waiting for a quorum"),
            }
            self.leader = Some(summary.leader.clone());
        }
        let line = summary.line();
        if line != self.line {
            notify::status(&line);
            self.line = line;
        }
    }
}

/// SIGHUP / `systemctl reload`: reads the config file again and checks it; an invalid one is
/// reported and the running settings kept. Applied at once: `[machine] metadata` (the next
/// heartbeat carries it; the leader commits it and the scheduler places by it) and the log
/// filter (from the environment), and the TLS files of both sides (`tls::Reloadable`: new
/// handshakes use them if they check). Every other changed key is named as taking effect on
/// restart (sockets, membership, timings, turning TLS on or off are fixed at start).
fn reload(
    source: &Source,
    running: &Settings,
    logging: &logging::Logging,
    machine: &tokio::sync::watch::Sender<Machine>,
    tls: &tls::Reloadable,
) {
    notify::reloading();
    let path = source.path.display();
    let new = match source.load() {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("reload: {e:#}, keeping the running configuration");
            return;
        }
    };
    let (filter, from) = logging::configured_filter();
    if let Err(e) = logging.set_filter(&filter) {
        tracing::warn!("reload: {from}: {e}, keeping {:?}", logging.filter());
    }
    let metadata_changed = machine.send_if_modified(|m| {
        if m.metadata == new.metadata {
            return false;
        }
        m.metadata = new.metadata.clone();
        true
    });
    tls.reload(new.peer_tls.as_ref(), new.api_tls.as_ref());
    if metadata_changed {
        tracing::info!(
            "reloaded {path}: machine.metadata is now {:?}",
            new.metadata
        );
    }
    let changed: Vec<&str> = [
        ("name", new.name != running.name),
        ("data_dir", new.data_dir != running.data_dir),
        (
            "cluster.listen_peer",
            new.listen_peer != running.listen_peer,
        ),
        (
            "cluster.advertise_peer",
            new.advertise_peer != running.advertise_peer,
        ),
        (
            "cluster.initial_cluster",
            new.initial_cluster != running.initial_cluster,
        ),
        ("cluster.join", new.join != running.join),
        (
            "cluster.heartbeat_interval",
            new.heartbeat_interval != running.heartbeat_interval,
        ),
        (
            "cluster.machine_lost_after",
            new.machine_lost_after != running.machine_lost_after,
        ),
        (
            "cluster.snapshot_entries",
            new.snapshot_entries != running.snapshot_entries,
        ),
        ("api.listen", new.api_listen != running.api_listen),
        ("api.advertise", new.client_urls != running.client_urls),
        (
            "api.max_body_bytes",
            new.max_body_bytes != running.max_body_bytes,
        ),
        (
            "api.max_watchers_per_client",
            new.max_watchers_per_client != running.max_watchers_per_client,
        ),
        (
            "api.max_connections(_per_client), api.header_timeout, api.idle_timeout",
            new.api_limits != running.api_limits,
        ),
        ("images", new.images != running.images),
        (
            "cluster.tls_* (TLS on or off)",
            new.peer_tls.is_some() != running.peer_tls.is_some(),
        ),
        (
            "api.tls_* (TLS on or off)",
            new.api_tls.is_some() != running.api_tls.is_some(),
        ),
        ("api.users", new.api_users != running.api_users),
        ("dns.listen", new.dns_listen != running.dns_listen),
        ("dns.domain", new.dns_domain != running.dns_domain),
        ("dns.ttl", new.dns_ttl != running.dns_ttl),
        ("dns.upstreams", new.dns_upstreams != running.dns_upstreams),
    ]
    .into_iter()
    .filter_map(|(k, c)| c.then_some(k))
    .collect();
    if changed.is_empty() {
        tracing::info!("reloaded {path}: nothing changed");
    } else {
        tracing::warn!(
            "reloaded {path}: {} changed; this takes effect when the agent restarts \
             (systemctl restart flotillad)",
            changed.join(", ")
        );
    }
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
            notify::status(&format!(
                "joining the cluster through {}",
                s.join.join(", ")
            ));
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
    let mut metrics = raft.metrics();
    let voters = metrics
        .borrow()
        .membership_config
        .membership()
        .voter_ids()
        .count();
    let waiting = format!(
        "no leader: waiting for a quorum ({} of {voters} voters)",
        voters / 2 + 1
    );
    notify::status(&waiting);
    let patience = tokio::time::sleep(QUORUM_PATIENCE);
    tokio::pin!(patience);
    let mut ready = false;
    loop {
        if metrics.borrow_and_update().current_leader.is_some() {
            break;
        }
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            changed = metrics.changed() => changed.context("raft stopped")?,
            // This member knows the cluster and serves what it can: ready, and STATUS says
            // what it waits for, rather than failing the start of a machine that booted alone.
            _ = &mut patience, if !ready => {
                tracing::warn!("{waiting} after {QUORUM_PATIENCE:?}; reporting ready");
                notify::ready(&waiting);
                ready = true;
            }
        }
    }
    // Clients (etcdctl syncs /v2/members first) find this member only once its client URLs
    // are in the membership: publish them before telling systemd the agent is ready.
    notify::status("publishing the client URLs");
    announce(cluster, cancel).await;
    notify::ready("serving");
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
