//! `kvbench`: writes/s and p50/p99 write latency of a 3-member cluster, flotilla vs etcd 3.4.
//!
//! # Load
//!
//! For every target (`etcd`, `flotilla`, or `both`, one after the other, never at the same time)
//! a fresh cluster is started, warmed up (16 clients writing under `/warmup` for `--warmup`), and
//! then measured once per client count. Client `i` of a measurement is a sequential loop of
//! `PUT /v2/keys/bench/<client>/<seq>` with the form body `value=<value-size bytes>` over its own
//! keep-alive HTTP/1.1 connection to member `(leader + i) mod members`, where `leader` is the
//! member that led when the cluster came up (member 0 if that is unknown): the clients are spread
//! evenly over the members, the same way for both targets, and a single client always writes to
//! the leader, so where the election happened to land does not decide the 1-client figure (a
//! write through a follower costs an extra hop on both systems). Client numbers are unique
//! over the whole run, so no key is written twice and the keys under `/bench` afterwards are
//! exactly the acknowledged writes. Connections are opened before the clock starts.
//!
//! A write counts when it is acknowledged with a 2xx status; any other status and any transport
//! failure (including a 10 s timeout) is an error, counted apart and kept out of the latencies.
//! With `--duration`, a client starts no write after the deadline, and writes/s is the
//! acknowledged writes over the time until the last client's last write ended; with
//! `--requests N`, the N writes are split evenly over the clients. Latency is the time from
//! sending the request to having read the whole answer; every latency is kept and sorted
//! (nearest-rank percentiles).
//!
//! With `--runs N` (for a busy machine) the whole comparison is repeated N times, each time on
//! fresh clusters, alternating which target goes first (etcd first on odd runs, flotilla first
//! on even ones), and the summary takes, per target and client count, the median of each
//! figure over the runs (the ratios are of the medians).
//!
//! The clients run on one thread by default (`--client-threads`), and the CPU the benchmark
//! process itself used is reported next to the CPU of the cluster's processes, so it is visible
//! whether the client was the bottleneck.
//!
//! # Durability
//!
//! etcd 3.4 acknowledges a write only once it is fsynced on a quorum (see `flotilla_tests::etcd`);
//! flotilla is meant to do the same (its Raft log commits with an fsync before a write is
//! acknowledged). kvbench does not check either claim: it only puts both clusters' data on the
//! same file system, under `--data-root`, and warns when that is a tmpfs, where fsync means
//! nothing.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, ValueEnum};
use flotilla_tests::agents::{self, Agent};
use flotilla_tests::etcd::{EtcdCluster, EtcdConfig};
use serde::Serialize;

/// A key-value write benchmark: flotilla vs etcd 3.4 on the same machine and the same load.
#[derive(Debug, Parser)]
#[command(name = "kvbench")]
struct Args {
    /// Client counts to measure, in order (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "1,16,256")]
    clients: Vec<usize>,
    /// How long each measurement lasts: 10s, 500ms, 1m (the default is 10s).
    #[arg(long, value_parser = parse_duration, conflicts_with = "requests")]
    duration: Option<Duration>,
    /// Writes per measurement instead of a duration, split evenly over the clients.
    #[arg(long)]
    requests: Option<u64>,
    /// Bytes in every written value.
    #[arg(long, default_value_t = 64)]
    value_size: usize,
    /// Which cluster to measure.
    #[arg(long, value_enum, default_value_t = TargetArg::Both)]
    target: TargetArg,
    /// The flotillad binary (default: `flotillad` next to this program, so a `--release` run
    /// uses `target/release/flotillad`: build it first with `cargo build --release -p
    /// flotilla-agent`).
    #[arg(long, env = "FLOTILLAD")]
    flotillad: Option<PathBuf>,
    /// The etcd binary.
    #[arg(long, default_value = "/usr/bin/etcd")]
    etcd: PathBuf,
    /// Members per cluster.
    #[arg(long, default_value_t = 3)]
    members: usize,
    /// Warm-up of every fresh cluster before measuring (16 clients); 0s for none.
    #[arg(long, value_parser = parse_duration, default_value = "2s")]
    warmup: Duration,
    /// Where the clusters keep their data (default: the system's temporary directory); its
    /// file system decides what an fsync is worth.
    #[arg(long)]
    data_root: Option<PathBuf>,
    /// Threads that run the clients; 1 runs them all on the main thread.
    #[arg(long, default_value_t = 1)]
    client_threads: usize,
    /// Print one JSON document instead of the table.
    #[arg(long)]
    json: bool,
    /// Repeat the whole comparison this many times (fresh clusters, alternating which target
    /// goes first) and summarize with medians.
    #[arg(long, default_value_t = 1)]
    runs: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum TargetArg {
    Flotilla,
    Etcd,
    Both,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Target {
    Etcd,
    Flotilla,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Etcd => "etcd",
            Target::Flotilla => "flotilla",
        }
    }
}

/// When a measurement ends.
#[derive(Debug, Clone, Copy)]
enum Stop {
    /// Every client stops starting writes after this long.
    After(Duration),
    /// This many writes in all, split evenly over the clients.
    Requests(u64),
}

/// One measurement's load.
#[derive(Debug, Clone)]
struct Load {
    clients: usize,
    stop: Stop,
    value_size: usize,
    /// The number of the first client; clients are `first_client..first_client + clients`.
    first_client: u64,
    /// The v2 directory the keys go under, without slashes (`bench`).
    prefix: String,
}

/// What one measurement saw.
#[derive(Debug, Default)]
struct Measurement {
    acked: u64,
    status_errors: u64,
    transport_errors: u64,
    elapsed: Duration,
    /// Latencies of the acknowledged writes, sorted.
    latencies: Vec<Duration>,
    first_error: Option<String>,
    /// CPU time this process used while the clock ran.
    client_cpu: Duration,
    /// CPU time the cluster's processes used while the clock ran.
    server_cpu: Duration,
}

impl Measurement {
    fn errors(&self) -> u64 {
        self.status_errors + self.transport_errors
    }

    fn writes_per_sec(&self) -> f64 {
        if self.elapsed.is_zero() {
            0.0
        } else {
            self.acked as f64 / self.elapsed.as_secs_f64()
        }
    }
}

/// One line of the report.
#[derive(Debug, Clone, Serialize)]
struct Row {
    /// Which repetition (1-based) this measurement belongs to; 0 for a median over runs.
    run: usize,
    target: Target,
    clients: usize,
    /// The member that led when the cluster came up, if known; client `i` talks to member
    /// `(leader + i) mod members`.
    leader: Option<usize>,
    writes: u64,
    errors: u64,
    seconds: f64,
    writes_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    /// CPU used by this benchmark process during the measurement, in % of one core.
    client_cpu_pct: f64,
    /// CPU used by the cluster's processes during the measurement, in % of one core.
    server_cpu_pct: f64,
    first_error: Option<String>,
}

/// flotilla / etcd for one client count.
#[derive(Debug, Serialize)]
struct Ratio {
    clients: usize,
    writes_per_sec: f64,
    p50: f64,
    p99: f64,
}

#[derive(Debug, Serialize)]
struct Report {
    members: usize,
    value_size: usize,
    stop: String,
    data_root: PathBuf,
    data_root_is_tmpfs: bool,
    runs: usize,
    rows: Vec<Row>,
    /// Per target and client count, the median of every figure over the runs.
    medians: Vec<Row>,
    ratios: Vec<Ratio>,
}

/// A running cluster under test; dropping it stops it.
struct Cluster {
    /// Client URLs in member order.
    endpoints: Vec<String>,
    pids: Vec<u32>,
    leader: Option<usize>,
    _guard: ClusterGuard,
}

enum ClusterGuard {
    Etcd(#[allow(dead_code, reason = "held only to be dropped")] EtcdCluster),
    Flotilla(#[allow(dead_code, reason = "held only to be dropped")] agents::Cluster),
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(e) = prepare_environment(&args) {
        eprintln!("kvbench: {e:#}");
        return ExitCode::FAILURE;
    }
    let runtime = if args.client_threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.client_threads)
            .enable_all()
            .build()
    };
    let result = runtime
        .context("cannot start the tokio runtime")
        .and_then(|runtime| {
            runtime.block_on(async {
                // On Ctrl-C the run is dropped, and with it the cluster, which stops its
                // processes and removes its data.
                tokio::select! {
                    result = run(args) => result,
                    _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
                }
            })
        });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kvbench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Points the agents harness at the flotillad binary and both harnesses at `--data-root`; both
/// read these from the environment. Runs before any other thread exists.
fn prepare_environment(args: &Args) -> Result<()> {
    if args.target != TargetArg::Etcd {
        // SAFETY: no other thread exists yet (the runtime is built after this), so nothing
        // reads the environment concurrently.
        unsafe { agents::use_flotillad(args.flotillad.as_deref()) }?;
    }
    if let Some(root) = &args.data_root {
        // SAFETY: as above.
        unsafe { std::env::set_var("TMPDIR", root) };
    }
    Ok(())
}

async fn run(args: Args) -> Result<()> {
    if args.clients.is_empty() || args.clients.contains(&0) {
        bail!("--clients needs one or more counts above 0");
    }
    if args.members == 0 {
        bail!("--members must be at least 1");
    }
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let stop = match (args.duration, args.requests) {
        (_, Some(0)) => bail!("--requests must be at least 1"),
        (_, Some(n)) => Stop::Requests(n),
        (Some(d), None) => Stop::After(d),
        (None, None) => Stop::After(Duration::from_secs(10)),
    };
    // `prepare_environment` made `--data-root` the temporary directory of both harnesses.
    let data_root = std::env::temp_dir();
    let tmpfs = is_tmpfs(&data_root);
    if tmpfs {
        eprintln!(
            "kvbench: warning: {} is a tmpfs: fsync is a no-op there, so these numbers carry no durability; pass --data-root on a disk",
            data_root.display()
        );
    }
    let targets: &[Target] = match args.target {
        TargetArg::Etcd => &[Target::Etcd],
        TargetArg::Flotilla => &[Target::Flotilla],
        TargetArg::Both => &[Target::Etcd, Target::Flotilla],
    };
    let reversed: Vec<Target> = targets.iter().rev().copied().collect();
    if !args.json {
        println!(
            "# {} members; client i -> member (leader + i) mod {}; {}-byte values; {}; clients on {} thread(s); data in {}",
            args.members,
            args.members,
            args.value_size,
            describe_stop(stop),
            args.client_threads.max(1),
            data_root.display()
        );
        println!("{}", table_header());
    }

    let mut rows = Vec::new();
    let mut next_client = 0;
    for run in 1..=args.runs {
        let order = if run % 2 == 1 { targets } else { &reversed[..] };
        if args.runs > 1 && !args.json {
            println!("# run {run} of {}", args.runs);
        }
        for &target in order {
            let cluster = start_cluster(target, &args, &data_root)
                .await
                .with_context(|| format!("cannot start a {} cluster", target.name()))?;
            eprintln!(
                "kvbench: {} cluster up: {} (leader: {})",
                target.name(),
                cluster.endpoints.join(" "),
                cluster
                    .leader
                    .map_or_else(|| "unknown".to_owned(), |i| format!("member {i}"))
            );
            let endpoints = leader_first(&cluster.endpoints, cluster.leader);
            if !args.warmup.is_zero() {
                let warmup = Load {
                    clients: 16,
                    stop: Stop::After(args.warmup),
                    value_size: args.value_size,
                    first_client: 0,
                    prefix: "warmup".to_owned(),
                };
                let m = run_load(&endpoints, &warmup, &cluster.pids).await;
                eprintln!(
                    "kvbench: {} warm-up: {} writes, {} errors",
                    target.name(),
                    m.acked,
                    m.errors()
                );
            }
            for &clients in &args.clients {
                let load = Load {
                    clients,
                    stop,
                    value_size: args.value_size,
                    first_client: next_client,
                    prefix: "bench".to_owned(),
                };
                next_client += clients as u64;
                let m = run_load(&endpoints, &load, &cluster.pids).await;
                let row = Row {
                    run,
                    target,
                    clients,
                    leader: cluster.leader,
                    writes: m.acked,
                    errors: m.errors(),
                    seconds: m.elapsed.as_secs_f64(),
                    writes_per_sec: m.writes_per_sec(),
                    p50_ms: millis(percentile(&m.latencies, 50.0)),
                    p99_ms: millis(percentile(&m.latencies, 99.0)),
                    max_ms: millis(m.latencies.last().copied()),
                    client_cpu_pct: percent_of_core(m.client_cpu, m.elapsed),
                    server_cpu_pct: percent_of_core(m.server_cpu, m.elapsed),
                    first_error: m.first_error,
                };
                if !args.json {
                    println!("{}", table_row(&row));
                }
                rows.push(row);
            }
        }
    }

    let medians = medians(&rows);
    let ratios = ratios(&medians);
    if args.json {
        let report = Report {
            members: args.members,
            value_size: args.value_size,
            stop: describe_stop(stop),
            data_root,
            data_root_is_tmpfs: tmpfs,
            runs: args.runs,
            rows,
            medians,
            ratios,
        };
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        if args.runs > 1 {
            println!("\n# medians over {} runs", args.runs);
            println!("{}", table_header());
            for row in &medians {
                println!("{}", table_row(row));
            }
        }
        for row in rows.iter().filter(|r| r.first_error.is_some()) {
            println!(
                "# {} at {} clients, first error: {}",
                row.target.name(),
                row.clients,
                row.first_error.as_deref().unwrap_or_default()
            );
        }
        if !ratios.is_empty() {
            println!(
                "\n{:>8}  {:>16}  {:>10}  {:>10}",
                "clients", "writes/s f/e", "p50 f/e", "p99 f/e"
            );
            for r in &ratios {
                println!(
                    "{:>8}  {:>16.2}  {:>10.2}  {:>10.2}",
                    r.clients, r.writes_per_sec, r.p50, r.p99
                );
            }
        }
    }
    Ok(())
}

async fn start_cluster(target: Target, args: &Args, data_root: &Path) -> Result<Cluster> {
    match target {
        Target::Etcd => {
            let config = EtcdConfig {
                members: args.members,
                binary: args.etcd.clone(),
                data_root: data_root.to_path_buf(),
                ..EtcdConfig::default()
            };
            let etcd = EtcdCluster::start(&config).await?;
            let leader = etcd.leader().await.unwrap_or(None);
            Ok(Cluster {
                endpoints: etcd.client_urls(),
                pids: etcd.pids(),
                leader,
                _guard: ClusterGuard::Etcd(etcd),
            })
        }
        Target::Flotilla => {
            // `agents::Cluster::start` blocks this thread while it waits for the agents; nothing
            // else runs meanwhile. It must run on the main thread all the same: the agents die
            // with the thread that started them (PR_SET_PDEATHSIG). It runs `$FLOTILLAD`, which
            // `main` set, under the system's temporary directory, which `main` pointed at
            // `--data-root`.
            let agents = agents::Cluster::start(args.members)?;
            let leader = agents.wait_leader().ok();
            Ok(Cluster {
                endpoints: agents.agents().iter().map(Agent::client_url).collect(),
                pids: agents.agents().iter().filter_map(Agent::pid).collect(),
                leader,
                _guard: ClusterGuard::Flotilla(agents),
            })
        }
    }
}

/// Drives `load` against `endpoints` (client `i` talks to `endpoints[i % len]`); `server_pids`
/// are the processes whose CPU time is the server's.
async fn run_load(endpoints: &[String], load: &Load, server_pids: &[u32]) -> Measurement {
    let body = format!("value={}", "x".repeat(load.value_size));
    // Every client and the coordinator meet here once connected, so connecting is not timed.
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(load.clients + 1));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..load.clients {
        let endpoint = endpoints[i % endpoints.len()].clone();
        let client_id = load.first_client + i as u64;
        let quota = match load.stop {
            Stop::After(_) => None,
            Stop::Requests(n) => Some(share(n, load.clients, i)),
        };
        let deadline_after = match load.stop {
            Stop::After(d) => Some(d),
            Stop::Requests(_) => None,
        };
        let base = format!("{endpoint}/v2/keys/{}/{client_id}/", load.prefix);
        let probe = format!("{endpoint}/v2/keys/{}", load.prefix);
        let body = body.clone();
        let barrier = barrier.clone();
        tasks.spawn(async move {
            let client = reqwest::Client::builder()
                .no_proxy()
                .http1_only()
                .tcp_nodelay(true)
                .pool_max_idle_per_host(1)
                .timeout(Duration::from_secs(10))
                .build();
            // Opens the keep-alive connection; the answer (often 404) does not matter.
            if let Ok(client) = &client
                && let Ok(response) = client.get(&probe).send().await
            {
                let _ = response.bytes().await;
            }
            barrier.wait().await;
            let mut m = Measurement::default();
            let client = match client {
                Ok(client) => client,
                Err(e) => {
                    m.transport_errors = 1;
                    m.first_error = Some(format!("cannot build an http client: {e}"));
                    return m;
                }
            };
            let deadline = deadline_after.map(|d| Instant::now() + d);
            let mut seq: u64 = 0;
            loop {
                match (quota, deadline) {
                    (Some(q), _) if seq >= q => break,
                    (_, Some(d)) if Instant::now() >= d => break,
                    _ => {}
                }
                let url = format!("{base}{seq}");
                seq += 1;
                let sent = Instant::now();
                let result = client
                    .put(&url)
                    .header(
                        reqwest::header::CONTENT_TYPE,
                        "application/x-www-form-urlencoded",
                    )
                    .body(body.clone())
                    .send()
                    .await;
                match result {
                    Ok(response) if response.status().is_success() => {
                        // Acknowledged; read the rest so the connection is reused.
                        let _ = response.bytes().await;
                        m.latencies.push(sent.elapsed());
                        m.acked += 1;
                    }
                    Ok(response) => {
                        let status = response.status();
                        let text = response.text().await.unwrap_or_default();
                        m.status_errors += 1;
                        m.first_error
                            .get_or_insert_with(|| format!("PUT {url}: {status}: {}", text.trim()));
                    }
                    Err(e) => {
                        m.transport_errors += 1;
                        m.first_error
                            .get_or_insert_with(|| format!("PUT {url}: {e}"));
                    }
                }
            }
            m
        });
    }
    barrier.wait().await;
    let start = Instant::now();
    let own_pid = [std::process::id()];
    let (client_cpu, server_cpu) = (cpu_time(&own_pid), cpu_time(server_pids));
    let mut total = Measurement::default();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(mut m) => {
                total.acked += m.acked;
                total.status_errors += m.status_errors;
                total.transport_errors += m.transport_errors;
                total.latencies.append(&mut m.latencies);
                if total.first_error.is_none() {
                    total.first_error = m.first_error;
                }
            }
            Err(e) => {
                total.transport_errors += 1;
                total
                    .first_error
                    .get_or_insert_with(|| format!("a client task failed: {e}"));
            }
        }
    }
    total.elapsed = start.elapsed();
    total.client_cpu = cpu_time(&own_pid).saturating_sub(client_cpu);
    total.server_cpu = cpu_time(server_pids).saturating_sub(server_cpu);
    total.latencies.sort_unstable();
    total
}

/// `endpoints` rotated so that the leader's comes first (unchanged if the leader is unknown).
fn leader_first(endpoints: &[String], leader: Option<usize>) -> Vec<String> {
    let mut rotated = endpoints.to_vec();
    if let Some(leader) = leader.filter(|&l| l < rotated.len()) {
        rotated.rotate_left(leader);
    }
    rotated
}

/// Client `i`'s share of `n` writes over `clients` clients (the first `n % clients` get one more).
fn share(n: u64, clients: usize, i: usize) -> u64 {
    let clients = clients as u64;
    n / clients + u64::from((i as u64) < n % clients)
}

/// Nearest-rank percentile `p` (0..=100) of sorted `values`.
fn percentile(sorted: &[Duration], p: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

fn millis(d: Option<Duration>) -> f64 {
    d.map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0)
}

/// The median of `values` (the mean of the middle two for an even count); NaN for none.
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => values[n / 2],
        _ => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// Per target and client count (in first-seen order), a row whose figures are the medians over
/// the runs (`run` 0; writes and errors are summed, `first_error` is the first one).
fn medians(rows: &[Row]) -> Vec<Row> {
    let mut keys: Vec<(Target, usize)> = Vec::new();
    for r in rows {
        if !keys.contains(&(r.target, r.clients)) {
            keys.push((r.target, r.clients));
        }
    }
    keys.into_iter()
        .map(|(target, clients)| {
            let same: Vec<&Row> = rows
                .iter()
                .filter(|r| r.target == target && r.clients == clients)
                .collect();
            let of = |f: fn(&Row) -> f64| median(same.iter().map(|r| f(r)).collect());
            Row {
                run: 0,
                target,
                clients,
                leader: same[0].leader,
                writes: same.iter().map(|r| r.writes).sum(),
                errors: same.iter().map(|r| r.errors).sum(),
                seconds: of(|r| r.seconds),
                writes_per_sec: of(|r| r.writes_per_sec),
                p50_ms: of(|r| r.p50_ms),
                p99_ms: of(|r| r.p99_ms),
                max_ms: of(|r| r.max_ms),
                client_cpu_pct: of(|r| r.client_cpu_pct),
                server_cpu_pct: of(|r| r.server_cpu_pct),
                first_error: same.iter().find_map(|r| r.first_error.clone()),
            }
        })
        .collect()
}

/// flotilla / etcd per client count measured on both.
fn ratios(rows: &[Row]) -> Vec<Ratio> {
    let find = |target, clients| {
        rows.iter()
            .find(|r| r.target == target && r.clients == clients)
    };
    let mut out = Vec::new();
    for etcd in rows.iter().filter(|r| r.target == Target::Etcd) {
        if out.iter().any(|r: &Ratio| r.clients == etcd.clients) {
            continue;
        }
        if let (Some(e), Some(f)) = (
            find(Target::Etcd, etcd.clients),
            find(Target::Flotilla, etcd.clients),
        ) {
            out.push(Ratio {
                clients: etcd.clients,
                writes_per_sec: f.writes_per_sec / e.writes_per_sec,
                p50: f.p50_ms / e.p50_ms,
                p99: f.p99_ms / e.p99_ms,
            });
        }
    }
    out
}

fn table_header() -> String {
    format!(
        "{:<9} {:>7} {:>10} {:>9} {:>9} {:>9} {:>8} {:>8} {:>10} {:>10}",
        "target",
        "clients",
        "writes/s",
        "p50 ms",
        "p99 ms",
        "max ms",
        "writes",
        "errors",
        "client cpu",
        "server cpu"
    )
}

fn table_row(r: &Row) -> String {
    let mut line = String::new();
    let _ = write!(
        line,
        "{:<9} {:>7} {:>10.1} {:>9.2} {:>9.2} {:>9.2} {:>8} {:>8} {:>9.0}% {:>9.0}%",
        r.target.name(),
        r.clients,
        r.writes_per_sec,
        r.p50_ms,
        r.p99_ms,
        r.max_ms,
        r.writes,
        r.errors,
        r.client_cpu_pct,
        r.server_cpu_pct
    );
    line
}

fn describe_stop(stop: Stop) -> String {
    match stop {
        Stop::After(d) => format!("{d:?} per measurement"),
        Stop::Requests(n) => format!("{n} writes per measurement"),
    }
}

/// Parses `10s`, `500ms`, `1.5s`, `2m`.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, scale) = if let Some(n) = text.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix('m') {
        (n, 60.0)
    } else {
        return Err(format!(
            "duration {text:?} needs a unit: ms, s or m (like 10s)"
        ));
    };
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("duration {text:?} does not start with a number"))?;
    if !value.is_finite() || value < 0.0 {
        return Err(format!(
            "duration {text:?} must be a finite number of at least 0"
        ));
    }
    Ok(Duration::from_secs_f64(value * scale))
}

/// Whether `path` is on a tmpfs (where fsync is a no-op).
fn is_tmpfs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .is_ok_and(|fs| fs.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC)
}

/// `cpu` over `wall`, in % of one core.
fn percent_of_core(cpu: Duration, wall: Duration) -> f64 {
    if wall.is_zero() {
        f64::NAN
    } else {
        100.0 * cpu.as_secs_f64() / wall.as_secs_f64()
    }
}

/// The summed CPU time of `pids` (processes that are gone count as 0).
fn cpu_time(pids: &[u32]) -> Duration {
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let ticks = if ticks > 0 { ticks as f64 } else { 100.0 };
    let mut total = 0.0;
    for pid in pids {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // The command name may hold spaces and parentheses; the fields after its closing
        // parenthesis start at field 3 (state); utime and stime are fields 14 and 15.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let parse = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<u64>().ok())
                .unwrap_or(0)
        };
        total += (parse(11) + parse(12)) as f64 / ticks;
    }
    Duration::from_secs_f64(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units_only() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let values: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&values, 50.0), Some(Duration::from_millis(50)));
        assert_eq!(percentile(&values, 99.0), Some(Duration::from_millis(99)));
        assert_eq!(percentile(&values, 100.0), Some(Duration::from_millis(100)));
        assert_eq!(percentile(&values, 0.0), Some(Duration::from_millis(1)));
        assert_eq!(percentile(&[], 50.0), None);
        let one = [Duration::from_millis(7)];
        assert_eq!(percentile(&one, 99.0), Some(Duration::from_millis(7)));
    }

    #[test]
    fn the_leader_gets_the_first_client() {
        let urls: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        assert_eq!(leader_first(&urls, Some(2)), ["c", "a", "b"]);
        assert_eq!(leader_first(&urls, Some(0)), urls);
        assert_eq!(leader_first(&urls, None), urls);
        assert_eq!(leader_first(&urls, Some(7)), urls);
    }

    #[test]
    fn shares_add_up() {
        for (n, clients) in [(203, 5), (5, 16), (256, 256), (1, 1)] {
            let shares: Vec<u64> = (0..clients).map(|i| share(n, clients, i)).collect();
            assert_eq!(shares.iter().sum::<u64>(), n);
            assert!(shares.iter().max().unwrap() - shares.iter().min().unwrap() <= 1);
        }
    }

    #[test]
    fn ratios_pair_targets_by_client_count() {
        let row = |target, clients, writes_per_sec, p50_ms, p99_ms| Row {
            run: 1,
            target,
            clients,
            leader: None,
            writes: 0,
            errors: 0,
            seconds: 1.0,
            writes_per_sec,
            p50_ms,
            p99_ms,
            max_ms: 0.0,
            client_cpu_pct: 0.0,
            server_cpu_pct: 0.0,
            first_error: None,
        };
        let rows = [
            row(Target::Etcd, 1, 100.0, 2.0, 4.0),
            row(Target::Etcd, 16, 1000.0, 4.0, 8.0),
            row(Target::Flotilla, 1, 150.0, 1.0, 2.0),
        ];
        let r = ratios(&rows);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].clients, 1);
        assert_eq!(r[0].writes_per_sec, 1.5);
        assert_eq!(r[0].p50, 0.5);
        assert_eq!(r[0].p99, 0.5);
    }

    #[test]
    fn own_cpu_time_is_read() {
        // Burn a little CPU so the counter has something to show, then read it back.
        let mut x: u64 = 0;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        assert!(cpu_time(&[std::process::id()]) > Duration::ZERO);
        assert_eq!(cpu_time(&[u32::MAX]), Duration::ZERO);
    }

    /// The core against a real 3-member etcd: every acknowledged write is a key, and nothing else.
    #[tokio::test]
    async fn counts_every_acknowledged_write_against_etcd() {
        let etcd = EtcdCluster::start(&EtcdConfig::default())
            .await
            .expect("etcd cluster starts");
        let endpoints = etcd.client_urls();

        let fixed = Load {
            clients: 5,
            stop: Stop::Requests(203),
            value_size: 16,
            first_client: 0,
            prefix: "bench".to_owned(),
        };
        let m = run_load(&endpoints, &fixed, &etcd.pids()).await;
        assert_eq!(m.first_error, None);
        assert_eq!((m.acked, m.errors()), (203, 0));
        assert_eq!(m.latencies.len(), 203);
        assert!(m.latencies.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(etcd.count_v2_keys("/bench").await.unwrap(), 203);
        // Keys are bench/<client>/<seq>: client 0 has 41 (203 = 5 * 40 + 3), client 4 has 40.
        assert_eq!(etcd.count_v2_keys("/bench/0").await.unwrap(), 41);
        assert_eq!(etcd.count_v2_keys("/bench/4").await.unwrap(), 40);
        let value = etcd
            .get_json(&format!("{}/v2/keys/bench/4/39?quorum=true", endpoints[1]))
            .await
            .unwrap();
        assert_eq!(value["node"]["value"], "x".repeat(16));

        let timed = Load {
            clients: 3,
            stop: Stop::After(Duration::from_millis(300)),
            value_size: 8,
            first_client: 5,
            prefix: "bench".to_owned(),
        };
        let m = run_load(&endpoints, &timed, &etcd.pids()).await;
        assert_eq!((m.errors(), m.first_error), (0, None));
        assert!(m.acked > 0);
        assert_eq!(etcd.count_v2_keys("/bench").await.unwrap(), 203 + m.acked);
    }

    #[test]
    fn medians_are_taken_per_target_and_client_count() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(Vec::new()).is_nan());
        let row = |run, target, clients, writes_per_sec| Row {
            run,
            target,
            clients,
            leader: None,
            writes: 10,
            errors: 0,
            seconds: 1.0,
            writes_per_sec,
            p50_ms: writes_per_sec / 100.0,
            p99_ms: 1.0,
            max_ms: 1.0,
            client_cpu_pct: 0.0,
            server_cpu_pct: 0.0,
            first_error: None,
        };
        let rows = [
            row(1, Target::Etcd, 1, 100.0),
            row(1, Target::Flotilla, 1, 300.0),
            row(2, Target::Flotilla, 1, 100.0),
            row(2, Target::Etcd, 1, 200.0),
            row(3, Target::Etcd, 1, 900.0),
            row(3, Target::Flotilla, 1, 200.0),
        ];
        let m = medians(&rows);
        assert_eq!(m.len(), 2);
        assert_eq!((m[0].target, m[0].run), (Target::Etcd, 0));
        assert_eq!(m[0].writes_per_sec, 200.0);
        assert_eq!(m[0].p50_ms, 2.0);
        assert_eq!(m[0].writes, 30);
        assert_eq!(m[1].writes_per_sec, 200.0);
        let r = ratios(&m);
        assert_eq!(r[0].writes_per_sec, 1.0);
    }
}
