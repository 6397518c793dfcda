//! `dnsbench`: queries/s and latency of flotilla-dns against Knot DNS serving the same records.
//!
//! # Load
//!
//! A zone of `--services` services (default 1000), each with 1 to 3 active instances spread over
//! `--machines` machines (default 10) and one advertised TCP port, is built with
//! `flotilla_dns::Zone::build`. The very same records (`Zone::records`, one line each) are written
//! as a zone file for `knotd`. The query file holds, for every service, its A query
//! (`<svc>.service.<domain>`) and its SRV query (`_<svc>._tcp.service.<domain>`): half A, half
//! SRV, every name once per pass.
//!
//! Each server is measured alone, one after the other, on its own loopback address (port 53):
//! `dnsperf` runs the query file over UDP for `--duration` seconds with `--clients` clients on
//! `--threads` threads, against flotilla-dns (served in this process by `flotilla_dns::serve` on a
//! tokio runtime with one worker per CPU) and against `knotd` (started with its own
//! configuration and run directory, never the packaged service; one UDP worker per CPU, its
//! default). Before measuring, one SRV answer from each is compared, so both serve the same data.
//!
//! `knot` and `dnsperf` (Debian packages) are installed with apt-get if missing.
//!
//! The figures are only as good as the machine is quiet: client and server share its CPUs.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;
use flotilla_dns::{
    Advertised, MachineRecord, Proto, ServiceInstance, Zone, ZoneConfig, ZoneData, bind_udp, serve,
};
use flotilla_tests::testbed::wait_for;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Queries/s and latency of flotilla-dns and Knot DNS serving the same zone.
#[derive(Parser, Debug)]
#[command(name = "dnsbench")]
struct Args {
    /// Services in the zone.
    #[arg(long, default_value_t = 1000)]
    services: usize,
    /// Machines the instances are spread over.
    #[arg(long, default_value_t = 10)]
    machines: usize,
    /// Seconds of load per server.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// dnsperf clients (sockets).
    #[arg(long, default_value_t = 8)]
    clients: u32,
    /// dnsperf threads.
    #[arg(long, default_value_t = 2)]
    threads: u32,
    /// Loopback address flotilla-dns listens on (port 53).
    #[arg(long, default_value = "127.0.77.1")]
    flotilla_addr: Ipv4Addr,
    /// Loopback address knotd listens on (port 53).
    #[arg(long, default_value = "127.0.77.2")]
    knot_addr: Ipv4Addr,
    /// Which servers to measure.
    #[arg(long, value_enum, default_value_t = Target::Both)]
    target: Target,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    Both,
    Flotilla,
    Knot,
}

const DOMAIN: &str = "flotilla.internal";

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("dnsbench: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<()> {
    ensure_tools()?;
    let dir = std::env::temp_dir().join(format!("dnsbench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let result = bench(&args, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn bench(args: &Args, dir: &Path) -> Result<()> {
    let data = zone_data(args.services, args.machines);
    let zone = Zone::build(&data, &ZoneConfig::default());
    if let Some(problem) = zone.problems().first() {
        bail!("the generated zone has problems: {problem}");
    }
    let records = zone.records();
    let zone_file = dir.join(format!("{DOMAIN}.zone"));
    let mut text = String::new();
    for record in &records {
        writeln!(text, "{record}")?;
    }
    std::fs::write(&zone_file, text).with_context(|| format!("writing {}", zone_file.display()))?;
    let query_file = dir.join("queries.txt");
    let mut queries = String::new();
    for i in 0..args.services {
        writeln!(queries, "{}.service.{DOMAIN} A", service(i))?;
        writeln!(queries, "_{}._tcp.service.{DOMAIN} SRV", service(i))?;
    }
    std::fs::write(&query_file, queries)?;
    let probe = format!("_{}._tcp.service.{DOMAIN}", service(args.services / 2));
    println!(
        "zone: {} services on {} machines, {} records; queries: {} names (A and SRV); \
         dnsperf -c {} -T {} -l {}; {} CPUs, shared with the client",
        args.services,
        args.machines,
        records.len(),
        2 * args.services,
        args.clients,
        args.threads,
        args.duration,
        cpus(),
    );

    let mut results = Vec::new();
    let mut reference = None;
    if args.target != Target::Knot {
        let server = FlotillaServer::start(SocketAddr::from((args.flotilla_addr, 53)), zone)?;
        let answer = wait_answer(args.flotilla_addr, &probe)?;
        reference = Some(answer);
        results.push((
            "flotilla-dns",
            dnsperf(args, args.flotilla_addr, &query_file)?,
        ));
        drop(server);
    }
    if args.target != Target::Flotilla {
        let mut knot = Knot::start(dir, args.knot_addr, &zone_file)?;
        let answer = wait_answer(args.knot_addr, &probe)
            .with_context(|| format!("knotd did not answer; its log:\n{}", knot.log()))?;
        if let Some(reference) = &reference
            && *reference != answer
        {
            bail!(
                "the servers disagree on {probe} SRV:\nflotilla-dns:\n{reference}\nknot:\n{answer}"
            );
        }
        results.push(("knot", dnsperf(args, args.knot_addr, &query_file)?));
        knot.stop();
    }

    println!(
        "{:<14} {:>12} {:>14} {:>14} {:>10}",
        "server", "queries/s", "avg latency", "max latency", "lost"
    );
    for (name, r) in &results {
        println!(
            "{name:<14} {:>12.0} {:>11.3} ms {:>11.3} ms {:>10}",
            r.qps,
            r.avg_latency * 1e3,
            r.max_latency * 1e3,
            r.lost
        );
    }
    if let [(_, flotilla), (_, knot)] = results.as_slice() {
        println!("flotilla-dns / knot: {:.2}", flotilla.qps / knot.qps);
    }
    Ok(())
}

fn service(i: usize) -> String {
    format!("svc{i:04}")
}

/// `services` services with 1 to 3 instances each, spread over `machines` machines.
fn zone_data(services: usize, machines: usize) -> ZoneData {
    let machines_list: Vec<MachineRecord> = (0..machines)
        .map(|m| MachineRecord {
            name: format!("m{m:02}"),
            addrs: vec![IpAddr::V4(Ipv4Addr::new(
                10,
                1,
                (m / 250) as u8,
                (m % 250 + 1) as u8,
            ))],
            metadata: [("rack".to_owned(), format!("r{}", m % 4))].into(),
            up: true,
        })
        .collect();
    let mut instances = Vec::new();
    for i in 0..services {
        for k in 0..(i % 3 + 1) {
            let machine = &machines_list[(i * 7 + k * 3) % machines];
            instances.push(ServiceInstance {
                service: service(i),
                unit: format!("{}@{k}.service", service(i)),
                machine: machine.name.clone(),
                ports: vec![Advertised {
                    name: None,
                    port: 10000 + (i % 50000) as u16,
                    proto: Proto::Tcp,
                }],
            });
        }
    }
    ZoneData {
        machines: machines_list,
        services: instances,
    }
}

fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Installs the Debian packages `knot` and `dnsperf` when their programs are missing.
fn ensure_tools() -> Result<()> {
    let missing: Vec<&str> = [("knotd", "knot"), ("dnsperf", "dnsperf")]
        .into_iter()
        .filter(|(program, _)| {
            !Command::new("sh")
                .args(["-c", &format!("command -v {program}")])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .map(|(_, package)| package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("dnsbench: installing {}", missing.join(" "));
    let status = Command::new("apt-get")
        .args(["install", "-y", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("running apt-get")?;
    if !status.success() {
        bail!("apt-get install {} failed: {status}", missing.join(" "));
    }
    Ok(())
}

/// The sorted answer records of `name` SRV at `addr`, once the server answers.
fn wait_answer(addr: Ipv4Addr, name: &str) -> Result<String> {
    let answer = wait_for(Duration::from_secs(10), "the server answers", || {
        let out = Command::new("dig")
            .args([
                &format!("@{addr}"),
                "+tries=1",
                "+time=1",
                "+noall",
                "+answer",
                name,
                "SRV",
            ])
            .output()
            .map_err(|e| Some(e.to_string()))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let mut lines: Vec<&str> = text.lines().filter(|l| !l.starts_with(';')).collect();
        lines.sort();
        if lines.is_empty() {
            return Err(Some(text.into_owned()));
        }
        Ok(lines.join("\n"))
    })?;
    Ok(answer)
}

/// dnsperf's summary.
#[derive(Debug)]
struct Perf {
    qps: f64,
    avg_latency: f64,
    max_latency: f64,
    lost: u64,
}

fn dnsperf(args: &Args, addr: Ipv4Addr, queries: &Path) -> Result<Perf> {
    let out = Command::new("dnsperf")
        .arg("-s")
        .arg(addr.to_string())
        .arg("-d")
        .arg(queries)
        .args(["-l", &args.duration.to_string()])
        .args(["-c", &args.clients.to_string()])
        .args(["-T", &args.threads.to_string()])
        .args(["-q", "200"])
        .output()
        .context("running dnsperf")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "dnsperf failed ({}):\n{text}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let field = |label: &str| -> Result<&str> {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(label))
            .map(str::trim)
            .with_context(|| format!("no {label:?} in dnsperf's output:\n{text}"))
    };
    let latency = field("Average Latency (s):")?;
    let avg = latency.split_whitespace().next().unwrap_or_default();
    let max = latency
        .split("max ")
        .nth(1)
        .map(|m| m.trim_end_matches(')'))
        .unwrap_or_default();
    Ok(Perf {
        qps: field("Queries per second:")?.parse()?,
        avg_latency: avg.parse()?,
        max_latency: max.parse()?,
        lost: field("Queries lost:")?
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .parse()?,
    })
}

/// flotilla-dns on its own multi-threaded runtime, stopped on drop.
struct FlotillaServer {
    cancel: CancellationToken,
    thread: Option<std::thread::JoinHandle<Result<()>>>,
    // keeps the channel open while serving
    _zone: watch::Sender<Arc<Zone>>,
}

impl FlotillaServer {
    fn start(addr: SocketAddr, zone: Zone) -> Result<FlotillaServer> {
        let udp = bind_udp(addr, cpus()).with_context(|| format!("binding udp {addr}"))?;
        let tcp =
            std::net::TcpListener::bind(addr).with_context(|| format!("binding tcp {addr}"))?;
        tcp.set_nonblocking(true)?;
        let (tx, rx) = watch::channel(Arc::new(zone));
        let cancel = CancellationToken::new();
        let token = cancel.clone();
        let thread = std::thread::spawn(move || -> Result<()> {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(cpus())
                .enable_all()
                .build()?;
            runtime.block_on(async move {
                let udp = udp
                    .into_iter()
                    .map(tokio::net::UdpSocket::from_std)
                    .collect::<Result<Vec<_>, _>>()?;
                let tcp = tokio::net::TcpListener::from_std(tcp)?;
                serve(rx, udp, vec![tcp], token).await?;
                Ok(())
            })
        });
        Ok(FlotillaServer {
            cancel,
            thread: Some(thread),
            _zone: tx,
        })
    }
}

impl Drop for FlotillaServer {
    fn drop(&mut self) {
        self.cancel.cancel();
        if let Some(thread) = self.thread.take() {
            match thread.join() {
                Ok(Ok(())) => {}
                Ok(Err(error)) => eprintln!("dnsbench: flotilla-dns failed: {error:#}"),
                Err(_) => eprintln!("dnsbench: flotilla-dns panicked"),
            }
        }
    }
}

/// A `knotd` with its own configuration, storage and run directory under the bench's directory.
struct Knot {
    child: Child,
    log: PathBuf,
}

impl Knot {
    fn start(dir: &Path, addr: Ipv4Addr, zone_file: &Path) -> Result<Knot> {
        let run = dir.join("knot");
        std::fs::create_dir_all(&run)?;
        let config = dir.join("knot.conf");
        std::fs::write(
            &config,
            format!(
                "server:\n    rundir: \"{run}\"\n    listen: {addr}@53\n\
                 log:\n  - target: stderr\n    any: warning\n\
                 database:\n    storage: \"{run}\"\n\
                 template:\n  - id: default\n    storage: \"{run}\"\n\
                 zone:\n  - domain: {DOMAIN}\n    file: \"{zone}\"\n",
                run = run.display(),
                zone = zone_file.display(),
            ),
        )?;
        let log = dir.join("knotd.log");
        let log_file = std::fs::File::create(&log)?;
        let child = Command::new("knotd")
            .arg("-c")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn()
            .context("starting knotd")?;
        Ok(Knot { child, log })
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Knot {
    fn drop(&mut self) {
        self.stop();
    }
}
