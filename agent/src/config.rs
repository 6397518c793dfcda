//! The agent's configuration file (`/etc/flotilla/flotilla.toml`): every key, its default and
//! its validation. An unknown key is an error that names it.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::tls::TlsFiles;

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
    /// `[dns]`.
    #[serde(default)]
    pub(crate) dns: DnsConfig,
    /// `[machine]`.
    #[serde(default)]
    pub(crate) machine: MachineConfig,
    /// `[images]`.
    #[serde(default)]
    pub(crate) images: ImagesConfig,
    /// `[scheduler]`.
    #[serde(default)]
    pub(crate) scheduler: SchedulerSection,
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
    /// Peer mutual TLS: the cluster CA (PEM) that every member's certificate chains to.
    pub(crate) tls_ca: Option<PathBuf>,
    /// This member's peer certificate (PEM; server and client authentication).
    pub(crate) tls_cert: Option<PathBuf>,
    /// Its private key (PEM).
    pub(crate) tls_key: Option<PathBuf>,
    /// The cluster CA's revocation list (PEM, `flotctl ca revoke`): revoked members are
    /// refused both ways. Reloaded on SIGHUP.
    pub(crate) tls_crl: Option<PathBuf>,
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
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            tls_crl: None,
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
    /// The most open connections on each listener; a new one beyond is closed at once.
    pub(crate) max_connections: usize,
    /// The most open connections from one client address on each listener.
    pub(crate) max_connections_per_client: usize,
    /// How long a request's head may take to arrive from its first byte, e.g. `"10s"`.
    pub(crate) header_timeout: String,
    /// How long a connection may stay open with no request in flight, e.g. `"120s"`.
    pub(crate) idle_timeout: String,
    /// HTTPS: the CA (PEM) client certificates must chain to (they are optional).
    pub(crate) tls_ca: Option<PathBuf>,
    /// The API's server certificate (PEM).
    pub(crate) tls_cert: Option<PathBuf>,
    /// Its private key (PEM).
    pub(crate) tls_key: Option<PathBuf>,
    /// The client CA's revocation list (PEM): a revoked client certificate is refused.
    pub(crate) tls_crl: Option<PathBuf>,
    /// Users with a token each: `[[api.users]] name, token_sha256, role`.
    pub(crate) users: Vec<crate::auth::User>,
    /// A TOML file of more `[[users]]` in the same shape (kept apart, e.g. mode 0600).
    pub(crate) tokens_file: Option<PathBuf>,
    /// Allows plain HTTP on non-loopback addresses although TLS or users are configured.
    pub(crate) allow_plain_http: bool,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: vec![SocketAddr::from((Ipv4Addr::LOCALHOST, 2379))],
            advertise: Vec::new(),
            max_body_bytes: 512 * 1024,
            max_watchers_per_client: 1000,
            max_connections: 4096,
            max_connections_per_client: 1024,
            header_timeout: "10s".into(),
            idle_timeout: "120s".into(),
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            tls_crl: None,
            users: Vec::new(),
            tokens_file: None,
            allow_plain_http: false,
        }
    }
}

impl ApiConfig {
    fn limits(&self) -> Result<crate::listener::Limits, Error> {
        let at_least_one = |key: &'static str, n: usize| {
            if n == 0 {
                return Err(Error::Invalid {
                    key,
                    reason: "must be at least 1".into(),
                });
            }
            Ok(n)
        };
        let timeout = |key: &'static str, text: &str| match parse_duration(text) {
            Some(d) if !d.is_zero() => Ok(d),
            Some(_) => Err(Error::Invalid {
                key,
                reason: "must be more than 0".into(),
            }),
            None => Err(Error::Invalid {
                key,
                reason: format!("{text:?} is not a duration like \"10s\""),
            }),
        };
        Ok(crate::listener::Limits {
            max_connections: at_least_one("api.max_connections", self.max_connections)?,
            max_connections_per_client: at_least_one(
                "api.max_connections_per_client",
                self.max_connections_per_client,
            )?,
            max_handshakes_per_client: API_HANDSHAKES_PER_CLIENT,
            handshake_timeout: API_HANDSHAKE_TIMEOUT,
            header_timeout: timeout("api.header_timeout", &self.header_timeout)?,
            idle_timeout: timeout("api.idle_timeout", &self.idle_timeout)?,
        })
    }
}

/// TLS handshakes in progress from one address on a client API listener.
const API_HANDSHAKES_PER_CLIENT: usize = 16;
/// How long a client has for its TLS handshake.
const API_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// `[dns]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct DnsConfig {
    /// Where the DNS server listens, UDP and TCP; an empty list turns DNS off.
    pub(crate) listen: Vec<SocketAddr>,
    /// The cluster's domain.
    pub(crate) domain: String,
    /// The TTL of every answer, in seconds (short: a stopped unit leaves caches soon).
    pub(crate) ttl: u32,
    /// Resolvers to forward names outside the domain to; empty: such names are refused.
    pub(crate) upstreams: Vec<String>,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            listen: vec![SocketAddr::from((Ipv4Addr::LOCALHOST, 53))],
            domain: flotilla_dns::DEFAULT_DOMAIN.into(),
            ttl: 1,
            upstreams: Vec::new(),
        }
    }
}

/// The longest `[dns] ttl`: an hour (answers change as units move; a long TTL hides that).
const MAX_DNS_TTL: u32 = 3600;

/// `[machine]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct MachineConfig {
    /// Free-form metadata units can be scheduled by.
    pub(crate) metadata: BTreeMap<String, String>,
}

/// `[scheduler]` (read by the leader's scheduler: give every machine the same values).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct SchedulerSection {
    /// At most this many units (global ones included) on one machine; unset: no cap.
    pub(crate) max_units_per_machine: Option<usize>,
}

impl SchedulerSection {
    fn config(&self) -> Result<flotilla_state::scheduler::SchedulerConfig, Error> {
        if self.max_units_per_machine == Some(0) {
            return Err(Error::Invalid {
                key: "scheduler.max_units_per_machine",
                reason: "must be at least 1 (leave it unset for no cap)".into(),
            });
        }
        Ok(flotilla_state::scheduler::SchedulerConfig {
            max_units_per_machine: self.max_units_per_machine,
        })
    }
}

/// `[images]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct ImagesConfig {
    /// `host:port` registries spoken to over plain HTTP.
    pub(crate) insecure_registries: Vec<String>,
    /// A docker-style `auth.json` with credentials per registry (default: anonymous).
    pub(crate) auth_file: Option<PathBuf>,
    /// Mirrors tried in order before a registry: `{ "docker.io" = ["host:port"] }`.
    pub(crate) mirrors: BTreeMap<String, Vec<String>>,
    /// Layers downloaded at once per pull.
    pub(crate) max_concurrent_downloads: usize,
    /// The most bytes an image's (compressed) layers may add up to; a larger one is refused
    /// before anything is downloaded.
    pub(crate) max_image_bytes: u64,
}

impl Default for ImagesConfig {
    fn default() -> Self {
        ImagesConfig {
            insecure_registries: Vec::new(),
            auth_file: None,
            mirrors: BTreeMap::new(),
            max_concurrent_downloads: 4,
            max_image_bytes: flotilla_images::DEFAULT_MAX_IMAGE_BYTES,
        }
    }
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
    /// `api.max_connections`, `max_connections_per_client`, `header_timeout`, `idle_timeout`.
    pub(crate) api_limits: crate::listener::Limits,
    /// `machine.metadata`.
    pub(crate) metadata: BTreeMap<String, String>,
    /// `cluster.tls_*`: peer mutual TLS when set.
    pub(crate) peer_tls: Option<TlsFiles>,
    /// `api.tls_*`: HTTPS on every client API listener when set.
    pub(crate) api_tls: Option<TlsFiles>,
    /// `api.users` and the users of `api.tokens_file`.
    pub(crate) api_users: Vec<crate::auth::User>,
    /// `[scheduler]`.
    pub(crate) scheduler: flotilla_state::scheduler::SchedulerConfig,
    /// `[images]`.
    pub(crate) images: ImagesConfig,
    /// `dns.listen` (empty: DNS is off).
    pub(crate) dns_listen: Vec<SocketAddr>,
    /// `dns.domain`, lowercase, without the final dot.
    pub(crate) dns_domain: String,
    /// `dns.ttl`, in seconds.
    pub(crate) dns_ttl: u32,
    /// `dns.upstreams`, as `IP:PORT` (port 53 when not given).
    pub(crate) dns_upstreams: Vec<SocketAddr>,
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
        let Security {
            peer_tls,
            api_tls,
            users: api_users,
        } = self.security()?;
        let scheme = if api_tls.is_some() { "https" } else { "http" };
        let client_urls = if a.advertise.is_empty() {
            let peer_host = advertise_peer
                .rsplit_once(':')
                .map_or(advertise_peer.as_str(), |(h, _)| h);
            a.listen
                .iter()
                .map(|l| {
                    if l.ip().is_unspecified() {
                        format!("{scheme}://{peer_host}:{}", l.port())
                    } else {
                        format!("{scheme}://{l}")
                    }
                })
                .collect()
        } else {
            for u in &a.advertise {
                if !u.starts_with(&format!("{scheme}://")) {
                    return Err(invalid(
                        "api.advertise",
                        format!("{u:?} must be an {scheme}:// URL"),
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
        let api_limits = a.limits()?;
        let d = &self.dns;
        let dns_domain = flotilla_dns::ZoneConfig::new(&d.domain)
            .map_err(|e| invalid("dns.domain", e.to_string()))?
            .domain()
            .to_ascii()
            .trim_end_matches('.')
            .to_owned();
        if d.ttl > MAX_DNS_TTL {
            return Err(invalid(
                "dns.ttl",
                format!("{} is more than {MAX_DNS_TTL} seconds", d.ttl),
            ));
        }
        let dns_upstreams = d
            .upstreams
            .iter()
            .map(|u| {
                parse_upstream(u).ok_or_else(|| {
                    invalid(
                        "dns.upstreams",
                        format!("{u:?} is not IP or IP:PORT (e.g. \"192.0.2.53\" or \"[2001:db8::53]:53\")"),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(upstream) = dns_upstreams.iter().find(|u| {
            d.listen
                .iter()
                .any(|l| l.port() == u.port() && (l.ip() == u.ip() || l.ip().is_unspecified()))
        }) {
            return Err(invalid(
                "dns.upstreams",
                format!("{upstream} is this agent's own dns.listen: queries would loop"),
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
            api_limits,
            metadata: self.machine.metadata.clone(),
            peer_tls,
            api_tls,
            api_users,
            scheduler: self.scheduler.config()?,
            images: self.images.clone(),
            dns_listen: d.listen.clone(),
            dns_domain,
            dns_ttl: d.ttl,
            dns_upstreams,
        })
    }
}

/// `IP` (port 53) or `IP:PORT` (`[IPv6]:PORT`).
fn parse_upstream(text: &str) -> Option<SocketAddr> {
    let text = text.trim();
    text.parse::<SocketAddr>()
        .ok()
        .or_else(|| {
            text.parse::<IpAddr>()
                .ok()
                .map(|ip| SocketAddr::new(ip, 53))
        })
        .filter(|a| a.port() != 0 && !a.ip().is_unspecified())
}

impl Config {
    /// `[cluster]` and `[api]` TLS files (all three or none), the API's users (inline and from
    /// `tokens_file`), and the rule that plain HTTP listens on loopback only once TLS or users
    /// are configured, unless `api.allow_plain_http` says otherwise.
    fn security(&self) -> Result<Security, Error> {
        let c = &self.cluster;
        let a = &self.api;
        let peer_tls = tls_files(
            "cluster",
            [
                ("cluster.tls_ca", &c.tls_ca),
                ("cluster.tls_cert", &c.tls_cert),
                ("cluster.tls_key", &c.tls_key),
            ],
            ("cluster.tls_crl", &c.tls_crl),
        )?;
        let api_tls = tls_files(
            "api",
            [
                ("api.tls_ca", &a.tls_ca),
                ("api.tls_cert", &a.tls_cert),
                ("api.tls_key", &a.tls_key),
            ],
            ("api.tls_crl", &a.tls_crl),
        )?;
        let mut users = a.users.clone();
        if let Some(path) = &a.tokens_file {
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct TokensFile {
                #[serde(default)]
                users: Vec<crate::auth::User>,
            }
            let text = std::fs::read_to_string(path).map_err(|e| Error::Invalid {
                key: "api.tokens_file",
                reason: format!("cannot read {}: {e}", path.display()),
            })?;
            let file: TokensFile = toml::from_str(&text).map_err(|e| Error::Invalid {
                key: "api.tokens_file",
                reason: format!("{}: {e}", path.display()),
            })?;
            users.extend(file.users);
        }
        for (i, u) in users.iter().enumerate() {
            let invalid = |reason: String| Error::Invalid {
                key: "api.users",
                reason,
            };
            if u.name.is_empty() || u.name.contains([':', ' ']) || u.name.len() > 253 {
                return Err(invalid(format!(
                    "user name {:?} must be 1-253 characters without ':' or spaces",
                    u.name
                )));
            }
            if crate::auth::digest_from_hex(&u.token_sha256).is_none() {
                return Err(invalid(format!(
                    "user {:?}: token_sha256 must be 64 hex digits (printf %s TOKEN | sha256sum)",
                    u.name
                )));
            }
            if users[..i].iter().any(|o| o.name == u.name) {
                return Err(invalid(format!("user {:?} is listed twice", u.name)));
            }
            if users[..i]
                .iter()
                .any(|o| o.token_sha256.eq_ignore_ascii_case(&u.token_sha256))
            {
                return Err(invalid(format!(
                    "user {:?} has the same token as another user",
                    u.name
                )));
            }
        }
        let secured = peer_tls.is_some() || api_tls.is_some() || !users.is_empty();
        if secured && !a.allow_plain_http {
            let why = "while TLS or API users are configured; use TLS, a loopback address, or \
                       write [api] allow_plain_http = true";
            if api_tls.is_none()
                && let Some(l) = a.listen.iter().find(|l| !l.ip().is_loopback())
            {
                return Err(Error::Invalid {
                    key: "api.listen",
                    reason: format!(
                        "{l} would serve plain HTTP on a non-loopback address {why} \
                         (or set api.tls_ca, api.tls_cert and api.tls_key)"
                    ),
                });
            }
            if peer_tls.is_none() && !c.listen_peer.ip().is_loopback() {
                return Err(Error::Invalid {
                    key: "cluster.listen_peer",
                    reason: format!(
                        "{} would take peer traffic over plain HTTP on a non-loopback address \
                         {why} (or set cluster.tls_ca, cluster.tls_cert and cluster.tls_key)",
                        c.listen_peer
                    ),
                });
            }
        }
        Ok(Security {
            peer_tls,
            api_tls,
            users,
        })
    }
}

/// What `Config::security` checked: the TLS files of both sides and the API's users.
struct Security {
    peer_tls: Option<TlsFiles>,
    api_tls: Option<TlsFiles>,
    users: Vec<crate::auth::User>,
}

/// All three TLS keys of `section`, or none; the optional `tls_crl` only with them.
fn tls_files(
    section: &str,
    keys: [(&'static str, &Option<PathBuf>); 3],
    crl: (&'static str, &Option<PathBuf>),
) -> Result<Option<TlsFiles>, Error> {
    match keys {
        [(_, None), (_, None), (_, None)] => match crl {
            (key, Some(_)) => Err(Error::Invalid {
                key,
                reason: format!(
                    "needs TLS: a revocation list applies to [{section}] tls_ca, tls_cert and \
                     tls_key, which are not set"
                ),
            }),
            (_, None) => Ok(None),
        },
        [(_, Some(ca)), (_, Some(cert)), (_, Some(key))] => Ok(Some(TlsFiles {
            ca: ca.clone(),
            cert: cert.clone(),
            key: key.clone(),
            crl: crl.1.clone(),
        })),
        _ => {
            let set: Vec<&str> = keys.iter().filter(|k| k.1.is_some()).map(|k| k.0).collect();
            let missing = keys.iter().find(|k| k.1.is_none()).map_or("", |k| k.0);
            Err(Error::Invalid {
                key: missing,
                reason: format!(
                    "missing: [{section}] TLS needs tls_ca, tls_cert and tls_key together ({} set)",
                    set.join(" and ")
                ),
            })
        }
    }
}

fn strip_scheme(addr: &str) -> &str {
    addr.strip_prefix("http://")
        .or_else(|| addr.strip_prefix("https://"))
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

    /// The packaged, commented configuration names only keys the agent knows, in the right
    /// tables: every `#key = value` line uncommented still parses.
    #[test]
    fn the_packaged_config_documents_known_keys() {
        let text = include_str!("../../packaging/flotilla.toml");
        let uncommented: String = text
            .lines()
            .map(|l| match l.strip_prefix('#') {
                Some(rest) if !rest.is_empty() && !rest.starts_with(' ') => rest,
                Some(_) => "",
                None => l,
            })
            .map(|l| format!("{l}\n"))
            .collect();
        assert!(uncommented.contains("tls_ca") && uncommented.contains("upstreams"));
        if let Err(e) = Config::parse(&uncommented) {
            panic!("packaging/flotilla.toml, uncommented: {e}\n{uncommented}");
        }
    }

    #[test]
    fn unknown_key_is_named() {
        let err = Config::parse("[cluster]\nlisten_peers = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("listen_peers"), "{err}");
    }

    #[test]
    fn scheduler_cap() {
        let parse = |text: &str| Config::parse(&format!("name = \"n1\"\n{text}")).unwrap();
        let unset = parse("").settings().unwrap();
        assert_eq!(unset.scheduler.max_units_per_machine, None);
        let s = parse("[scheduler]\nmax_units_per_machine = 2\n").settings();
        assert_eq!(s.unwrap().scheduler.max_units_per_machine, Some(2));
        let err = parse("[scheduler]\nmax_units_per_machine = 0\n")
            .settings()
            .unwrap_err()
            .to_string();
        assert!(err.contains("scheduler.max_units_per_machine"), "{err}");
    }

    #[test]
    fn connection_limits() {
        let parse = |text: &str| Config::parse(&format!("name = \"n1\"\n[api]\n{text}")).unwrap();
        let l = parse("").settings().unwrap().api_limits;
        assert_eq!(
            (l.max_connections, l.max_connections_per_client),
            (4096, 1024)
        );
        assert_eq!(l.header_timeout, Duration::from_secs(10));
        assert_eq!(l.idle_timeout, Duration::from_secs(120));
        let l = parse("max_connections = 8\nheader_timeout = \"500ms\"\nidle_timeout = \"2m\"\n")
            .settings()
            .unwrap()
            .api_limits;
        assert_eq!(l.max_connections, 8);
        assert_eq!(l.header_timeout, Duration::from_millis(500));
        assert_eq!(l.idle_timeout, Duration::from_secs(120));
        for (text, key, reason) in [
            ("max_connections = 0", "api.max_connections", "at least 1"),
            (
                "max_connections_per_client = 0",
                "api.max_connections_per_client",
                "at least 1",
            ),
            (
                "header_timeout = \"0s\"",
                "api.header_timeout",
                "more than 0",
            ),
            (
                "idle_timeout = \"soon\"",
                "api.idle_timeout",
                "not a duration",
            ),
        ] {
            let err = parse(text).settings().unwrap_err().to_string();
            assert!(err.contains(key) && err.contains(reason), "{text}: {err}");
        }
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
    fn dns_defaults_and_values() {
        let s = Config::parse("name = \"n1\"\n")
            .unwrap()
            .settings()
            .unwrap();
        assert_eq!(s.dns_listen, vec!["127.0.0.1:53".parse().unwrap()]);
        assert_eq!(s.dns_domain, "flotilla.internal");
        assert_eq!(s.dns_ttl, 1);
        assert!(s.dns_upstreams.is_empty());
        let s = Config::parse(
            "name = \"n1\"\n[dns]\nlisten = []\ndomain = \"Cluster.Example.\"\nttl = 30\n",
        )
        .unwrap()
        .settings()
        .unwrap();
        assert!(s.dns_listen.is_empty());
        assert_eq!((s.dns_domain.as_str(), s.dns_ttl), ("cluster.example", 30));
        let s =
            Config::parse("name = \"n1\"\n[dns]\nupstreams = [\"192.0.2.53\", \"[::1]:5353\"]\n")
                .unwrap()
                .settings()
                .unwrap();
        assert_eq!(
            s.dns_upstreams,
            [
                "192.0.2.53:53".parse().unwrap(),
                "[::1]:5353".parse().unwrap()
            ]
        );
    }

    #[test]
    fn bad_dns_values_name_their_key() {
        for (text, key) in [
            ("domain = \"a..b\"", "dns.domain"),
            ("domain = \"\"", "dns.domain"),
            ("domain = \"bad name.internal\"", "dns.domain"),
            ("ttl = 86400", "dns.ttl"),
            ("upstreams = [\"resolver\"]", "dns.upstreams"),
            ("upstreams = [\"192.0.2.53:0\"]", "dns.upstreams"),
            ("upstreams = [\"127.0.0.1\"]", "dns.upstreams"),
            (
                "listen = [\"0.0.0.0:53\"]\nupstreams = [\"10.0.0.1\"]",
                "dns.upstreams",
            ),
        ] {
            let cfg = Config::parse(&format!("name = \"n1\"\n[dns]\n{text}\n")).unwrap();
            let err = cfg.settings().unwrap_err();
            assert!(
                matches!(err, Error::Invalid { key: k, .. } if k == key),
                "{text}: {err}"
            );
        }
        let err = Config::parse("[dns]\nlisten = [\"localhost\"]\n").unwrap_err();
        assert!(err.to_string().contains("listen"), "{err}");
        let err = Config::parse("[dns]\nttl = -1\n").unwrap_err();
        assert!(err.to_string().contains("ttl"), "{err}");
    }

    #[test]
    fn upstreams() {
        assert_eq!(
            parse_upstream("192.0.2.53"),
            Some("192.0.2.53:53".parse().unwrap())
        );
        assert_eq!(
            parse_upstream("[2001:db8::1]:5353"),
            Some("[2001:db8::1]:5353".parse().unwrap())
        );
        assert_eq!(
            parse_upstream("2001:db8::1"),
            Some("[2001:db8::1]:53".parse().unwrap())
        );
        assert_eq!(parse_upstream("0.0.0.0"), None);
    }

    #[test]
    fn a_crl_needs_tls() {
        let cfg = Config::parse("name = \"n1\"\n[cluster]\ntls_crl = \"/ca.crl\"\n").unwrap();
        let err = cfg.settings().unwrap_err();
        assert!(
            matches!(
                &err,
                Error::Invalid {
                    key: "cluster.tls_crl",
                    ..
                }
            ),
            "{err}"
        );
        let cfg = Config::parse(
            "name = \"n1\"\n[cluster]\nlisten_peer = \"127.0.0.1:2380\"\n[api]\n\
             tls_ca = \"/ca\"\ntls_cert = \"/c\"\ntls_key = \"/k\"\ntls_crl = \"/ca.crl\"\n",
        )
        .unwrap();
        let s = cfg.settings().unwrap();
        assert_eq!(
            s.api_tls.and_then(|t| t.crl),
            Some(PathBuf::from("/ca.crl"))
        );
    }

    #[test]
    fn tls_needs_all_three_keys() {
        let cfg = Config::parse(
            "name = \"n1\"\n[cluster]\ntls_ca = \"/ca.crt\"\ntls_cert = \"/n1.crt\"\n",
        )
        .unwrap();
        let err = cfg.settings().unwrap_err();
        assert!(
            matches!(
                &err,
                Error::Invalid {
                    key: "cluster.tls_key",
                    ..
                }
            ),
            "{err}"
        );
        let cfg = Config::parse("name = \"n1\"\n[api]\ntls_key = \"/k\"\n").unwrap();
        let err = cfg.settings().unwrap_err();
        assert!(
            matches!(
                &err,
                Error::Invalid {
                    key: "api.tls_ca",
                    ..
                }
            ),
            "{err}"
        );
        let cfg = Config::parse(
            "name = \"n1\"\n[cluster]\nlisten_peer = \"127.0.0.1:2380\"\n\
             [api]\ntls_ca = \"/ca\"\ntls_cert = \"/c\"\ntls_key = \"/k\"\n",
        )
        .unwrap();
        let s = cfg.settings().unwrap();
        assert_eq!(s.client_urls, vec!["https://127.0.0.1:2379".to_string()]);
        assert!(s.api_tls.is_some() && s.peer_tls.is_none());
    }

    #[test]
    fn plain_http_stays_on_loopback_once_secured() {
        let user = "[[api.users]]\nname = \"ro\"\nrole = \"read\"\n\
                    token_sha256 = \"8d969eef6ecad3c29a3a629280e686cf0c3f5d5a86aff3ca12020c923adc6c92\"\n";
        // Today's default: plain HTTP anywhere while nothing is secured.
        let open = "name = \"n1\"\n[api]\nlisten = [\"0.0.0.0:2379\"]\n";
        assert!(Config::parse(open).unwrap().settings().is_ok());
        let cfg = Config::parse(&format!("{open}{user}")).unwrap();
        let err = cfg.settings().unwrap_err();
        assert!(
            matches!(
                &err,
                Error::Invalid {
                    key: "api.listen",
                    ..
                }
            ),
            "{err}"
        );
        let cfg = Config::parse(&format!("{open}allow_plain_http = true\n{user}")).unwrap();
        assert_eq!(cfg.settings().unwrap().api_users.len(), 1);
        let loopback =
            format!("name = \"n1\"\n[cluster]\nlisten_peer = \"127.0.0.1:2380\"\n[api]\n{user}");
        assert!(Config::parse(&loopback).unwrap().settings().is_ok());
        let peer = format!("name = \"n1\"\n[api]\n{user}");
        let err = Config::parse(&peer).unwrap().settings().unwrap_err();
        assert!(
            matches!(
                &err,
                Error::Invalid {
                    key: "cluster.listen_peer",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn users_come_from_the_tokens_file_too() {
        let dir = tempfile::tempdir().unwrap();
        let tokens = dir.path().join("tokens.toml");
        let sha = |c: char| c.to_string().repeat(64);
        std::fs::write(
            &tokens,
            format!(
                "[[users]]\nname = \"ci\"\nrole = \"write\"\ntoken_sha256 = \"{}\"\n",
                sha('a')
            ),
        )
        .unwrap();
        let text = format!(
            "name = \"n1\"\n[cluster]\nlisten_peer = \"127.0.0.1:2380\"\n[api]\ntokens_file = \"{}\"\n\
             [[api.users]]\nname = \"ro\"\nrole = \"read\"\ntoken_sha256 = \"{}\"\n",
            tokens.display(),
            sha('b')
        );
        let s = Config::parse(&text).unwrap().settings().unwrap();
        let names: Vec<&str> = s.api_users.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(names, ["ro", "ci"]);
        // The same name twice, or an unreadable file, is an error naming the key.
        std::fs::write(
            &tokens,
            format!(
                "[[users]]\nname = \"ro\"\nrole = \"write\"\ntoken_sha256 = \"{}\"\n",
                sha('c')
            ),
        )
        .unwrap();
        let err = Config::parse(&text).unwrap().settings().unwrap_err();
        assert!(err.to_string().contains("listed twice"), "{err}");
        std::fs::remove_file(&tokens).unwrap();
        let err = Config::parse(&text).unwrap().settings().unwrap_err();
        assert!(
            matches!(
                &err,
                Error::Invalid {
                    key: "api.tokens_file",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn users_are_checked() {
        for (user, needle) in [
            (
                "name = \"a:b\"\nrole = \"read\"\ntoken_sha256 = \"00\"",
                "a:b",
            ),
            (
                "name = \"a\"\nrole = \"read\"\ntoken_sha256 = \"00\"",
                "64 hex",
            ),
        ] {
            let cfg = Config::parse(&format!(
                "name = \"n1\"\n[cluster]\nlisten_peer = \"127.0.0.1:2380\"\n[[api.users]]\n{user}\n"
            ))
            .unwrap();
            let err = cfg.settings().unwrap_err().to_string();
            assert!(err.contains(needle), "{err}");
        }
        let err =
            Config::parse("[[api.users]]\nname = \"a\"\nrole = \"admin\"\ntoken_sha256 = \"0\"\n")
                .unwrap_err()
                .to_string();
        assert!(err.contains("admin"), "{err}");
    }

    #[test]
    fn images_keys() {
        let cfg = Config::parse(
            "[images]\ninsecure_registries = [\"10.0.0.1:5000\"]\nauth_file = \"/etc/flotilla/auth.json\"\n\
             mirrors = { \"docker.io\" = [\"mirror:5000\"] }\n",
        )
        .unwrap();
        assert_eq!(cfg.images.insecure_registries, ["10.0.0.1:5000"]);
        assert_eq!(cfg.images.mirrors["docker.io"], ["mirror:5000"]);
        assert_eq!(cfg.images.max_concurrent_downloads, 4);
        let err = Config::parse("[images]\ninsecure_registry = []\n").unwrap_err();
        assert!(err.to_string().contains("insecure_registry"), "{err}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("2"), None);
        assert_eq!(parse_duration("s"), None);
    }
}
