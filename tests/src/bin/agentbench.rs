//! `agentbench`: the agent's footprint. Time from start to READY=1 (a fresh data directory, and
//! a restart on existing data), resident memory idle, and resident memory with 10,000 keys.
//!
//! # Method
//!
//! One agent, a cluster of one (no `initial_cluster`: it founds its own), on 127.0.0.1 with
//! ports picked free, data in a fresh directory under `--data-root`. The agent is started the
//! way systemd starts it: with `NOTIFY_SOCKET` pointing at a datagram socket of this program;
//! time to READY is from just before `spawn` to the datagram that carries `READY=1`, so it
//! includes exec, config parsing, opening the Raft log, binding sockets, electing itself and
//! publishing its client URL. Each of `--runs` runs uses a fresh directory, then the same agent
//! is stopped (SIGTERM) and started again on its data (a restart). RSS is `VmRSS` of
//! `/proc/PID/status` after `--settle` of idleness; "with keys" after writing `--keys` keys
//! (`PUT /v2/keys/bench/N`, `--value-size` bytes, 32 concurrent clients) and settling again.
//! The peak (`VmHWM`) is reported too.
//!
//! "With units" then submits `--units` units and launches them (`PUT /flotilla/v1/units/NAME`,
//! 32 concurrent clients; each a small service with `[X-Fleet]` and `[X-Flotilla]` sections), so
//! the figure holds the keys and the units. On a bench host without a system bus the reconciler
//! stands by: the units are stored, scheduled and assigned, not started.
//!
//! Build the agent with `--release` first for figures that mean anything:
//! `cargo build --release -p flotilla-agent -p flotilla-tests && target/release/agentbench`.

use std::io::Read as _;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;

/// Start-up time and memory of one flotillad.
#[derive(Debug, Parser)]
#[command(name = "agentbench")]
struct Args {
    /// The flotillad binary (default: `flotillad` next to this program).
    #[arg(long, env = "FLOTILLAD")]
    flotillad: Option<PathBuf>,
    /// Start-ups measured (each on a fresh data directory, then a restart on its data).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Keys written for the "with keys" figure.
    #[arg(long, default_value_t = 10_000)]
    keys: usize,
    /// Bytes per value.
    #[arg(long, default_value_t = 64)]
    value_size: usize,
    /// Units submitted and launched for the "with units" figure.
    #[arg(long, default_value_t = 1_000)]
    units: usize,
    /// Idle time before RSS is read, in milliseconds.
    #[arg(long, default_value_t = 2000)]
    settle_ms: u64,
    /// Where the data directories go (a disk, not a tmpfs, for honest fsyncs).
    #[arg(long, default_value = "target/agentbench")]
    data_root: PathBuf,
}

/// One agent under measurement.
struct Agent {
    child: Child,
    api: SocketAddr,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Starts flotillad on `dir` and waits for READY=1; returns it and the time that took.
fn start(bin: &Path, dir: &Path, ports: (u16, u16)) -> Result<(Agent, Duration)> {
    let config = dir.join("flotilla.toml");
    std::fs::write(
        &config,
        format!(
            "name = \"bench\"\ndata_dir = \"{data}\"\n[cluster]\nlisten_peer = \"127.0.0.1:{peer}\"\n\
             advertise_peer = \"127.0.0.1:{peer}\"\n[api]\nlisten = [\"127.0.0.1:{api}\"]\n[dns]\nlisten = []\n",
            data = dir.join("data").display(),
            peer = ports.0,
            api = ports.1,
        ),
    )
    .with_context(|| format!("cannot write {}", config.display()))?;
    let socket_path = dir.join("notify.sock");
    let _ = std::fs::remove_file(&socket_path);
    let socket = UnixDatagram::bind(&socket_path)
        .with_context(|| format!("cannot bind {}", socket_path.display()))?;
    socket.set_read_timeout(Some(Duration::from_millis(200)))?;
    let log = std::fs::File::create(dir.join("agent.log"))?;
    let started = Instant::now();
    let child = Command::new(bin)
        .arg("--config")
        .arg(&config)
        .env("NOTIFY_SOCKET", &socket_path)
        .env("FLOTILLA_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .with_context(|| format!("cannot start {}", bin.display()))?;
    let mut agent = Agent {
        child,
        api: SocketAddr::from(([127, 0, 0, 1], ports.1)),
    };
    let mut buf = [0u8; 4096];
    loop {
        match socket.recv(&mut buf) {
            Ok(n) => {
                let msg = String::from_utf8_lossy(&buf[..n]);
                if msg.lines().any(|l| l == "READY=1") {
                    return Ok((agent, started.elapsed()));
                }
            }
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => return Err(e).context("notify socket"),
        }
        if let Some(status) = agent.child.try_wait()? {
            let mut log = String::new();
            std::fs::File::open(dir.join("agent.log"))?.read_to_string(&mut log)?;
            bail!("flotillad exited with {status} before READY=1:\n{log}");
        }
        if started.elapsed() > Duration::from_secs(60) {
            bail!("no READY=1 within 60 s");
        }
    }
}

/// SIGTERM and wait (the agent's graceful stop).
fn stop(mut agent: Agent) -> Result<()> {
    let pid = nix::unistd::Pid::from_raw(agent.child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)?;
    agent.child.wait()?;
    Ok(())
}

/// `(VmRSS, VmHWM)` in KiB.
fn rss(pid: u32) -> Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Ok((field("VmRSS:"), field("VmHWM:")))
}

/// `PUT`s `n` requests from 32 concurrent clients; `request(i)` gives the URL path, content
/// type and body of the `i`th.
async fn put_all(
    api: SocketAddr,
    n: usize,
    request: impl Fn(usize) -> (String, &'static str, String) + Send + Sync + 'static,
) -> Result<()> {
    let client = reqwest::Client::new();
    let request = std::sync::Arc::new(request);
    let clients = 32;
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..clients {
        let (client, request) = (client.clone(), request.clone());
        tasks.spawn(async move {
            for i in (c..n).step_by(clients) {
                let (path, content_type, body) = request(i);
                let url = format!("http://{api}{path}");
                let resp = client
                    .put(&url)
                    .header("content-type", content_type)
                    .body(body)
                    .send()
                    .await
                    .with_context(|| format!("PUT {url}"))?;
                if !resp.status().is_success() {
                    let status = resp.status();
                    bail!(
                        "PUT {url}: {status}: {}",
                        resp.text().await.unwrap_or_default()
                    );
                }
            }
            Ok(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(())
}

async fn write_keys(api: SocketAddr, keys: usize, value_size: usize) -> Result<()> {
    let body = format!("value={}", "x".repeat(value_size));
    put_all(api, keys, move |k| {
        (
            format!("/v2/keys/bench/{k}"),
            "application/x-www-form-urlencoded",
            body.clone(),
        )
    })
    .await
}

async fn launch_units(api: SocketAddr, units: usize) -> Result<()> {
    put_all(api, units, |i| {
        let text = format!(
            "[Unit]\nDescription=bench unit {i}\n\n[Service]\nExecStart=/bin/sleep infinity\n\
             MemoryMax=16M\n\n[X-Fleet]\nConflicts=bench-{i}-*.service\n\n\
             [X-Flotilla]\nAdvertise=http:{}/tcp\n",
            8000 + i % 1000
        );
        let body = serde_json::json!({ "text": text, "desired": "launched" }).to_string();
        (
            format!("/flotilla/v1/units/bench-{i}.service"),
            "application/json",
            body,
        )
    })
    .await
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

fn summary(mut v: Vec<Duration>) -> String {
    v.sort();
    format!(
        "median {}, min {}, max {} ({} runs)",
        ms(v[v.len() / 2]),
        ms(v[0]),
        ms(v[v.len() - 1]),
        v.len()
    )
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let bin = match &args.flotillad {
        Some(b) => b.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("no directory")?
            .join("flotillad"),
    };
    let root = args.data_root.join(format!("run-{}", std::process::id()));
    std::fs::create_dir_all(&root)?;
    let settle = Duration::from_millis(args.settle_ms);

    let (mut fresh, mut restart) = (Vec::new(), Vec::new());
    let mut last = None;
    for run in 0..args.runs {
        let dir = root.join(format!("agent{run}"));
        std::fs::create_dir_all(&dir)?;
        let ports = (free_port()?, free_port()?);
        let (agent, t) = start(&bin, &dir, ports)?;
        fresh.push(t);
        stop(agent)?;
        let (agent, t) = start(&bin, &dir, ports)?;
        restart.push(t);
        last = Some(agent);
    }
    let agent = last.context("no run")?;
    std::thread::sleep(settle);
    let (idle, _) = rss(agent.child.id())?;

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let written = Instant::now();
    runtime.block_on(write_keys(agent.api, args.keys, args.value_size))?;
    let took = written.elapsed();
    std::thread::sleep(settle);
    let (loaded, _) = rss(agent.child.id())?;
    let launched = Instant::now();
    runtime.block_on(launch_units(agent.api, args.units))?;
    let took_units = launched.elapsed();
    std::thread::sleep(settle);
    let (with_units, peak) = rss(agent.child.id())?;
    drop(agent);
    let _ = std::fs::remove_dir_all(&root);

    println!("flotillad: {}", bin.display());
    println!("time to READY=1, fresh data dir: {}", summary(fresh));
    println!("time to READY=1, restart on data: {}", summary(restart));
    println!(
        "RSS idle:                         {:.1} MiB",
        idle as f64 / 1024.0
    );
    println!(
        "RSS with {} keys of {} bytes:   {:.1} MiB (written in {})",
        args.keys,
        args.value_size,
        loaded as f64 / 1024.0,
        ms(took)
    );
    println!(
        "RSS with those keys and {} units: {:.1} MiB (peak {:.1} MiB; launched in {})",
        args.units,
        with_units as f64 / 1024.0,
        peak as f64 / 1024.0,
        ms(took_units)
    );
    Ok(())
}
