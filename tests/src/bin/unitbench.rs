//! `unitbench`: starting N units through the cluster against the floor of starting the same
//! units with systemd alone, on a testbed of 3 machines that run real systemd.
//!
//! # Method
//!
//! One testbed of 3 machines, each running `flotillad` (the one next to this program, or
//! `--flotillad`). Then two runs of `--units` units, each a small service
//! (`ExecStart=/usr/bin/sleep infinity`):
//!
//! - **cluster**: every unit is submitted and launched through the cluster
//!   (`PUT /flotilla/v1/units/NAME` with its text and `"desired":"launched"`, `--clients`
//!   concurrent clients spread over the 3 agents); the time is from the first request to the
//!   moment every unit is active in the systemd of the machine it was placed on (polled every
//!   100 ms with `systemctl list-units --state=active` in each machine: systemd's own view).
//!   The agents' CPU time (utime + stime of each `flotillad` from /proc) and that of each
//!   machine's systemd (PID 1) are read before and after, and the daemon-reloads each
//!   machine's systemd did meanwhile are counted (its journal's `Reloading` lines).
//! - **floor**: the units are destroyed through the cluster and the machines settle; then the
//!   same unit files (other names) are written by hand to each machine's
//!   `/run/systemd/system` (a third each), one `systemctl daemon-reload` per machine and one
//!   `systemctl start` of all its units on one command line, the 3 machines in parallel; the
//!   time is until the last `systemctl start` returned (systemd returns once every job is
//!   done) and every unit is active.
//!
//! Once every unit is active, the cluster run also waits until the cluster holds an active
//! report of each (what `flotctl list-units` shows) and prints when that was.
//!
//! With `--timeline`, the cluster run also prints every 500 ms how many units the cluster has
//! assigned, how many are active in systemd and how many the cluster holds an active report
//! of: where the time goes between the scheduler, the reconcilers' jobs and their reports.
//!
//! The ratio cluster / floor is the figure the issue sets a target for (1.5x). Progress of the
//! cluster run (how many units active after how long) is printed so that a slow phase shows.
//!
//! Build both binaries with `--release` first for figures that mean anything:
//! `cargo build --release -p flotilla-agent -p flotilla-tests && target/release/unitbench`.
//! Needs root (the testbed).

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use flotilla_tests::testbed::{Node, Options, Testbed, wait_for};

/// Start N units through the cluster, then with systemd alone, and compare.
#[derive(Debug, Parser)]
#[command(name = "unitbench")]
struct Args {
    /// How many units each run starts.
    #[arg(long, default_value_t = 1000)]
    units: usize,
    /// Concurrent clients submitting units through the cluster.
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// The flotillad binary (default: `flotillad` next to this program).
    #[arg(long, env = "FLOTILLAD")]
    flotillad: Option<PathBuf>,
    /// Give up on a run after this many seconds.
    #[arg(long, default_value_t = 900)]
    timeout: u64,
    /// Also sample, every 500 ms of the cluster run, how many units the cluster assigned and
    /// holds active reports of (a GET of the unit list: it costs node1's agent some CPU).
    #[arg(long)]
    timeline: bool,
}

/// The text of every unit: the same file in both runs.
fn unit_text(i: usize) -> String {
    format!(
        "[Unit]\nDescription=unitbench unit {i}\n\n[Service]\nExecStart=/usr/bin/sleep infinity\n"
    )
}

/// CPU seconds (user + system) of process `pid` as seen inside `node`.
fn cpu_seconds(node: &Node<'_>, pid: &str) -> Result<f64> {
    let stat = node
        .stdout(&["cat", &format!("/proc/{pid}/stat")])
        .with_context(|| format!("/proc/{pid}/stat on {}", node.name()))?;
    let after = stat
        .rsplit_once(") ")
        .map(|(_, rest)| rest)
        .context("malformed /proc/PID/stat")?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of proc(5), counted from the state (field 3) here.
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok(ticks as f64 / hz)
}

/// (agent, systemd) CPU seconds of every machine, by name.
fn cpu(tb: &Testbed) -> Result<BTreeMap<String, (f64, f64)>> {
    let mut out = BTreeMap::new();
    for n in tb.nodes() {
        let pid = n.stdout(&["systemctl", "show", "-P", "MainPID", "flotillad.service"])?;
        let agent = cpu_seconds(&n, pid.trim())?;
        let systemd = cpu_seconds(&n, "1")?;
        out.insert(n.name(), (agent, systemd));
    }
    Ok(out)
}

/// How many units whose names start with `prefix` are active in `node`'s systemd.
fn active(node: &Node<'_>, prefix: &str) -> usize {
    let script = format!(
        "systemctl list-units --state=active --no-legend --plain '{prefix}*.service' | wc -l"
    );
    node.stdout(&["sh", "-c", &script])
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// How many units whose names start with `prefix` systemd still knows in `node`.
fn loaded(node: &Node<'_>, prefix: &str) -> usize {
    let script =
        format!("systemctl list-units --all --no-legend --plain '{prefix}*.service' | wc -l");
    node.stdout(&["sh", "-c", &script])
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(usize::MAX)
}

/// How many times `node`'s systemd reloaded its units so far (its own journal).
fn reloads(node: &Node<'_>) -> usize {
    let script = "journalctl -b _PID=1 -o cat --no-pager | grep -c '^Reloading' || true";
    node.stdout(&["sh", "-c", script])
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// Sends `requests` (method, URL, JSON body) from `clients` concurrent clients.
async fn send_all(
    requests: Vec<(reqwest::Method, String, Option<String>)>,
    clients: usize,
) -> Result<()> {
    let client = reqwest::Client::new();
    let requests = std::sync::Arc::new(requests);
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..clients {
        let (client, requests) = (client.clone(), requests.clone());
        tasks.spawn(async move {
            for i in (c..requests.len()).step_by(clients) {
                let (method, url, body) = &requests[i];
                let mut req = client.request(method.clone(), url);
                if let Some(body) = body {
                    req = req
                        .header("content-type", "application/json")
                        .body(body.clone());
                }
                let resp = req
                    .send()
                    .await
                    .with_context(|| format!("{method} {url}"))?;
                if !resp.status().is_success() {
                    let status = resp.status();
                    bail!(
                        "{method} {url}: {status}: {}",
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

/// What the cluster run measured.
struct ClusterRun {
    /// From the first request until every unit is active.
    took: Duration,
    /// How long the submissions took.
    submitted: Duration,
    /// From the first request until the cluster holds an active report of every unit (what
    /// `flotctl list-units` shows), measured after `took`.
    reported: Duration,
    /// (units active, when), every tenth of the units.
    marks: Vec<(usize, Duration)>,
    /// With `--timeline`: what systemd and the cluster showed, every 500 ms.
    timeline: Vec<Sample>,
}

/// One point of the `--timeline`.
struct Sample {
    /// Since the first request.
    at: Duration,
    /// Units active in the machines' systemd.
    active: usize,
    /// Units the cluster assigned to a machine.
    assigned: usize,
    /// Units the cluster holds an `active` report of (the machines' reconcilers reported it).
    reported: usize,
}

/// (units assigned, units reported active) as the cluster's unit list shows them.
async fn cluster_view(client: &reqwest::Client, url: &str) -> Result<(usize, usize)> {
    let list: serde_json::Value = client.get(url).send().await?.json().await?;
    let units = list["units"].as_array().cloned().unwrap_or_default();
    let assigned = units
        .iter()
        .filter(|u| u["machines"].as_array().is_some_and(|m| !m.is_empty()))
        .count();
    let reported = units
        .iter()
        .filter(|u| {
            u["states"]
                .as_array()
                .is_some_and(|s| s.iter().any(|s| s["active"] == "active"))
        })
        .count();
    Ok((assigned, reported))
}

/// The cluster run: every unit submitted and launched through the agents' HTTP API.
fn cluster_run(tb: &Testbed, rt: &tokio::runtime::Runtime, args: &Args) -> Result<ClusterRun> {
    let addrs: Vec<String> = tb.nodes().map(|n| n.addr().to_string()).collect();
    let requests: Vec<_> = (0..args.units)
        .map(|i| {
            let url = format!(
                "http://{}:2379/flotilla/v1/units/ub-{i}.service",
                addrs[i % addrs.len()]
            );
            let body = serde_json::json!({ "text": unit_text(i), "desired": "launched" });
            (reqwest::Method::PUT, url, Some(body.to_string()))
        })
        .collect();
    let start = Instant::now();
    let mut submit = Some(rt.spawn(send_all(requests, args.clients)));
    let mut submitting = None;
    let mut marks = Vec::new();
    let mut timeline = Vec::new();
    let mut sampled: Option<Instant> = None;
    let mut next_mark = args.units / 10;
    let deadline = Duration::from_secs(args.timeout);
    let client = reqwest::Client::new();
    let list = format!("http://{}:2379/flotilla/v1/units", addrs[0]);
    loop {
        if submit.as_ref().is_some_and(|s| s.is_finished()) {
            let done = submit.take().expect("checked above");
            rt.block_on(done)??;
            submitting = Some(start.elapsed());
        }
        let up: usize = tb.nodes().map(|n| active(&n, "ub-")).sum();
        while next_mark > 0 && up >= next_mark && next_mark <= args.units {
            marks.push((next_mark, start.elapsed()));
            next_mark += args.units / 10;
        }
        if args.timeline && sampled.is_none_or(|t| t.elapsed() >= Duration::from_millis(500)) {
            sampled = Some(Instant::now());
            let (assigned, reported) = rt.block_on(cluster_view(&client, &list))?;
            timeline.push(Sample {
                at: start.elapsed(),
                active: up,
                assigned,
                reported,
            });
        }
        if let Some(submitted) = submitting
            && up >= args.units
        {
            let took = start.elapsed();
            // Then how long until the cluster knows it too.
            wait_for(
                deadline.saturating_sub(took),
                "the cluster to hold an active report of every unit",
                || match rt.block_on(cluster_view(&client, &list)) {
                    Ok((_, reported)) if reported >= args.units => Ok(()),
                    Ok((_, reported)) => Err(Some(format!(
                        "active reports of {reported} of {} units",
                        args.units
                    ))),
                    Err(e) => Err(Some(e.to_string())),
                },
            )?;
            return Ok(ClusterRun {
                took,
                submitted,
                reported: start.elapsed(),
                marks,
                timeline,
            });
        }
        if start.elapsed() > deadline {
            bail!(
                "only {up} of {} units active after {}s",
                args.units,
                args.timeout
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Destroys the cluster run's units and waits until no machine has them.
fn destroy_all(tb: &Testbed, rt: &tokio::runtime::Runtime, args: &Args) -> Result<Duration> {
    let addr = tb.node(1).addr();
    let requests: Vec<_> = (0..args.units)
        .map(|i| {
            let url = format!("http://{addr}:2379/flotilla/v1/units/ub-{i}.service");
            (reqwest::Method::DELETE, url, None)
        })
        .collect();
    let start = Instant::now();
    rt.block_on(send_all(requests, args.clients))?;
    wait_for(
        Duration::from_secs(args.timeout),
        "the cluster run's units gone",
        || {
            let left: usize = tb.nodes().map(|n| loaded(&n, "ub-")).sum();
            if left == 0 {
                Ok(())
            } else {
                Err(Some(format!("{left} left")))
            }
        },
    )?;
    Ok(start.elapsed())
}

/// The floor: the same files by hand, one reload and one `systemctl start` per machine.
fn floor_run(tb: &Testbed, args: &Args) -> Result<Duration> {
    let nodes: Vec<Node<'_>> = tb.nodes().collect();
    let count = nodes.len();
    let scripts: Vec<String> = (0..count)
        .map(|k| {
            let mine: Vec<usize> = (0..args.units).filter(|i| i % count == k).collect();
            let mut script = String::from("set -e\ncd /run/systemd/system\n");
            for &i in &mine {
                script.push_str(&format!(
                    "cat > fl-{i}.service <<'EOF'\n{}EOF\n",
                    unit_text(i)
                ));
            }
            script.push_str("systemctl daemon-reload\nsystemctl start");
            for &i in &mine {
                script.push_str(&format!(" fl-{i}.service"));
            }
            script.push('\n');
            script
        })
        .collect();
    let start = Instant::now();
    std::thread::scope(|s| -> Result<()> {
        let runs: Vec<_> = nodes
            .iter()
            .zip(&scripts)
            .map(|(n, script)| {
                s.spawn(move || -> Result<()> {
                    let mut child = n
                        .command(&["sh"])?
                        .stdin(Stdio::piped())
                        .stdout(Stdio::null())
                        .spawn()?;
                    child
                        .stdin
                        .take()
                        .context("sh's stdin")?
                        .write_all(script.as_bytes())?;
                    let status = child.wait()?;
                    if !status.success() {
                        bail!("the floor script failed on {}: {status}", n.name());
                    }
                    Ok(())
                })
            })
            .collect();
        for r in runs {
            r.join().expect("a floor thread does not panic")?;
        }
        Ok(())
    })?;
    let took = start.elapsed();
    let up: usize = tb.nodes().map(|n| active(&n, "fl-")).sum();
    if up != args.units {
        bail!("the floor run has {up} of {} units active", args.units);
    }
    Ok(took)
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

fn main() -> Result<()> {
    let args = Args::parse();
    let agent = args
        .flotillad
        .clone()
        .unwrap_or_else(Options::default_agent);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    eprintln!("booting 3 machines with {}", agent.display());
    let tb = Testbed::up(Options::new(3).agent(agent)).context("testbed up")?;
    for n in tb.nodes() {
        n.wait_active("flotillad.service", Duration::from_secs(60))?;
    }
    let n1 = tb.node(1);
    wait_for(Duration::from_secs(60), "3 machines registered", || {
        let out = n1
            .stdout(&["curl", "-s", "http://127.0.0.1:2379/flotilla/v1/machines"])
            .unwrap_or_default();
        if out.matches("\"up\"").count() >= 3 || out.matches("\"Up\"").count() >= 3 {
            Ok(())
        } else {
            Err(Some(out))
        }
    })?;

    let before = cpu(&tb)?;
    let reloads_before: Vec<usize> = tb.nodes().map(|n| reloads(&n)).collect();
    eprintln!("cluster run: {} units through the cluster", args.units);
    let ClusterRun {
        took: cluster,
        submitted,
        reported,
        marks,
        timeline,
    } = cluster_run(&tb, &rt, &args)?;
    let after = cpu(&tb)?;
    let mut per_machine = Vec::new();
    for (n, r0) in tb.nodes().zip(&reloads_before) {
        per_machine.push(format!(
            "{} {} ({} daemon-reloads)",
            n.name(),
            active(&n, "ub-"),
            reloads(&n).saturating_sub(*r0)
        ));
    }
    let destroyed = destroy_all(&tb, &rt, &args)?;

    let floor_before = cpu(&tb)?;
    eprintln!("floor run: {} units with systemd alone", args.units);
    let floor = floor_run(&tb, &args)?;
    let floor_after = cpu(&tb)?;

    let delta = |a: &BTreeMap<String, (f64, f64)>, b: &BTreeMap<String, (f64, f64)>| {
        a.iter()
            .map(|(name, (agent, systemd))| {
                let (agent0, systemd0) = b[name];
                (name.clone(), agent - agent0, systemd - systemd0)
            })
            .collect::<Vec<_>>()
    };
    let cluster_cpu = delta(&after, &before);
    let floor_cpu = delta(&floor_after, &floor_before);
    println!("unitbench: {} units on 3 machines", args.units);
    println!(
        "cluster: {} until all active (submitted in {}); placed {}",
        secs(cluster),
        secs(submitted),
        per_machine.join(", ")
    );
    let marks: Vec<String> = marks
        .iter()
        .map(|(n, t)| format!("{n}@{:.1}s", t.as_secs_f64()))
        .collect();
    println!("  progress: {}", marks.join(" "));
    println!(
        "  the cluster holds an active report of every unit after {}",
        secs(reported)
    );
    for s in &timeline {
        println!(
            "  at {:5.1}s: {:4} assigned, {:4} active in systemd, {:4} reported active",
            s.at.as_secs_f64(),
            s.assigned,
            s.active,
            s.reported
        );
    }
    let agents: f64 = cluster_cpu.iter().map(|(_, a, _)| a).sum();
    let systemds: f64 = cluster_cpu.iter().map(|(_, _, s)| s).sum();
    for (name, a, s) in &cluster_cpu {
        println!("  {name}: agent {a:.2} s CPU, systemd {s:.2} s CPU");
    }
    println!("  agents {agents:.2} s CPU in all, systemd {systemds:.2} s");
    println!("  destroy of all: {}", secs(destroyed));
    println!("floor: {} until all active", secs(floor));
    let floor_systemd: f64 = floor_cpu.iter().map(|(_, _, s)| s).sum();
    let idle_agents: f64 = floor_cpu.iter().map(|(_, a, _)| a).sum();
    println!("  systemd {floor_systemd:.2} s CPU (idle agents {idle_agents:.2} s)");
    println!(
        "ratio cluster / floor: {:.2}x (target 1.5x)",
        cluster.as_secs_f64() / floor.as_secs_f64()
    );
    tb.down()?;
    Ok(())
}
