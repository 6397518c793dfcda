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
//! [`Cluster::start_wrapped`] runs every agent through a command prefix (`fiu-run -x` for
//! injected I/O failures), in the cluster's directory.
//!
//! The cluster owns its processes: [`Cluster::kill`] sends SIGKILL to one and reaps it,
//! [`Cluster::restart`] starts it again on the same data, and [`Drop`] kills and reaps all and
//! removes the directory. Each agent is started with `PR_SET_PDEATHSIG` so it dies with the test.
//!
//! # Security
//!
//! [`Cluster::start_secure`] starts the agents with peer mutual TLS and/or an HTTPS client API
//! ([`Security`]): each agent's certificate is issued by the real `flotctl ca issue` into the
//! CA directory the test made with `flotctl ca init`. The harness's own checks then go through
//! `curl` with the CA, and with the token or client certificate the test gave.

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

/// How the agents of a cluster are secured (see [`Cluster::start_secure`]).
#[derive(Debug, Clone, Default)]
pub struct Security {
    /// `[cluster] tls_*`: certificates from this `flotctl ca` directory.
    pub peer_ca: Option<PathBuf>,
    /// `[api] tls_*`: certificates from this `flotctl ca` directory.
    pub api_ca: Option<PathBuf>,
    /// More `[api]` lines for every agent (`[[api.users]]` tables go last).
    pub api_extra: String,
    /// The token the harness's checks send; without one they present the client certificate
    /// `harness` of `api_ca` (issued on first use).
    pub token: Option<String>,
}

/// One agent process.
pub struct Agent {
    name: String,
    ip: Ipv4Addr,
    scheme: &'static str,
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

    /// `http://127.A.B.C:2379` (`https://` with an HTTPS client API).
    pub fn client_url(&self) -> String {
        format!("{}://{}:2379", self.scheme, self.ip)
    }

    /// `127.A.B.C`.
    pub fn ip(&self) -> Ipv4Addr {
        self.ip
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
    security: Security,
    /// `PROGRAM ARGS...` each agent is run through (`PROGRAM ARGS... flotillad --config ..`).
    wrapper: Vec<String>,
}

impl Cluster {
    /// Starts `n` founding members (`initial_cluster`) and waits until all are ready.
    pub fn start(n: usize) -> Result<Cluster, AgentsError> {
        Cluster::start_with(n, "")
    }

    /// As [`Cluster::start`], with `extra` added to every agent's `[cluster]` section (e.g.
    /// `snapshot_entries = 50`).
    pub fn start_with(n: usize, extra: &str) -> Result<Cluster, AgentsError> {
        Cluster::start_secure(n, extra, Security::default())
    }

    /// As [`Cluster::start_with`], secured as `security` says.
    pub fn start_secure(n: usize, extra: &str, security: Security) -> Result<Cluster, AgentsError> {
        Cluster::start_all(n, extra, security, &[])
    }

    /// As [`Cluster::start_with`], every agent started (and restarted) as `wrapper...
    /// flotillad --config ...` (e.g. `["fiu-run", "-x", "-f", "fiu"]`), with the cluster's
    /// directory ([`Cluster::dir`]) as its working directory: a relative path in `wrapper` names
    /// a file there. The wrapper must `exec` the agent, so its process id is the agent's.
    pub fn start_wrapped(n: usize, extra: &str, wrapper: &[&str]) -> Result<Cluster, AgentsError> {
        Cluster::start_all(n, extra, Security::default(), wrapper)
    }

    fn start_all(
        n: usize,
        extra: &str,
        security: Security,
        wrapper: &[&str],
    ) -> Result<Cluster, AgentsError> {
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
            security,
            wrapper: wrapper.iter().map(|w| w.to_string()).collect(),
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
        let peer_ca = self.security.peer_ca.clone();
        self.add_agent_with(cluster_line, peer_ca.as_deref())
    }

    /// Adds agent `nK` (not started) whose peer certificate comes from `peer_ca`.
    fn add_agent_with(
        &mut self,
        cluster_line: &str,
        peer_ca: Option<&Path>,
    ) -> Result<usize, AgentsError> {
        let i = self.agents.len();
        let name = format!("n{}", i + 1);
        let ip = Ipv4Addr::new(127, self.prefix.0, self.prefix.1, 100 + i as u8);
        let data = self.dir.join(&name);
        let config = self.dir.join(format!("{name}.toml"));
        let mut peer_tls = String::new();
        if let Some(dir) = peer_ca {
            peer_tls = tls_lines(dir, &name, ip)?;
        }
        let mut api_tls = String::new();
        if let Some(dir) = &self.security.api_ca {
            api_tls = tls_lines(dir, &name, ip)?;
        }
        let text = format!(
            "name = \"{name}\"\ndata_dir = \"{}\"\n[cluster]\nlisten_peer = \"{ip}:2380\"\n{cluster_line}\n\
             heartbeat_interval = \"200ms\"\nmachine_lost_after = \"3s\"\n{}\n{peer_tls}[dns]\nlisten = [\"{ip}:53\"]\n\
             [api]\nlisten = [\"{ip}:2379\"]\n{api_tls}{}\n",
            data.display(),
            self.extra,
            self.security.api_extra,
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
            scheme: if self.security.api_ca.is_some() {
                "https"
            } else {
                "http"
            },
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
        let mut cmd = match self.wrapper.split_first() {
            None => Command::new(&self.binary),
            Some((program, args)) => {
                let mut cmd = Command::new(program);
                cmd.args(args).arg(&self.binary).current_dir(&self.dir);
                cmd
            }
        };
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
            AgentsError::Binary(format!(
                "cannot run {}: {e}",
                cmd.get_program().to_string_lossy()
            ))
        })?;
        agent.child = Some(child);
        Ok(())
    }

    /// The cluster's directory (configs, logs, data directories).
    pub fn dir(&self) -> &Path {
        &self.dir
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

    /// Stops agent `i` as systemd would: SIGTERM, then waits for it to exit (SIGKILL after
    /// `grace`). Returns its exit status (none if it had to be killed or was not running).
    pub fn terminate(&mut self, i: usize, grace: Duration) -> Option<std::process::ExitStatus> {
        let mut child = self.agents[i].child.take()?;
        crate::testbed::terminate(&mut child, grace).ok().flatten()
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

    /// Starts a new agent that asks agent 0 to join it, with a peer certificate from `peer_ca`
    /// (e.g. another CA's), without waiting for it; returns its index.
    pub fn spawn_joiner(&mut self, peer_ca: &Path) -> Result<usize, AgentsError> {
        let via = self
            .agents
            .iter()
            .find(|a| a.child.is_some())
            .map(Agent::peer_addr)
            .unwrap_or_default();
        let i = self.add_agent_with(&format!("join = [\"{via}\"]"), Some(peer_ca))?;
        self.spawn(i)?;
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
                    self.probe(a.ip, "/v2/stats/self")
                        .is_some_and(|(code, body)| code == 200 && body.contains("\"StateLeader\""))
                })
                .map(|(i, _)| i)
                .ok_or(None)
        })
        .map_err(|_| self.not_ready(0, "no leader elected".into()))
    }

    /// Waits until agent `i` answers `/health` with a leader.
    pub fn wait_ready(&mut self, i: usize) -> Result<(), AgentsError> {
        let probe = self.prober();
        let agent = &mut self.agents[i];
        // Ok(None): ready; Ok(Some(status)): the agent exited.
        let seen = wait_for(READY_DEADLINE, "/health reporting a leader", || {
            if let Some(child) = agent.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                return Ok(Some(status));
            }
            match probe.get(agent.ip, "/health") {
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
                self.probe(asker.ip, "/v2/members")
                    .is_some_and(|(code, body)| {
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
        self.probe(self.agents[i].ip, path)
    }

    fn prober(&self) -> Prober {
        Prober {
            security: self.security.clone(),
        }
    }

    fn probe(&self, ip: Ipv4Addr, path: &str) -> Option<(u16, String)> {
        self.prober().get(ip, path)
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

/// `tls_ca`, `tls_cert`, `tls_key` lines for agent `name` at `ip`, its certificate issued into
/// `dir` by `flotctl ca issue` unless it is there already.
fn tls_lines(dir: &Path, name: &str, ip: Ipv4Addr) -> Result<String, AgentsError> {
    let cert = dir.join(format!("{name}.crt"));
    if !cert.exists() {
        flotctl_ca_issue(dir, name, &["--member", "--ip", &ip.to_string()])?;
    }
    Ok(format!(
        "tls_ca = \"{}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
        dir.join("ca.crt").display(),
        cert.display(),
        dir.join(format!("{name}.key")).display()
    ))
}

/// For a benchmark's `main`: points this harness at `flotillad` (default: `flotillad` next to
/// the running program, so a `--release` benchmark runs the release agent) through
/// `FLOTILLAD`.
///
/// # Safety
///
/// It sets an environment variable: call it before any other thread exists.
pub unsafe fn use_flotillad(flotillad: Option<&Path>) -> Result<(), AgentsError> {
    let flotillad = match flotillad {
        Some(path) => path.to_path_buf(),
        None => std::env::current_exe()
            .map_err(|e| AgentsError::Binary(format!("cannot find this program's path: {e}")))?
            .with_file_name("flotillad"),
    };
    if !flotillad.is_file() {
        return Err(AgentsError::Binary(format!(
            "no flotillad at {}: build it (cargo build --release -p flotilla-agent) or pass --flotillad",
            flotillad.display()
        )));
    }
    // SAFETY: the caller guarantees that no other thread exists.
    unsafe { std::env::set_var("FLOTILLAD", &flotillad) };
    Ok(())
}

/// `flotctl ca issue DIR NAME ARGS...`.
pub fn flotctl_ca_issue(dir: &Path, name: &str, args: &[&str]) -> Result<(), AgentsError> {
    let out = Command::new(flotctl()?)
        .args(["ca", "issue"])
        .arg(dir)
        .arg(name)
        .args(args)
        .output()
        .map_err(|e| AgentsError::Binary(format!("cannot run flotctl: {e}")))?;
    if !out.status.success() {
        return Err(AgentsError::Binary(format!(
            "flotctl ca issue {} {name} failed: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(())
}

/// How the harness's checks reach the client API.
struct Prober {
    security: Security,
}

impl Prober {
    /// A GET on the agent at `ip`: `(status, body)`.
    fn get(&self, ip: Ipv4Addr, path: &str) -> Option<(u16, String)> {
        match &self.security.api_ca {
            None => http_get(ip, path, self.security.token.as_deref()),
            Some(dir) => {
                let mut cmd = Command::new("curl");
                cmd.args([
                    "-sS",
                    "-m",
                    "5",
                    "-o",
                    "-",
                    "-w",
                    "\n%{http_code}",
                    "--cacert",
                ])
                .arg(dir.join("ca.crt"));
                match &self.security.token {
                    Some(t) => {
                        cmd.args(["-H", &format!("Authorization: Bearer {t}")]);
                    }
                    None => {
                        if !dir.join("harness.crt").exists() {
                            flotctl_ca_issue(dir, "harness", &[]).ok()?;
                        }
                        cmd.arg("--cert")
                            .arg(dir.join("harness.crt"))
                            .arg("--key")
                            .arg(dir.join("harness.key"));
                    }
                }
                let out = cmd.arg(format!("https://{ip}:2379{path}")).output().ok()?;
                let text = String::from_utf8_lossy(&out.stdout);
                let (body, code) = text.rsplit_once('\n')?;
                Some((code.trim().parse().ok()?, body.to_string()))
            }
        }
    }
}

/// A tiny HTTP/1.0 GET (the harness must not depend on the code under test for its checks).
fn http_get(ip: Ipv4Addr, path: &str, token: Option<&str>) -> Option<(u16, String)> {
    let addr = SocketAddr::from((ip, 2379));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(s, "GET {path} HTTP/1.0\r\nHost: {ip}\r\n{auth}\r\n").ok()?;
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

/// The `flotctl` binary: `$FLOTCTL`, or the workspace's, built once per process.
pub fn flotctl() -> Result<PathBuf, AgentsError> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    if let Some(p) = std::env::var_os("FLOTCTL") {
        return Ok(PathBuf::from(p));
    }
    BUILT
        .get_or_init(|| {
            let agent = binary().map_err(|e| e.to_string())?;
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let mut build = Command::new(cargo);
            build.args(["build", "-p", "flotilla-cli", "--bin", "flotctl"]);
            if agent.parent().is_some_and(|d| d.ends_with("release")) {
                build.arg("--release");
            }
            let status = build
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .status()
                .map_err(|e| format!("cannot run cargo build: {e}"))?;
            if !status.success() {
                return Err(format!("cargo build -p flotilla-cli failed with {status}"));
            }
            let bin = agent.with_file_name("flotctl");
            if bin.exists() {
                Ok(bin)
            } else {
                Err(format!("{} does not exist after the build", bin.display()))
            }
        })
        .clone()
        .map_err(AgentsError::Binary)
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
