//! Service discovery: the DNS zone built from the applied state, served on `[dns] listen`.
//!
//! # Design
//!
//! One task. It builds a [`ZoneData`] from the applied state, publishes the [`Zone`] built from
//! it on a `tokio::sync::watch` channel, and serves that channel with [`flotilla_dns::serve`]
//! on the sockets `main.rs` bound before READY=1. It rebuilds when the watch hub says units or
//! machines changed (a machine declared lost, a unit reported active or stopped, a unit moved),
//! never on a timer; a query never waits for a rebuild (the old zone answers until the new one
//! replaces it whole).
//!
//! What is published:
//!
//! - every machine that is up, at the address it registered, with its metadata as TXT;
//! - for every unit with `[X-Flotilla] Advertise=` whose state, as reported by the machine it
//!   is assigned to, is `active` on a machine that is up: one service per advertised name
//!   (`Advertise=NAME:PORT`'s `NAME`, else the unit's prefix: `web@1.service` is `web`, as
//!   flotilla-units' `Advertise::service_name` says), with the unit's ports of that name as SRV.
//!
//! A unit without `Advertise=` is not published. The applied state's lock is held only while
//! the machines and the (unit, machine, content hash) triples are copied; the `[X-Flotilla]`
//! section is read from a unit's text outside the lock, once per content hash (the parse is
//! cached while a unit with that text is active).
//!
//! # Current limitations
//!
//! - Names outside `[dns] domain` are refused, or forwarded to `[dns] upstreams` (relayed, not
//!   cached: see flotilla-dns).
//! - A machine's address is the one it registered (its advertised peer host); a host name there
//!   gives the machine no A record.
//! - A rebuild copies every active unit: fine for thousands of units, not for millions.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use flotilla_dns::{
    Advertised, MachineRecord, Proto, ServiceInstance, Upstreams, Zone, ZoneConfig, ZoneData,
};
use flotilla_state::State;
use flotilla_state::machines::Status;
use flotilla_units::{Advertise, Protocol, UnitName};
use tokio::net::{TcpListener, UdpSocket};
use tokio_util::sync::CancellationToken;

use crate::cluster::Cluster;

/// Why the DNS server could not start.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    /// A `[dns] listen` address could not be bound.
    #[error(
        "cannot listen for dns on {addr} ({proto}): {source}; set [dns] listen to a free address, \
         or to [] to turn dns off"
    )]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// `udp` or `tcp`.
        proto: &'static str,
        /// The I/O error.
        source: std::io::Error,
    },
    /// `[dns] domain` was rejected by the zone (validated at load: not expected).
    #[error("dns.domain: {0}")]
    Domain(#[from] flotilla_dns::ZoneError),
}

/// The sockets of `[dns] listen`, bound before READY=1.
#[derive(Debug, Default)]
pub(crate) struct Sockets {
    udp: Vec<UdpSocket>,
    tcp: Vec<TcpListener>,
}

impl Sockets {
    /// Binds UDP (one `SO_REUSEPORT` socket per core) and TCP on every address. Port 0 takes a
    /// free port, the same for UDP and TCP.
    pub(crate) fn bind(listen: &[SocketAddr]) -> Result<Sockets, Error> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut sockets = Sockets::default();
        for &addr in listen {
            let bind_error = |proto, source| Error::Bind {
                addr,
                proto,
                source,
            };
            let udp = flotilla_dns::bind_udp(addr, cores).map_err(|e| bind_error("udp", e))?;
            let bound = match udp.first().map(std::net::UdpSocket::local_addr) {
                Some(Ok(bound)) => bound,
                _ => addr,
            };
            for socket in udp {
                sockets
                    .udp
                    .push(UdpSocket::from_std(socket).map_err(|e| bind_error("udp", e))?);
            }
            let tcp = flotilla_dns::bind_tcp(bound)
                .and_then(TcpListener::from_std)
                .map_err(|e| bind_error("tcp", e))?;
            sockets.tcp.push(tcp);
        }
        Ok(sockets)
    }

    /// Whether DNS is off (`[dns] listen = []`).
    pub(crate) fn is_empty(&self) -> bool {
        self.udp.is_empty() && self.tcp.is_empty()
    }

    /// The bound addresses, one per `[dns] listen` address (UDP and TCP share it), for the log.
    pub(crate) fn addrs(&self) -> Vec<SocketAddr> {
        let mut addrs: Vec<SocketAddr> = self
            .tcp
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect();
        addrs.dedup();
        addrs
    }
}

/// The zone's settings from `[dns] domain` and `[dns] ttl`.
pub(crate) fn zone_config(domain: &str, ttl: u32) -> Result<ZoneConfig, Error> {
    let mut config = ZoneConfig::new(domain)?;
    config.ttl = ttl;
    config.negative_ttl = ttl;
    Ok(config)
}

/// Runs until `cancel`: keeps the zone current and serves it on `sockets`, forwarding other
/// names to `upstreams` (refusing them when it is empty).
pub(crate) async fn run(
    cluster: Cluster,
    config: ZoneConfig,
    sockets: Sockets,
    upstreams: Vec<SocketAddr>,
    cancel: CancellationToken,
) {
    let mut changed = cluster.hub().watch_units();
    changed.borrow_and_update();
    let mut builder = Builder::default();
    let first = builder
        .rebuild(&cluster, &config)
        .unwrap_or_else(|| Zone::build(&ZoneData::default(), &config));
    let (zone, serving) = tokio::sync::watch::channel(Arc::new(first));
    let server = flotilla_dns::serve_forwarding(
        serving,
        sockets.udp,
        sockets.tcp,
        Upstreams::new(upstreams),
        cancel.clone(),
    );
    tokio::pin!(server);
    let mut following = true;
    loop {
        tokio::select! {
            result = &mut server => {
                if let Err(e) = result {
                    tracing::error!("{e}; names are no longer served on this machine");
                }
                return;
            }
            c = changed.changed(), if following => {
                if c.is_err() {
                    // the state machine is gone: the agent is stopping; serve what we have
                    following = false;
                    continue;
                }
                changed.borrow_and_update();
                if let Some(next) = builder.rebuild(&cluster, &config) {
                    tracing::debug!(serial = next.serial(), "dns zone rebuilt");
                    zone.send_replace(Arc::new(next));
                }
            }
        }
    }
}

/// What the zone needs of the applied state, copied under its lock.
#[derive(Debug, Default, PartialEq, Eq)]
struct Copied {
    machines: Vec<MachineRecord>,
    /// Active units of up machines: (unit, machine, content hash).
    active: Vec<(String, String, String)>,
    /// The texts of the active units whose content hash is not cached yet: (hash, unit, text).
    unknown: Vec<(String, String, String)>,
    /// Machines whose registered address is not an IP address: (machine, address).
    bad_addrs: Vec<(String, String)>,
}

impl Copied {
    /// Copies what the zone needs from `state`; `known` says which content hashes need no text.
    fn from_state(state: &State, known: &HashMap<String, Arc<[Advertise]>>) -> Copied {
        let mut copied = Copied::default();
        let mut up = BTreeSet::new();
        for m in state.machines.by_name.values() {
            let addrs = match m.addr.parse::<IpAddr>() {
                Ok(ip) => vec![ip],
                Err(_) => {
                    copied.bad_addrs.push((m.name.clone(), m.addr.clone()));
                    Vec::new()
                }
            };
            let is_up = m.status == Status::Up;
            if is_up {
                up.insert(m.name.as_str());
            }
            copied.machines.push(MachineRecord {
                name: m.name.clone(),
                addrs,
                metadata: m.metadata.clone(),
                up: is_up,
            });
        }
        let mut asked = BTreeSet::new();
        for (unit, machines) in &state.units.assignments {
            let Some(record) = state.units.by_name.get(unit) else {
                continue;
            };
            let reports = state.units.reported.get(unit);
            for machine in machines.iter().filter(|m| up.contains(m.as_str())) {
                let active = reports
                    .and_then(|r| r.get(machine))
                    .is_some_and(|r| r.active == "active");
                if !active {
                    continue;
                }
                copied
                    .active
                    .push((unit.clone(), machine.clone(), record.hash.clone()));
                if !known.contains_key(&record.hash) && asked.insert(record.hash.as_str()) {
                    copied
                        .unknown
                        .push((record.hash.clone(), unit.clone(), record.text.clone()));
                }
            }
        }
        copied
    }
}

/// Rebuilds the zone: the parse cache, the last data (an unchanged state builds no zone) and
/// the problems already logged.
#[derive(Debug, Default)]
struct Builder {
    /// `Advertise=` of a unit text, by content hash.
    advertised: HashMap<String, Arc<[Advertise]>>,
    last: Option<ZoneData>,
    logged: BTreeSet<String>,
}

impl Builder {
    /// A new zone, or None when the data is what the current zone was built from.
    fn rebuild(&mut self, cluster: &Cluster, config: &ZoneConfig) -> Option<Zone> {
        let copied = {
            let applied = cluster.applied();
            Copied::from_state(&applied.state, &self.advertised)
        };
        let (data, mut problems) = self.zone_data(copied);
        if self.last.as_ref() == Some(&data) {
            return None;
        }
        let zone = Zone::build(&data, config);
        problems.extend(zone.problems().iter().cloned());
        let problems: BTreeSet<String> = problems.into_iter().collect();
        for problem in problems.difference(&self.logged) {
            tracing::warn!("dns: {problem}");
        }
        self.logged = problems;
        self.last = Some(data);
        Some(zone)
    }

    /// The zone's data from what was copied; parses the new unit texts (outside the lock) and
    /// forgets the parses no active unit needs.
    fn zone_data(&mut self, copied: Copied) -> (ZoneData, Vec<String>) {
        let mut problems = Vec::new();
        for (machine, addr) in &copied.bad_addrs {
            problems.push(format!(
                "machine {machine} registered the address {addr:?}, not an IP address: \
                 it gets no address record"
            ));
        }
        for (hash, unit, text) in copied.unknown {
            let verified = flotilla_units::verify(&unit, &text, &[]);
            self.advertised
                .insert(hash, verified.flotilla.advertise.into());
        }
        let wanted: BTreeSet<&str> = copied.active.iter().map(|(_, _, h)| h.as_str()).collect();
        self.advertised.retain(|h, _| wanted.contains(h.as_str()));

        let mut services = Vec::new();
        for (unit, machine, hash) in &copied.active {
            let Some(advertised) = self.advertised.get(hash) else {
                continue;
            };
            if advertised.is_empty() {
                continue;
            }
            let name = match UnitName::parse(unit) {
                Ok(name) => name,
                Err(e) => {
                    problems.push(format!("unit {unit}: {e}, leaving it out of the zone"));
                    continue;
                }
            };
            let mut ports: BTreeMap<String, Vec<Advertised>> = BTreeMap::new();
            for a in advertised.iter() {
                ports
                    .entry(a.service_name(&name))
                    .or_default()
                    .push(Advertised {
                        name: None,
                        port: a.port,
                        proto: match a.proto {
                            Protocol::Tcp => Proto::Tcp,
                            Protocol::Udp => Proto::Udp,
                        },
                    });
            }
            for (service, ports) in ports {
                services.push(ServiceInstance {
                    service,
                    unit: unit.clone(),
                    machine: machine.clone(),
                    ports,
                });
            }
        }
        let data = ZoneData {
            machines: copied.machines,
            services,
        };
        (data, problems)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use flotilla_state::machines::Machine;
    use flotilla_state::units::{Desired, Reported, UnitRecord};

    use super::*;

    fn machine(name: &str, addr: &str, status: Status) -> Machine {
        Machine {
            name: name.into(),
            machine_id: format!("{name:0>32}"),
            addr: addr.into(),
            metadata: BTreeMap::from([("region".into(), "east".into())]),
            status,
            since_ms: 0,
        }
    }

    /// Adds `unit` with `text`, assigned to `on` and reported `active` there.
    fn unit(state: &mut State, unit: &str, text: &str, on: &str, active: &str) {
        state.units.by_name.insert(
            unit.into(),
            UnitRecord {
                name: unit.into(),
                text: text.into(),
                hash: format!("hash of {text}"),
                desired: Desired::Launched,
                requirements: Default::default(),
                restarts: BTreeMap::new(),
                launch: 0,
            },
        );
        state
            .units
            .assignments
            .insert(unit.into(), BTreeSet::from([on.to_owned()]));
        state.units.reported.insert(
            unit.into(),
            BTreeMap::from([(
                on.to_owned(),
                Reported {
                    active: active.into(),
                    ..Default::default()
                },
            )]),
        );
    }

    const WEB: &str = "[Service]\nExecStart=/bin/true\n[X-Flotilla]\nAdvertise=8080\n\
                       Advertise=metrics:9100/tcp\nAdvertise=53/udp\n";

    fn state() -> State {
        let mut state = State::default();
        for m in [
            machine("node1", "10.0.0.1", Status::Up),
            machine("node2", "10.0.0.2", Status::Up),
            machine("node3", "10.0.0.3", Status::Lost),
        ] {
            state.machines.by_name.insert(m.name.clone(), m);
        }
        unit(&mut state, "web@1.service", WEB, "node1", "active");
        unit(&mut state, "web@2.service", WEB, "node2", "active");
        // not published: inactive, on a lost machine, no Advertise=
        unit(&mut state, "web@3.service", WEB, "node2", "inactive");
        unit(&mut state, "web@4.service", WEB, "node3", "active");
        let plain = "[Service]\nExecStart=/bin/true\n";
        unit(&mut state, "plain.service", plain, "node1", "active");
        let db = "[Service]\nExecStart=/bin/true\n[X-Flotilla]\nAdvertise=5432\n";
        unit(&mut state, "db.service", db, "node2", "active");
        state
    }

    fn build(builder: &mut Builder, state: &State) -> ZoneData {
        let copied = Copied::from_state(state, &builder.advertised);
        let (data, problems) = builder.zone_data(copied);
        assert!(problems.is_empty(), "{problems:?}");
        data
    }

    #[test]
    fn publishes_active_advertised_units_of_up_machines() {
        let mut builder = Builder::default();
        let data = build(&mut builder, &state());
        let up: Vec<(&str, bool)> = data
            .machines
            .iter()
            .map(|m| (m.name.as_str(), m.up))
            .collect();
        assert_eq!(up, [("node1", true), ("node2", true), ("node3", false)]);
        let services: Vec<String> = data
            .services
            .iter()
            .map(|s| {
                let ports: Vec<String> = s
                    .ports
                    .iter()
                    .map(|p| format!("{}/{:?}", p.port, p.proto))
                    .collect();
                format!("{} {} {} {}", s.service, s.unit, s.machine, ports.join(","))
            })
            .collect();
        assert_eq!(
            services,
            [
                "db db.service node2 5432/Tcp",
                "metrics web@1.service node1 9100/Tcp",
                "web web@1.service node1 8080/Tcp,53/Udp",
                "metrics web@2.service node2 9100/Tcp",
                "web web@2.service node2 8080/Tcp,53/Udp",
            ]
        );
        // one parse per distinct text of an active unit
        assert_eq!(builder.advertised.len(), 3);
    }

    #[test]
    fn the_zone_follows_stops_and_lost_machines() {
        let mut builder = Builder::default();
        let mut state = state();
        let zone = Zone::build(&build(&mut builder, &state), &ZoneConfig::default());
        let names = |zone: &Zone| -> Vec<String> {
            zone.records()
                .iter()
                .filter(|r| r.name.to_ascii().contains("service"))
                .map(|r| r.to_string())
                .collect()
        };
        assert!(names(&zone).iter().any(|r| r.contains("node1.node")));
        // web@1 stops, node2 is lost: only db goes with node2, nothing of web remains
        state
            .units
            .reported
            .get_mut("web@1.service")
            .unwrap()
            .get_mut("node1")
            .unwrap()
            .active = "deactivating".into();
        state.machines.by_name.get_mut("node2").unwrap().status = Status::Lost;
        let data = build(&mut builder, &state);
        assert!(data.services.is_empty(), "{:?}", data.services);
        let zone = Zone::build(&data, &ZoneConfig::default());
        assert!(names(&zone).is_empty(), "{:?}", names(&zone));
        // only plain.service's parse (no Advertise=) is still needed
        assert_eq!(builder.advertised.len(), 1);
    }

    #[test]
    fn copies_no_text_it_has_parsed() {
        let mut builder = Builder::default();
        let state = state();
        build(&mut builder, &state);
        let copied = Copied::from_state(&state, &builder.advertised);
        assert!(copied.unknown.is_empty());
        assert_eq!(copied.active.len(), 4);
    }

    #[test]
    fn bad_addresses_are_problems_not_failures() {
        let mut builder = Builder::default();
        let mut state = state();
        state.machines.by_name.get_mut("node1").unwrap().addr = "node1.example".into();
        let copied = Copied::from_state(&state, &builder.advertised);
        let (data, problems) = builder.zone_data(copied);
        assert!(data.machines[0].addrs.is_empty());
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("node1.example"), "{problems:?}");
    }

    #[test]
    fn bind_takes_one_free_port_for_udp_and_tcp() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let sockets = Sockets::bind(&["127.0.0.1:0".parse().unwrap()]).unwrap();
            let udp = sockets.udp[0].local_addr().unwrap();
            assert_ne!(udp.port(), 0);
            assert_eq!(sockets.addrs(), [udp]);
            assert!(Sockets::bind(&[]).unwrap().is_empty());
            let err = Sockets::bind(&[udp]).unwrap_err().to_string();
            assert!(
                err.contains(&udp.to_string()) && err.contains("tcp"),
                "{err}"
            );
            // the wildcard of each family, on one port: IPv6 sockets are IPv6-only
            let v4 = Sockets::bind(&["0.0.0.0:0".parse().unwrap()]).unwrap();
            let port = v4.addrs()[0].port();
            let v6 = SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port));
            let both = Sockets::bind(&[v6]).unwrap();
            assert_eq!(both.addrs(), [v6]);
        });
    }
}
