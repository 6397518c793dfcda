//! A cluster of real `flotillad` processes on loopback, for the integration tests.
//!
//! # Design
//!
//! [`Cluster::start`] writes one config per agent into a fresh directory under the system temp
//! dir and spawns `flotillad` for each. Every agent gets its own loopback address `127.A.B.C`
//! with the standard ports (client 2379, peer 2380): `A.B` comes from the process id and a
//! per-process counter, `C` is `100 + i` (the etcd helper uses `10 + i`), so clusters of
//! parallel tests never meet. `start` returns once every agent answers `/health` and every
//! member's client URL is in `/v2/members` (what `etcdctl` syncs to), or fails at a deadline
//! with the tail of the agents' logs.
//!
//! The binary is `$FLOTILLAD` if set, else `flotillad` next to the test executable's `deps`
//! directory (`target/debug/flotillad`), built once per test process with
//! `cargo build -p flotilla-agent` when `$FLOTILLAD` is unset.
//!
//! # Processes
//!
//! The cluster owns its processes: [`Cluster::kill`] sends SIGKILL to one and reaps it,
//! [`Cluster::restart`] starts it again on the same data, and [`Drop`] kills and reaps all and
//! removes the directory. Each agent is started with `PR_SET_PDEATHSIG` so it dies with the test.

use std::fs;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::testbed::{wait_for, wait_until};

/// Clusters started by this process so far.
static CLUSTERS: AtomicU32 = AtomicU32::new(0);
/// How long an agent may take to become ready.
const READY_DEADLINE: Duration = Duration::from_secs(30);

/// Why a cluster could not be started or driven.
#[derive(Debug, thiserror::Error)]
pub enum AgentsError {
    /// File system trouble in the cluster directory.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The agent binary is missing or could not be built.
    #[error("flotillad: {0}")]
    Binary(String),
    /// An agent did not get ready in time or exited.
    #[error("agent {name} is not ready: {reason}; the end of its log:\n{log_tail}")]
    NotReady {
        /// The agent.
        name: String,
        /// What was waited for.
        reason: String,
        /// The last lines of its log.
        log_tail: String,
    },
    /// No free loopback addresses were found.
    #[error("no free loopback addresses for {0} agents")]
    NoAddresses(usize),
}

/// One agent process.
pub struct Agent {
    name: String,
    ip: Ipv4Addr,
    config: PathBuf,
    log: PathBuf,
    data: PathBuf,
    child: Option<Child>,
}

impl Agent {
    /// The member name (`n1`, `n2`, ...).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `http://127.A.B.C:2379`.
    pub fn client_url(&self) -> String {
        format!("http://{}:2379", self.ip)
    }

    /// `127.A.B.C:2380`.
    pub fn peer_addr(&self) -> String {
        format!("{}:2380", self.ip)
    }

    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The agent's `data_dir`.
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// The agent's log (stderr and stdout).
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// A running cluster of agents.
pub struct Cluster {
    dir: PathBuf,
    binary: PathBuf,
    agents: Vec<Agent>,
    prefix: (u8, u8),
    /// Extra `[cluster]` lines for every agent.
    extra: String,
}

impl Cluster {
    /// Starts `n` founding members (`initial_cluster`) and waits until all are ready.
    pub fn start(n: usize) -> Result<Cluster, AgentsError> {
        Cluster::start_with(n, "")
    }

    /// As [`Cluster::start`], with `extra` added to every agent's `[cluster]` section (e.g.
    /// `snapshot_entries = 50`).
    pub fn start_with(n: usize, extra: &str) -> Result<Cluster, AgentsError> {
        let binary = binary()?;
        let (cluster_no, (a, b)) = allocate(n + 4)?;
        let dir = std::env::temp_dir().join(format!(
            "flotilla-agents-{}-{cluster_no}",
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).map_err(|source| AgentsError::Io {
            what: "cannot create",
            path: dir.clone(),
            source,
        })?;
        let mut cluster = Cluster {
            dir,
            binary,
            agents: Vec::new(),
            prefix: (a, b),
            extra: extra.to_string(),
        };
        let founders: Vec<String> = (0..n)
            .map(|i| {
                format!(
                    "\"n{}={}:2380\"",
                    i + 1,
                    Ipv4Addr::new(127, a, b, 100 + i as u8)
                )
            })
            .collect();
        let initial = format!("initial_cluster = [{}]", founders.join(", "));
        for _ in 0..n {
            cluster.add_agent(&initial)?;
        }
        for i in 0..n {
            cluster.spawn(i)?;
        }
        for i in 0..n {
            cluster.wait_ready(i)?;
        }
        cluster.wait_members_announced()?;
        Ok(cluster)
    }

    fn add_agent(&mut self, cluster_line: &str) -> Result<usize, AgentsError> {
        let i = self.agents.len();
        let name = format!("n{}", i + 1);
        let ip = Ipv4Addr::new(127, self.prefix.0, self.prefix.1, 100 + i as u8);
        let data = self.dir.join(&name);
        let config = self.dir.join(format!("{name}.toml"));
        let text = format!(
            "name = \"{name}\"\ndata_dir = \"{}\"\n[cluster]\nlisten_peer = \"{ip}:2380\"\n{cluster_line}\n\
             heartbeat_interval = \"200ms\"\nmachine_lost_after = \"3s\"\n{}\n[api]\nlisten = [\"{ip}:2379\"]\n",
            data.display(),
            self.extra,
        );
        fs::write(&config, text).map_err(|source| AgentsError::Io {
            what: "cannot write",
            path: config.clone(),
            source,
        })?;
        let log = self.dir.join(format!("{name}.log"));
        self.agents.push(Agent {
            name,
            ip,
            config,
            log,
            data,
            child: None,
        });
        Ok(i)
    }

    fn spawn(&mut self, i: usize) -> Result<(), AgentsError> {
        let agent = &mut self.agents[i];
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&agent.log)
            .map_err(|source| AgentsError::Io {
                what: "cannot open",
                path: agent.log.clone(),
                source,
            })?;
        let log2 = log.try_clone().map_err(|source| AgentsError::Io {
            what: "cannot open",
            path: agent.log.clone(),
            source,
        })?;
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--config")
            .arg(&agent.config)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|e| {
            AgentsError::Binary(format!("cannot run {}: {e}", self.binary.display()))
        })?;
        agent.child = Some(child);
        Ok(())
    }

    /// The agents.
    pub fn agents(&self) -> &[Agent] {
        &self.agents
    }

    /// Every client URL, comma-separated (for `etcdctl --endpoints`).
    pub fn endpoints(&self) -> String {
        self.agents
            .iter()
            .filter(|a| a.child.is_some())
            .map(Agent::client_url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Kills agent `i` with SIGKILL and reaps it.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.agents[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts agent `i` again on its data without waiting (see [`Cluster::wait_ready`]).
    pub fn respawn(&mut self, i: usize) -> Result<(), AgentsError> {
        self.kill(i);
        self.spawn(i)
    }

    /// Starts agent `i` again on its data and waits until it is ready.
    pub fn restart(&mut self, i: usize) -> Result<(), AgentsError> {
        self.kill(i);
        self.spawn(i)?;
        self.wait_ready(i)
    }

    /// Starts a new agent that joins through agent 0's peer address; returns its index.
    pub fn join_new(&mut self) -> Result<usize, AgentsError> {
        let via = self
            .agents
            .iter()
            .find(|a| a.child.is_some())
            .map(Agent::peer_addr)
            .unwrap_or_default();
        let i = self.add_agent(&format!("join = [\"{via}\"]"))?;
        self.spawn(i)?;
        self.wait_ready(i)?;
        self.wait_members_announced()?;
        Ok(i)
    }

    /// The index of the agent that currently leads, waiting for one until the deadline.
    pub fn wait_leader(&self) -> Result<usize, AgentsError> {
        wait_for(READY_DEADLINE, "a leader", || {
            self.agents
                .iter()
                .enumerate()
                .filter(|(_, a)| a.child.is_some())
                .find(|(_, a)| {
                    http_get(a.ip, "/v2/stats/self")
                        .is_some_and(|(code, body)| code == 200 && body.contains("\"StateLeader\""))
                })
                .map(|(i, _)| i)
                .ok_or(None)
        })
        .map_err(|_| self.not_ready(0, "no leader elected".into()))
    }

    /// Waits until agent `i` answers `/health` with a leader.
    pub fn wait_ready(&mut self, i: usize) -> Result<(), AgentsError> {
        let agent = &mut self.agents[i];
        // Ok(None): ready; Ok(Some(status)): the agent exited.
        let seen = wait_for(READY_DEADLINE, "/health reporting a leader", || {
            if let Some(child) = agent.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                return Ok(Some(status));
            }
            match http_get(agent.ip, "/health") {
                Some((200, body)) if body.contains("\"true\"") => Ok(None),
                _ => Err(None),
            }
        });
        match seen {
            Ok(None) => Ok(()),
            Ok(Some(status)) => {
                self.agents[i].child = None;
                Err(self.not_ready(i, format!("exited with {status}")))
            }
            Err(_) => Err(self.not_ready(i, "/health did not report a leader".into())),
        }
    }

    /// Waits until every running agent's client URL is in `/v2/members` of every running agent.
    pub fn wait_members_announced(&self) -> Result<(), AgentsError> {
        let running = || self.agents.iter().filter(|a| a.child.is_some());
        wait_until(READY_DEADLINE, "every client URL in /v2/members", || {
            running().all(|asker| {
                http_get(asker.ip, "/v2/members").is_some_and(|(code, body)| {
                    code == 200
                        && running().all(|a| {
                            body.contains(&format!("\"clientURLs\":[\"{}\"]", a.client_url()))
                        })
                })
            })
        })
        .map_err(|_| self.not_ready(0, "not every member announced its client URL".into()))
    }

    fn not_ready(&self, i: usize, reason: String) -> AgentsError {
        let log = self.agents[i].log();
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        let log_tail = tail.into_iter().rev().collect::<Vec<_>>().join("\n");
        AgentsError::NotReady {
            name: self.agents[i].name.clone(),
            reason,
            log_tail,
        }
    }

    /// A GET on agent `i`'s client API: `(status, body)`.
    pub fn get(&self, i: usize, path: &str) -> Option<(u16, String)> {
        http_get(self.agents[i].ip, path)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.agents.len() {
            self.kill(i);
        }
        if std::env::var_os("FLOTILLA_KEEP_TEST_DIRS").is_none() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// A tiny HTTP/1.0 GET (the harness must not depend on the code under test for its checks).
fn http_get(ip: Ipv4Addr, path: &str) -> Option<(u16, String)> {
    let addr = SocketAddr::from((ip, 2379));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {ip}\r\n\r\n").ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let status = buf.split(' ').nth(1)?.parse().ok()?;
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}

/// Picks a `127.A.B.*` prefix whose first `n` agent addresses are free on both ports; returns
/// the cluster's number in this process too.
fn allocate(n: usize) -> Result<(u32, (u8, u8)), AgentsError> {
    let pid = std::process::id();
    for _ in 0..16 {
        let cluster = CLUSTERS.fetch_add(1, Ordering::Relaxed);
        let slot = (pid.wrapping_mul(64).wrapping_add(cluster)) % (254 * 256);
        let (a, b) = ((1 + slot / 256) as u8, (slot % 256) as u8);
        let free = (0..n).all(|i| {
            let ip = Ipv4Addr::new(127, a, b, 100 + i as u8);
            TcpListener::bind((ip, 2379)).is_ok() && TcpListener::bind((ip, 2380)).is_ok()
        });
        if free {
            return Ok((cluster, (a, b)));
        }
    }
    Err(AgentsError::NoAddresses(n))
}

/// The `flotillad` binary: `$FLOTILLAD`, or the workspace's, built once per process.
pub fn binary() -> Result<PathBuf, AgentsError> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    if let Some(p) = std::env::var_os("FLOTILLAD") {
        return Ok(PathBuf::from(p));
    }
    BUILT
        .get_or_init(|| {
            let exe = std::env::current_exe().map_err(|e| e.to_string())?;
            // target/debug/deps/it-HASH -> target/debug
            let profile_dir = exe
                .parent()
                .and_then(Path::parent)
                .ok_or("no target directory")?
                .to_path_buf();
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let mut build = Command::new(cargo);
            build.args(["build", "-p", "flotilla-agent", "--bin", "flotillad"]);
            if profile_dir.ends_with("release") {
                build.arg("--release");
            }
            let status = build
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .status()
                .map_err(|e| format!("cannot run cargo build: {e}"))?;
            if !status.success() {
                return Err(format!(
                    "cargo build -p flotilla-agent failed with {status}"
                ));
            }
            let bin = profile_dir.join("flotillad");
            if bin.exists() {
                Ok(bin)
            } else {
                Err(format!("{} does not exist after the build", bin.display()))
            }
        })
        .clone()
        .map_err(AgentsError::Binary)
}
