//! `failoverbench`: how long writes stop when the leader of a 3-member cluster is stopped with
//! SIGTERM (what `systemctl stop` sends), flotilla vs etcd 3.4 on the same machine and load.
//! etcd hands its leadership over on SIGTERM; flotilla does too (`Cluster::hand_over` in the
//! agent). Without a handover a stopped leader costs an election timeout and the followers'
//! leader lease (about 2.5 s for flotilla's settings).
//!
//! # Method
//!
//! Every round, for each target (one after the other, never at the same time, alternating
//! which goes first), a fresh cluster is started; one client writes `PUT
//! /v2/keys/failover/<seq>` in a loop (each write waits for its answer, 10 s at most) through
//! a member that does not lead. After `--before` the leader gets SIGTERM; the client goes on
//! for `--after`. The figure of a round is the longest time between two consecutive
//! acknowledged writes (the write gap: no write was acknowledged for that long; the window's
//! end counts, so a client that hears nothing until then waited all of it); also reported are the writes that failed after the SIGTERM and how long the stopped
//! leader took to exit. The summary is the median and the worst over the rounds, and the ratio
//! of the medians.
//!
//! `--before` is 2 s by default: a flotilla leader grants its successor's vote only once its
//! own leader lease (1.5 s after its election) is over, so a leader elected just before is
//! stopped later (the handover waits that long at most).
//!
//! Build the agent with `--release` first: `cargo build --release -p flotilla-agent -p
//! flotilla-tests && target/release/failoverbench`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::{Parser, ValueEnum};
use flotilla_tests::agents::{self, Agent};
use flotilla_tests::etcd::{EtcdCluster, EtcdConfig};
use flotilla_tests::testbed::wait_for_async;

/// The write gap when a leader is stopped with SIGTERM: flotilla vs etcd 3.4.
#[derive(Debug, Parser)]
#[command(name = "failoverbench")]
struct Args {
    /// Rounds per target (each on a fresh cluster).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Which clusters to measure.
    #[arg(long, value_enum, default_value_t = TargetArg::Both)]
    target: TargetArg,
    /// Writing before the leader is stopped, in milliseconds.
    #[arg(long, default_value_t = 2000)]
    before_ms: u64,
    /// Writing after the leader is stopped, in milliseconds.
    #[arg(long, default_value_t = 4000)]
    after_ms: u64,
    /// The flotillad binary (default: `flotillad` next to this program).
    #[arg(long, env = "FLOTILLAD")]
    flotillad: Option<PathBuf>,
    /// The etcd binary.
    #[arg(long, default_value = "/usr/bin/etcd")]
    etcd: PathBuf,
    /// Where the clusters keep their data (default: the system's temporary directory).
    #[arg(long)]
    data_root: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum TargetArg {
    Flotilla,
    Etcd,
    Both,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

/// One round's figures.
#[derive(Debug, Clone)]
struct Round {
    /// The longest time without an acknowledged write, from `--before` on.
    gap: Duration,
    /// Writes that failed after the SIGTERM.
    failed: usize,
    /// Writes acknowledged after the SIGTERM.
    acked: usize,
    /// From SIGTERM to the leader's exit.
    exit: Duration,
    /// Why the first failed write after the SIGTERM failed.
    first_failure: Option<String>,
}

/// One write: when it was answered, and why it failed (`None`: acknowledged).
type Write = (Instant, Option<String>);

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("failoverbench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<()> {
    if args.target != TargetArg::Etcd {
        // SAFETY: no other thread exists yet (the writers start later).
        unsafe { agents::use_flotillad(args.flotillad.as_deref()) }?;
    }
    if let Some(root) = &args.data_root {
        // SAFETY: as above.
        unsafe { std::env::set_var("TMPDIR", root) };
    }
    let targets: Vec<Target> = match args.target {
        TargetArg::Flotilla => vec![Target::Flotilla],
        TargetArg::Etcd => vec![Target::Etcd],
        TargetArg::Both => vec![Target::Etcd, Target::Flotilla],
    };
    let mut results: Vec<(Target, Vec<Round>)> = targets.iter().map(|t| (*t, vec![])).collect();
    for round in 0..args.rounds {
        let mut order = targets.clone();
        if round % 2 == 1 {
            order.reverse();
        }
        for target in order {
            let r = measure(target, args)
                .with_context(|| format!("round {} of {}", round + 1, target.name()))?;
            eprintln!(
                "round {}: {:<8} write gap {:>7.1} ms, {} failed and {} acknowledged after SIGTERM, leader exited after {:.0} ms",
                round + 1,
                target.name(),
                ms(r.gap),
                r.failed,
                r.acked,
                ms(r.exit)
            );
            if let Some(why) = &r.first_failure {
                eprintln!("         the first failed write: {why}");
            }
            if let Some((_, rounds)) = results.iter_mut().find(|(t, _)| *t == target) {
                rounds.push(r);
            }
        }
    }
    println!(
        "{:<9} {:>14} {:>13} {:>14} {:>15}",
        "TARGET", "GAP MEDIAN ms", "GAP WORST ms", "FAILED WRITES", "EXIT MEDIAN ms"
    );
    let mut medians = vec![];
    for (target, rounds) in &results {
        let gap = median(rounds.iter().map(|r| ms(r.gap)).collect());
        let worst = rounds.iter().map(|r| ms(r.gap)).fold(0.0, f64::max);
        let failed: usize = rounds.iter().map(|r| r.failed).sum();
        let exit = median(rounds.iter().map(|r| ms(r.exit)).collect());
        println!(
            "{:<9} {gap:>14.1} {worst:>13.1} {failed:>14} {exit:>15.0}",
            target.name()
        );
        medians.push((*target, gap));
    }
    if let [(Target::Etcd, etcd), (Target::Flotilla, flotilla)] = medians[..] {
        println!(
            "median write gap: flotilla {flotilla:.1} ms, etcd {etcd:.1} ms, flotilla/etcd {:.3}x ({})",
            flotilla / etcd,
            if flotilla <= etcd {
                "flotilla's is shorter or equal"
            } else {
                "flotilla's is longer"
            }
        );
    }
    Ok(())
}

/// A cluster under test: its client URLs, which member leads, and how to stop one member.
enum Cluster {
    Etcd(EtcdCluster),
    Flotilla(agents::Cluster),
}

impl Cluster {
    fn start(target: Target, args: &Args) -> Result<(Self, Vec<String>, usize)> {
        match target {
            Target::Etcd => {
                let runtime = runtime()?;
                let config = EtcdConfig {
                    binary: args.etcd.clone(),
                    data_root: args.data_root.clone().unwrap_or_else(std::env::temp_dir),
                    ..EtcdConfig::default()
                };
                let etcd = runtime.block_on(EtcdCluster::start(&config))?;
                let leader = runtime.block_on(wait_for_async(
                    Duration::from_secs(30),
                    "an etcd leader",
                    || async {
                        match etcd.leader().await {
                            Ok(Some(l)) => Ok(l),
                            Ok(None) => Err(None),
                            Err(e) => Err(Some(e.to_string())),
                        }
                    },
                ))?;
                let urls = etcd.client_urls();
                Ok((Cluster::Etcd(etcd), urls, leader))
            }
            Target::Flotilla => {
                // On this (the main) thread: agents die with the thread that started them.
                let agents = agents::Cluster::start(3)?;
                let leader = agents.wait_leader()?;
                let urls = agents.agents().iter().map(Agent::client_url).collect();
                Ok((Cluster::Flotilla(agents), urls, leader))
            }
        }
    }

    /// SIGTERM to member `i`; returns once it exited.
    fn terminate(&mut self, i: usize) -> Result<()> {
        const GRACE: Duration = Duration::from_secs(30);
        match self {
            Cluster::Etcd(etcd) => {
                etcd.terminate(i, GRACE)?
                    .context("etcd did not exit within 30 s of SIGTERM")?;
            }
            Cluster::Flotilla(agents) => {
                agents
                    .terminate(i, GRACE)
                    .context("the agent did not exit within 30 s of SIGTERM")?;
            }
        }
        Ok(())
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start a tokio runtime")
}

fn measure(target: Target, args: &Args) -> Result<Round> {
    let (mut cluster, urls, leader) = Cluster::start(target, args)?;
    let url = urls[(leader + 1) % urls.len()].clone();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        std::thread::spawn(move || -> Result<Vec<Write>> {
            let rt = runtime()?;
            rt.block_on(write_until(url, stop))
        })
    };
    let start = Instant::now();
    std::thread::sleep(Duration::from_millis(args.before_ms));
    let sigterm = Instant::now();
    cluster.terminate(leader)?;
    let exit = sigterm.elapsed();
    std::thread::sleep(Duration::from_millis(args.after_ms).saturating_sub(sigterm.elapsed()));
    let end = Instant::now();
    stop.store(true, Ordering::Relaxed);
    let writes = writer
        .join()
        .map_err(|_| anyhow::anyhow!("the writer panicked"))??;
    drop(cluster);
    // The window's ends count as acknowledgements: a client that hears nothing until the
    // end of the window waited that long.
    let mut acked: Vec<Instant> = vec![start];
    acked.extend(
        writes
            .iter()
            .filter(|(at, failure)| failure.is_none() && *at >= start && *at <= end)
            .map(|(at, _)| *at),
    );
    acked.push(end);
    let mut gap = Duration::ZERO;
    for pair in acked.windows(2) {
        gap = gap.max(pair[1] - pair[0]);
    }
    let after: Vec<&Write> = writes.iter().filter(|(at, _)| *at >= sigterm).collect();
    let acked_after = after.iter().filter(|(_, f)| f.is_none()).count();
    Ok(Round {
        gap,
        failed: after.len() - acked_after,
        acked: acked_after,
        exit,
        first_failure: after.iter().find_map(|(_, f)| f.clone()),
    })
}

/// Writes one key after another through `url` until `stop`.
async fn write_until(url: String, stop: Arc<AtomicBool>) -> Result<Vec<Write>> {
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .context("cannot build the http client")?;
    let mut writes = Vec::new();
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        seq += 1;
        let sent = http
            .put(format!("{url}/v2/keys/failover/{seq}"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body("value=x")
            .send()
            .await;
        let failure = match sent {
            Ok(r) if r.status().is_success() => None,
            Ok(r) => {
                let status = r.status();
                Some(format!(
                    "{status}: {}",
                    r.text().await.unwrap_or_default().trim()
                ))
            }
            Err(e) => Some(e.to_string()),
        };
        let failed = failure.is_some();
        writes.push((Instant::now(), failure));
        if failed {
            // A refused write comes back at once: do not spin on a member without a leader.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    Ok(writes)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}
