//! A real etcd 3.4 cluster on loopback, for side-by-side comparisons with flotilla.
//!
//! # Design
//!
//! [`EtcdCluster::start`] runs `N` members of the packaged etcd (`/usr/bin/etcd`, Debian's
//! `etcd-server`; the packaged service is never touched) as child processes of the caller. Each
//! member gets its own loopback address `127.A.B.C` with etcd's standard ports (client 2379, peer
//! 2380): the whole of `127.0.0.0/8` is local on Linux, so clusters of different processes and of
//! one process do not meet. `A.B` is derived from the process id and a per-process counter, and an
//! address is only used once both of its ports could be bound; if no address is free, the members
//! fall back to ephemeral ports. Every member runs with `--enable-v2`, so the v2 key API
//! (`/v2/keys`) that flotilla also serves is there.
//!
//! `start` returns once every member answers `/health` with `"true"` (a leader is elected and a
//! quorum read succeeds) and `/v2/keys/` with a 2xx status, or fails at a deadline; a member that
//! exits while starting is reported with the tail of its log.
//!
//! # Durability
//!
//! etcd 3.4 appends every Raft entry to its write-ahead log and `fdatasync`s it before a member
//! acknowledges the entry; the leader commits an entry only once a quorum has persisted it, and a
//! v2 `PUT` is answered only after the entry is committed and applied. So an acknowledged write is
//! on disk on a quorum of members. etcd 3.4 has no switch to turn this off. This holds only if the data directories live on a
//! file system where `fdatasync` reaches the disk: with a tmpfs `data_root`, every number measured
//! here is a number without durability.
//!
//! # Processes
//!
//! The cluster owns its processes: [`Drop`] kills (SIGKILL) and reaps exactly the members it
//! started, by their handles, and removes the data directories (the directories of clusters whose
//! process died before `Drop` ran are removed by the next `start`). Each member is also started with
//! `PR_SET_PDEATHSIG`, so it dies with the thread that started it if the caller is killed before
//! `Drop` runs; call [`EtcdCluster::start`] from a thread that outlives the cluster (the main
//! thread, or the thread of a `#[tokio::test]`).
//!
//! # Current limitations
//!
//! Plain HTTP only (no TLS, no authentication); members cannot be stopped or restarted one at a
//! time; `/health` is polled every 50 ms until the deadline because etcd has no readiness
//! notification outside systemd.

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

/// etcd's standard client port.
pub const CLIENT_PORT: u16 = 2379;
/// etcd's standard peer port.
pub const PEER_PORT: u16 = 2380;

/// Clusters started by this process so far; part of every cluster's addresses.
static CLUSTERS: AtomicU32 = AtomicU32::new(0);

/// Why an etcd cluster could not be started or asked something.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("cannot create etcd data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "cannot start {binary} for member {member}: {source} (is Debian's etcd-server installed?)"
    )]
    Spawn {
        binary: PathBuf,
        member: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "etcd member {member} ({url}) exited with {status} while starting; the end of its log:\n{log_tail}"
    )]
    Exited {
        member: String,
        url: String,
        status: ExitStatus,
        log_tail: String,
    },
    #[error(
        "etcd member {member} ({url}) was not healthy within {timeout:?}; the end of its log:\n{log_tail}"
    )]
    NotHealthy {
        member: String,
        url: String,
        timeout: Duration,
        log_tail: String,
    },
    #[error("cannot find free loopback ports for {members} etcd members: {source}")]
    NoAddress {
        members: usize,
        #[source]
        source: io::Error,
    },
    #[error("cannot build an http client for etcd: {0}")]
    Client(#[source] reqwest::Error),
    #[error("request to etcd at {url} failed: {source}")]
    Request {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("etcd at {url} answered {status}: {body}")]
    Status {
        url: String,
        status: reqwest::StatusCode,
        body: String,
    },
}

/// How to start a cluster. `Default` is three members of `/usr/bin/etcd` under the system's
/// temporary directory, with a 30 s deadline.
#[derive(Debug, Clone)]
pub struct EtcdConfig {
    /// Number of members (voters).
    pub members: usize,
    /// The etcd binary.
    pub binary: PathBuf,
    /// Where the cluster's own directory is created; the file system decides whether etcd's
    /// fsyncs mean anything (see the module docs).
    pub data_root: PathBuf,
    /// How long every member has to become healthy.
    pub start_timeout: Duration,
}

impl Default for EtcdConfig {
    fn default() -> Self {
        Self {
            members: 3,
            binary: PathBuf::from("/usr/bin/etcd"),
            data_root: std::env::temp_dir(),
            start_timeout: Duration::from_secs(30),
        }
    }
}

/// One running member.
#[derive(Debug)]
pub struct EtcdMember {
    name: String,
    client_url: String,
    peer_url: String,
    log: PathBuf,
    child: Child,
}

impl EtcdMember {
    /// The member's name (`m0`, `m1`, ...).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The member's client URL, `http://127.A.B.C:2379`.
    pub fn client_url(&self) -> &str {
        &self.client_url
    }

    /// The member's peer URL, `http://127.A.B.C:2380`.
    pub fn peer_url(&self) -> &str {
        &self.peer_url
    }

    /// The member's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The member's log file (its stdout and stderr).
    pub fn log(&self) -> &Path {
        &self.log
    }
}

/// A running etcd cluster; dropping it kills its members and removes its data.
#[derive(Debug)]
pub struct EtcdCluster {
    dir: PathBuf,
    members: Vec<EtcdMember>,
    http: reqwest::Client,
}

impl EtcdCluster {
    /// Starts `config.members` members and waits until every one is healthy.
    pub async fn start(config: &EtcdConfig) -> Result<Self, EtcdError> {
        let http = reqwest::Client::builder()
            .no_proxy()
            .http1_only()
            .timeout(Duration::from_secs(5))
            .build()
            .map_err(EtcdError::Client)?;
        remove_stale_dirs(&config.data_root);
        let (cluster_id, addresses) = allocate_addresses(config.members)?;
        let dir = config
            .data_root
            .join(format!("flotilla-etcd-{}-{cluster_id}", std::process::id()));
        fs::create_dir_all(&dir).map_err(|source| EtcdError::DataDir {
            path: dir.clone(),
            source,
        })?;
        // From here on, `Drop` cleans up whatever was started.
        let mut cluster = Self {
            dir,
            members: Vec::with_capacity(config.members),
            http,
        };
        let initial_cluster = addresses
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("m{i}=http://{peer}"))
            .collect::<Vec<_>>()
            .join(",");
        let token = format!("flotilla-bench-{}-{cluster_id}", std::process::id());
        for (i, (client, peer)) in addresses.iter().enumerate() {
            let member =
                cluster.spawn_member(config, i, *client, *peer, &initial_cluster, &token)?;
            cluster.members.push(member);
        }
        cluster.wait_healthy(config.start_timeout).await?;
        Ok(cluster)
    }

    fn spawn_member(
        &self,
        config: &EtcdConfig,
        index: usize,
        client: SocketAddrV4,
        peer: SocketAddrV4,
        initial_cluster: &str,
        token: &str,
    ) -> Result<EtcdMember, EtcdError> {
        let name = format!("m{index}");
        let data_dir = self.dir.join(&name);
        let log = self.dir.join(format!("{name}.log"));
        let data_dir_error = |path: &Path| {
            let path = path.to_path_buf();
            move |source| EtcdError::DataDir { path, source }
        };
        fs::create_dir_all(&data_dir).map_err(data_dir_error(&data_dir))?;
        let out = File::create(&log).map_err(data_dir_error(&log))?;
        let err = out.try_clone().map_err(data_dir_error(&log))?;
        let client_url = format!("http://{client}");
        let peer_url = format!("http://{peer}");
        let mut command = Command::new(&config.binary);
        command
            .arg("--name")
            .arg(&name)
            .arg("--data-dir")
            .arg(&data_dir)
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", initial_cluster])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", token])
            .arg("--enable-v2")
            .args(["--logger", "zap", "--log-outputs", "stderr"])
            .env_clear()
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        // SAFETY: the closure runs in the forked child before exec and only calls prctl(2),
        // which is async-signal-safe; it allocates nothing.
        unsafe {
            command.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(io::Error::from)
            });
        }
        let child = command.spawn().map_err(|source| EtcdError::Spawn {
            binary: config.binary.clone(),
            member: name.clone(),
            source,
        })?;
        Ok(EtcdMember {
            name,
            client_url,
            peer_url,
            log,
            child,
        })
    }

    async fn wait_healthy(&mut self, timeout: Duration) -> Result<(), EtcdError> {
        let deadline = Instant::now() + timeout;
        for i in 0..self.members.len() {
            loop {
                if self.member_ready(i).await {
                    break;
                }
                let member = &mut self.members[i];
                if let Ok(Some(status)) = member.child.try_wait() {
                    return Err(EtcdError::Exited {
                        member: member.name.clone(),
                        url: member.client_url.clone(),
                        status,
                        log_tail: log_tail(&member.log),
                    });
                }
                if Instant::now() >= deadline {
                    return Err(EtcdError::NotHealthy {
                        member: member.name.clone(),
                        url: member.client_url.clone(),
                        timeout,
                        log_tail: log_tail(&member.log),
                    });
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(())
    }

    /// Whether member `i` reports itself healthy and serves the v2 key API.
    async fn member_ready(&self, i: usize) -> bool {
        let base = &self.members[i].client_url;
        let healthy = match self.http.get(format!("{base}/health")).send().await {
            Ok(response) if response.status().is_success() => response
                .json::<serde_json::Value>()
                .await
                .is_ok_and(|body| body["health"] == "true"),
            _ => false,
        };
        healthy
            && self
                .http
                .get(format!("{base}/v2/keys/"))
                .send()
                .await
                .is_ok_and(|response| response.status().is_success())
    }

    /// The members, in the order of `--initial-cluster`.
    pub fn members(&self) -> &[EtcdMember] {
        &self.members
    }

    /// Every member's client URL, in member order.
    pub fn client_urls(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client_url.clone()).collect()
    }

    /// Every member's process id, in member order.
    pub fn pids(&self) -> Vec<u32> {
        self.members.iter().map(EtcdMember::pid).collect()
    }

    /// Stops member `i` as an init system would: SIGTERM, then waits for it to exit (SIGKILL
    /// after `grace`). Returns its exit status, `None` if it had to be killed.
    pub fn terminate(&mut self, i: usize, grace: Duration) -> io::Result<Option<ExitStatus>> {
        crate::testbed::terminate(&mut self.members[i].child, grace)
    }

    /// The cluster's own directory (data directories and logs).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The index of the member that calls itself leader (`/v2/stats/self`), if any does.
    pub async fn leader(&self) -> Result<Option<usize>, EtcdError> {
        for (i, member) in self.members.iter().enumerate() {
            let stats = self
                .get_json(&format!("{}/v2/stats/self", member.client_url))
                .await?;
            if stats["state"] == "StateLeader" {
                return Ok(Some(i));
            }
        }
        Ok(None)
    }

    /// `GET url` and its JSON body; any non-2xx status is an error.
    pub async fn get_json(&self, url: &str) -> Result<serde_json::Value, EtcdError> {
        let request_error = |source| EtcdError::Request {
            url: url.to_owned(),
            source,
        };
        let response = self.http.get(url).send().await.map_err(request_error)?;
        let status = response.status();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            return Err(EtcdError::Status {
                url: url.to_owned(),
                status,
                body,
            });
        }
        response.json().await.map_err(request_error)
    }

    /// The number of keys (leaves, not directories) under the v2 directory `dir` (for example
    /// `/bench`), read from member 0; a directory that does not exist has none.
    pub async fn count_v2_keys(&self, dir: &str) -> Result<u64, EtcdError> {
        let url = format!(
            "{}/v2/keys{dir}?recursive=true&quorum=true",
            self.members[0].client_url
        );
        match self.get_json(&url).await {
            Ok(body) => Ok(count_leaves(&body["node"])),
            Err(EtcdError::Status { status, .. }) if status == reqwest::StatusCode::NOT_FOUND => {
                Ok(0)
            }
            Err(e) => Err(e),
        }
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for member in &mut self.members {
            // Only our own children, by their handles; an already exited one is fine.
            let _ = member.child.kill();
            let _ = member.child.wait();
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Counts the leaves of a v2 node tree (`{"dir":true,"nodes":[...]}`).
pub fn count_leaves(node: &serde_json::Value) -> u64 {
    if node["dir"] == true {
        node["nodes"]
            .as_array()
            .map_or(0, |nodes| nodes.iter().map(count_leaves).sum())
    } else if node.is_object() {
        1
    } else {
        0
    }
}

/// Removes the directories of clusters whose process is gone (killed before `Drop` could run).
fn remove_stale_dirs(data_root: &Path) {
    let Ok(entries) = fs::read_dir(data_root) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("flotilla-etcd-"))
            .and_then(|rest| rest.split_once('-'))
            .and_then(|(pid, _)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

/// Picks `members` (client, peer) addresses nobody is listening on: standard ports on fresh
/// loopback addresses first, ephemeral ports on one address if those are all taken. Returns the
/// cluster's number within this process too.
fn allocate_addresses(
    members: usize,
) -> Result<(u32, Vec<(SocketAddrV4, SocketAddrV4)>), EtcdError> {
    let pid = std::process::id();
    for _ in 0..16 {
        let cluster = CLUSTERS.fetch_add(1, Ordering::Relaxed);
        // 254 * 256 two-byte prefixes; `A` is never 0, so 127.0.0.1 (where a real service may
        // listen) is never used.
        let slot = (pid.wrapping_mul(64).wrapping_add(cluster)) % (254 * 256);
        let (a, b) = ((1 + slot / 256) as u8, (slot % 256) as u8);
        let addresses: Vec<_> = (0..members)
            .map(|i| {
                let ip = Ipv4Addr::new(127, a, b, 10 + i as u8);
                (
                    SocketAddrV4::new(ip, CLIENT_PORT),
                    SocketAddrV4::new(ip, PEER_PORT),
                )
            })
            .collect();
        if all_free(&addresses).is_ok() {
            return Ok((cluster, addresses));
        }
    }
    // Someone listens on the standard ports of every address (a wildcard listener, say): use
    // ports the kernel hands out instead.
    let cluster = CLUSTERS.fetch_add(1, Ordering::Relaxed);
    let ip = Ipv4Addr::new(127, 0, 0, 1);
    let ephemeral = || -> io::Result<SocketAddrV4> {
        let listener = TcpListener::bind(SocketAddrV4::new(ip, 0))?;
        match listener.local_addr()? {
            std::net::SocketAddr::V4(v4) => Ok(v4),
            std::net::SocketAddr::V6(_) => Err(io::Error::other("bound an ipv6 address")),
        }
    };
    let mut addresses = Vec::with_capacity(members);
    for _ in 0..members {
        let pair = ephemeral()
            .and_then(|client| Ok((client, ephemeral()?)))
            .map_err(|source| EtcdError::NoAddress { members, source })?;
        addresses.push(pair);
    }
    Ok((cluster, addresses))
}

/// Whether every address can be bound right now (the listeners are closed again at once).
fn all_free(addresses: &[(SocketAddrV4, SocketAddrV4)]) -> io::Result<()> {
    for (client, peer) in addresses {
        TcpListener::bind(client)?;
        TcpListener::bind(peer)?;
    }
    Ok(())
}

/// The last 2 KiB of a log file, for error messages.
fn log_tail(path: &Path) -> String {
    let mut tail = String::new();
    if let Ok(mut file) = File::open(path) {
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        let _ = file.seek(SeekFrom::Start(len.saturating_sub(2048)));
        let mut bytes = Vec::new();
        let _ = file.read_to_end(&mut bytes);
        tail = String::from_utf8_lossy(&bytes).into_owned();
    }
    if tail.is_empty() {
        format!("({} is empty)", path.display())
    } else {
        tail
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_only_leaves() {
        let tree = serde_json::json!({
            "dir": true,
            "nodes": [
                {"key": "/a", "value": "1"},
                {"key": "/d", "dir": true, "nodes": [{"key": "/d/x", "value": "2"}, {"key": "/d/y", "value": "3"}]},
                {"key": "/e", "dir": true}
            ]
        });
        assert_eq!(count_leaves(&tree), 3);
        assert_eq!(count_leaves(&serde_json::Value::Null), 0);
    }

    #[test]
    fn only_directories_of_dead_processes_are_removed() {
        let root = tempfile::tempdir().unwrap();
        let dead = root
            .path()
            .join(format!("flotilla-etcd-{}-0", u32::MAX - 1));
        let alive = root
            .path()
            .join(format!("flotilla-etcd-{}-99", std::process::id()));
        let other = root.path().join("flotilla-etcd-notapid-0");
        for dir in [&dead, &alive, &other] {
            fs::create_dir_all(dir.join("m0")).unwrap();
        }
        remove_stale_dirs(root.path());
        assert!(!dead.exists());
        assert!(alive.is_dir());
        assert!(other.is_dir());
    }

    #[tokio::test]
    async fn three_members_replicate_and_die_with_the_cluster() {
        let cluster = EtcdCluster::start(&EtcdConfig::default())
            .await
            .expect("etcd cluster starts");
        let urls = cluster.client_urls();
        assert_eq!(urls.len(), 3);
        assert!(
            urls.iter()
                .all(|u| u.ends_with(":2379") && u.starts_with("http://127."))
        );

        // A write through one member is read back through another.
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        let put = http
            .put(format!("{}/v2/keys/probe/k", urls[0]))
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .body("value=hello")
            .send()
            .await
            .unwrap();
        assert!(put.status().is_success(), "put answered {}", put.status());
        let got = cluster
            .get_json(&format!("{}/v2/keys/probe/k?quorum=true", urls[2]))
            .await
            .unwrap();
        assert_eq!(got["node"]["value"], "hello");
        assert_eq!(cluster.count_v2_keys("/probe").await.unwrap(), 1);
        assert_eq!(cluster.count_v2_keys("/absent").await.unwrap(), 0);
        assert!(cluster.leader().await.unwrap().is_some());

        let pids = cluster.pids();
        let dir = cluster.dir().to_path_buf();
        assert!(dir.is_dir());
        drop(cluster);
        for pid in pids {
            // Reaped children have no /proc entry (unless the pid was reused by then, which
            // would take a full wrap of the pid space within this test).
            assert!(
                !Path::new(&format!("/proc/{pid}")).exists(),
                "etcd pid {pid} is still there"
            );
        }
        assert!(!dir.exists(), "{} was not removed", dir.display());
    }
}
