//! The agent's configuration file (`/etc/flotilla/flotilla.toml`): every key, its default and
//! its validation. An unknown key is an error that names it.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Configuration errors: the message names the file and key.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The config file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has an unknown or mistyped key.
    #[error("invalid config {path}: {source}")]
    Parse {
        /// The config file.
        path: String,
        /// What toml said (it names the key and line).
        source: toml::de::Error,
    },
    /// A value is out of range or inconsistent with another.
    #[error("invalid config: {key}: {reason}")]
    Invalid {
        /// The key, as `section.key`.
        key: &'static str,
        /// What is wrong and what to do.
        reason: String,
    },
}

/// The whole file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Config {
    /// This member's name (default: the host name).
    pub(crate) name: Option<String>,
    /// Where the Raft log and snapshots live.
    #[serde(default = "default_data_dir")]
    pub(crate) data_dir: PathBuf,
    /// `[cluster]`.
    #[serde(default)]
    pub(crate) cluster: ClusterConfig,
    /// `[api]`.
    #[serde(default)]
    pub(crate) api: ApiConfig,
    /// `[dns]` (served by the DNS subsystem; accepted here).
    #[serde(default)]
    #[expect(dead_code, reason = "read by the DNS subsystem")]
    pub(crate) dns: DnsConfig,
    /// `[machine]`.
    #[serde(default)]
    pub(crate) machine: MachineConfig,
    /// `[images]` (used by the image subsystem; accepted here).
    #[serde(default)]
    #[expect(dead_code, reason = "read by the image subsystem")]
    pub(crate) images: ImagesConfig,
}

/// `[cluster]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct ClusterConfig {
    /// Where the peer server listens.
    pub(crate) listen_peer: SocketAddr,
    /// `host:port` peers reach this member at (default: the first non-loopback address and the
    /// port of `listen_peer`).
    pub(crate) advertise_peer: Option<String>,
    /// `name=host:port` of every founding member (the same list on each, as etcd's
    /// `--initial-cluster`).
    pub(crate) initial_cluster: Vec<String>,
    /// Peer addresses of a running cluster to join instead.
    pub(crate) join: Vec<String>,
    /// How often this member sends a heartbeat to the leader, e.g. `"1s"`.
    pub(crate) heartbeat_interval: String,
    /// After how long without heartbeats the leader declares a machine lost, e.g. `"10s"`.
    pub(crate) machine_lost_after: String,
    /// Log entries between snapshots; the log before a snapshot is then purged (all but a
    /// tenth of this, kept for followers that lag a little).
    pub(crate) snapshot_entries: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            listen_peer: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 2380)),
            advertise_peer: None,
            initial_cluster: Vec::new(),
            join: Vec::new(),
            heartbeat_interval: "1s".into(),
            machine_lost_after: "10s".into(),
            snapshot_entries: 10_000,
        }
    }
}

/// `[api]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct ApiConfig {
    /// Where the client HTTP API (etcd v2) listens.
    pub(crate) listen: Vec<SocketAddr>,
    /// The client URLs other machines and etcdctl are told (`/v2/members`); default: one per
    /// `listen` address (an unspecified address is replaced by the advertised peer host).
    pub(crate) advertise: Vec<String>,
    /// The largest request body a client may send, in bytes.
    pub(crate) max_body_bytes: usize,
    /// The most concurrent watches one client address may hold.
    pub(crate) max_watchers_per_client: usize,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: vec![SocketAddr::from((Ipv4Addr::LOCALHOST, 2379))],
            advertise: Vec::new(),
            max_body_bytes: 512 * 1024,
            max_watchers_per_client: 1000,
        }
    }
}

/// `[dns]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct DnsConfig {
    /// Where the DNS server listens.
    pub(crate) listen: Vec<SocketAddr>,
    /// The cluster's domain.
    pub(crate) domain: String,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            listen: vec![SocketAddr::from((Ipv4Addr::LOCALHOST, 53))],
            domain: "flotilla.internal".into(),
        }
    }
}

/// `[machine]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct MachineConfig {
    /// Free-form metadata units can be scheduled by.
    pub(crate) metadata: BTreeMap<String, String>,
}

/// `[images]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct ImagesConfig {
    /// `host:port` registries spoken to over plain HTTP.
    pub(crate) insecure_registries: Vec<String>,
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("/var/lib/flotilla")
}

/// A founding member from `initial_cluster`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Founder {
    /// Its name.
    pub(crate) name: String,
    /// Its peer `host:port`.
    pub(crate) peer_addr: String,
}

/// The configuration with every default filled in and every value checked.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// This member's name.
    pub(crate) name: String,
    /// `data_dir`.
    pub(crate) data_dir: PathBuf,
    /// `cluster.listen_peer`.
    pub(crate) listen_peer: SocketAddr,
    /// `cluster.advertise_peer`, resolved.
    pub(crate) advertise_peer: String,
    /// `cluster.initial_cluster`, parsed.
    pub(crate) initial_cluster: Vec<Founder>,
    /// `cluster.join`.
    pub(crate) join: Vec<String>,
    /// `cluster.heartbeat_interval`.
    pub(crate) heartbeat_interval: Duration,
    /// `cluster.machine_lost_after`.
    pub(crate) machine_lost_after: Duration,
    /// `cluster.snapshot_entries`.
    pub(crate) snapshot_entries: u64,
    /// `api.listen`.
    pub(crate) api_listen: Vec<SocketAddr>,
    /// `api.advertise`, resolved.
    pub(crate) client_urls: Vec<String>,
    /// `api.max_body_bytes`.
    pub(crate) max_body_bytes: usize,
    /// `api.max_watchers_per_client`.
    pub(crate) max_watchers_per_client: usize,
    /// `machine.metadata`.
    pub(crate) metadata: BTreeMap<String, String>,
}

impl Config {
    /// Reads and parses `path`.
    pub(crate) fn load(path: &Path) -> Result<Config, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.display().to_string(),
            source,
        })?;
        Config::parse(&text).map_err(|e| match e {
            Error::Parse { source, .. } => Error::Parse {
                path: path.display().to_string(),
                source,
            },
            other => other,
        })
    }

    /// Parses a config file's text.
    pub(crate) fn parse(text: &str) -> Result<Config, Error> {
        toml::from_str(text).map_err(|source| Error::Parse {
            path: String::new(),
            source,
        })
    }

    /// Fills in defaults and validates.
    pub(crate) fn settings(&self) -> Result<Settings, Error> {
        let invalid = |key: &'static str, reason: String| Error::Invalid { key, reason };
        let name = match &self.name {
            Some(n) => n.clone(),
            None => std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .map_err(|e| {
                    invalid(
                        "name",
                        format!("not set and the host name is unreadable: {e}"),
                    )
                })?,
        };
        if name.is_empty() || name.len() > 253 || name.contains(['=', ',', '/', ' ']) {
            return Err(invalid(
                "name",
                format!("{name:?} must be 1-253 characters without '=', ',', '/' or spaces"),
            ));
        }
        let c = &self.cluster;
        let advertise_peer = match &c.advertise_peer {
            Some(a) => strip_scheme(a).to_string(),
            None => {
                let ip = if c.listen_peer.ip().is_unspecified() {
                    outbound_ip()
                } else {
                    c.listen_peer.ip()
                };
                SocketAddr::new(ip, c.listen_peer.port()).to_string()
            }
        };
        let mut initial_cluster = Vec::new();
        for entry in &c.initial_cluster {
            let (n, addr) = entry.split_once('=').ok_or_else(|| {
                invalid(
                    "cluster.initial_cluster",
                    format!("{entry:?} is not NAME=HOST:PORT"),
                )
            })?;
            if initial_cluster.iter().any(|f: &Founder| f.name == n) {
                return Err(invalid(
                    "cluster.initial_cluster",
                    format!("member {n:?} is listed twice"),
                ));
            }
            initial_cluster.push(Founder {
                name: n.to_string(),
                peer_addr: strip_scheme(addr).to_string(),
            });
        }
        if !initial_cluster.is_empty() && !c.join.is_empty() {
            return Err(invalid(
                "cluster.join",
                "set either initial_cluster or join, not both".into(),
            ));
        }
        if !initial_cluster.is_empty() && !initial_cluster.iter().any(|f| f.name == name) {
            return Err(invalid(
                "cluster.initial_cluster",
                format!("this member {name:?} is not listed"),
            ));
        }
        if initial_cluster.len() > 5 {
            return Err(invalid(
                "cluster.initial_cluster",
                "at most 5 founding members (voters); add more machines with join, they become learners".into(),
            ));
        }
        let heartbeat_interval = parse_duration(&c.heartbeat_interval).ok_or_else(|| {
            invalid(
                "cluster.heartbeat_interval",
                format!("{:?} is not a duration like \"1s\"", c.heartbeat_interval),
            )
        })?;
        let machine_lost_after = parse_duration(&c.machine_lost_after).ok_or_else(|| {
            invalid(
                "cluster.machine_lost_after",
                format!("{:?} is not a duration like \"10s\"", c.machine_lost_after),
            )
        })?;
        if heartbeat_interval < Duration::from_millis(50) {
            return Err(invalid(
                "cluster.heartbeat_interval",
                "must be at least 50ms".into(),
            ));
        }
        if machine_lost_after < heartbeat_interval * 3 {
            return Err(invalid(
                "cluster.machine_lost_after",
                "must be at least 3 heartbeat intervals".into(),
            ));
        }
        if c.snapshot_entries < 10 {
            return Err(invalid(
                "cluster.snapshot_entries",
                "must be at least 10".into(),
            ));
        }
        let a = &self.api;
        if a.listen.is_empty() {
            return Err(invalid("api.listen", "needs at least one address".into()));
        }
        let client_urls = if a.advertise.is_empty() {
            let peer_host = advertise_peer
                .rsplit_once(':')
                .map_or(advertise_peer.as_str(), |(h, _)| h);
            a.listen
                .iter()
                .map(|l| {
                    if l.ip().is_unspecified() {
                        format!("http://{peer_host}:{}", l.port())
                    } else {
                        format!("http://{l}")
                    }
                })
                .collect()
        } else {
            for u in &a.advertise {
                if !u.starts_with("http://") {
                    return Err(invalid(
                        "api.advertise",
                        format!("{u:?} must be an http:// URL"),
                    ));
                }
            }
            a.advertise.clone()
        };
        if a.max_body_bytes < 1024 {
            return Err(invalid(
                "api.max_body_bytes",
                "must be at least 1024".into(),
            ));
        }
        if a.max_watchers_per_client == 0 {
            return Err(invalid(
                "api.max_watchers_per_client",
                "must be at least 1".into(),
            ));
        }
        Ok(Settings {
            name,
            data_dir: self.data_dir.clone(),
            listen_peer: c.listen_peer,
            advertise_peer,
            initial_cluster,
            join: c.join.iter().map(|j| strip_scheme(j).to_string()).collect(),
            heartbeat_interval,
            machine_lost_after,
            snapshot_entries: c.snapshot_entries,
            api_listen: a.listen.clone(),
            client_urls,
            max_body_bytes: a.max_body_bytes,
            max_watchers_per_client: a.max_watchers_per_client,
            metadata: self.machine.metadata.clone(),
        })
    }
}

fn strip_scheme(addr: &str) -> &str {
    addr.strip_prefix("http://")
        .unwrap_or(addr)
        .trim_end_matches('/')
}

/// The address this host would use to reach other machines (no packet is sent: a UDP
/// `connect` only chooses a route); loopback when there is no route.
fn outbound_ip() -> IpAddr {
    UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))
        .and_then(|s| s.connect((Ipv4Addr::new(10, 254, 254, 254), 9)).map(|()| s))
        .and_then(|s| s.local_addr())
        .map(|a| a.ip())
        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))
}

/// Parses `500ms`, `2s`, `5m`, `1h`.
pub(crate) fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().ok()?;
    match unit {
        "ms" => Some(Duration::from_millis(n)),
        "s" => Some(Duration::from_secs(n)),
        "m" => Some(Duration::from_secs(n.checked_mul(60)?)),
        "h" => Some(Duration::from_secs(n.checked_mul(3600)?)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_initial_cluster() {
        let cfg = Config::parse(
            r#"
            name = "node1"
            [cluster]
            listen_peer = "127.0.0.1:2380"
            initial_cluster = ["node1=127.0.0.1:2380", "node2=http://127.0.0.2:2380"]
            [api]
            listen = ["0.0.0.0:2379"]
            "#,
        )
        .unwrap();
        let s = cfg.settings().unwrap();
        assert_eq!(s.advertise_peer, "127.0.0.1:2380");
        assert_eq!(s.client_urls, vec!["http://127.0.0.1:2379".to_string()]);
        assert_eq!(
            s.initial_cluster[1],
            Founder {
                name: "node2".into(),
                peer_addr: "127.0.0.2:2380".into()
            }
        );
        assert_eq!(s.heartbeat_interval, Duration::from_secs(1));
    }

    #[test]
    fn unknown_key_is_named() {
        let err = Config::parse("[cluster]\nlisten_peers = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("listen_peers"), "{err}");
    }

    #[test]
    fn own_name_must_be_listed() {
        let cfg =
            Config::parse("name = \"n9\"\n[cluster]\ninitial_cluster = [\"n1=127.0.0.1:2380\"]\n")
                .unwrap();
        let err = cfg.settings().unwrap_err().to_string();
        assert!(err.contains("n9"), "{err}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("2"), None);
        assert_eq!(parse_duration("s"), None);
    }
}
