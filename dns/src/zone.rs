//! The zone: plain input types the agent fills, and the precomputed answers built from them.
//!
//! Every answer is computed once in [`Zone::build`]; answering a query is a hash lookup on the
//! lowercase name, a scan of the few record types present at that name, and a shuffle.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::{A, AAAA, NS, SOA, SRV, TXT};
use hickory_proto::rr::{LowerName, Name, RData, Record, RecordType};
use serde::{Deserialize, Serialize};

use crate::wire::WireZone;

/// Why a zone configuration was rejected.
#[derive(Debug, thiserror::Error)]
pub enum ZoneError {
    /// `[dns] domain` is not a valid domain name.
    #[error(
        "invalid dns domain {domain:?}: {reason}; set [dns] domain to a name such as flotilla.internal"
    )]
    Domain { domain: String, reason: String },
}

/// The cluster state the zone is built from: filled by the agent from the replicated state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ZoneData {
    pub machines: Vec<MachineRecord>,
    /// Active units only: a unit that is not active is not passed in.
    pub services: Vec<ServiceInstance>,
}

/// One machine of the cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineRecord {
    /// The machine's name, a single DNS label (`<name>.node.<domain>`).
    pub name: String,
    pub addrs: Vec<IpAddr>,
    /// Served as TXT `key=value` records at `<name>.node.<domain>`.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// False once the cluster has declared the machine lost: it and its units disappear.
    pub up: bool,
}

/// An active unit that belongs to a service, and where it runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceInstance {
    /// The service name, see [`service_name`].
    pub service: String,
    /// The unit's full name, e.g. `web@1.service`.
    pub unit: String,
    /// The name of the machine the unit is active on.
    pub machine: String,
    /// The unit's `[X-Flotilla] Advertise=` ports.
    #[serde(default)]
    pub ports: Vec<Advertised>,
}

/// One `Advertise=[NAME:]PORT[/tcp|/udp]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Advertised {
    pub name: Option<String>,
    pub port: u16,
    pub proto: Proto,
}

/// The transport of an advertised port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    fn label(self) -> &'static str {
        match self {
            Proto::Tcp => "_tcp",
            Proto::Udp => "_udp",
        }
    }
}

/// The service a unit belongs to: a template instance's service is the template's prefix
/// (`web@1.service` -> `web`), any other unit's is its name without the type suffix
/// (`db.service` -> `db`). None for a name with an empty prefix.
pub fn service_name(unit: &str) -> Option<&str> {
    let prefix = match unit.split_once('@') {
        Some((prefix, _)) => prefix,
        None => unit.rsplit_once('.').map_or(unit, |(prefix, _)| prefix),
    };
    (!prefix.is_empty()).then_some(prefix)
}

/// The zone's settings, from the agent's `[dns]` section.
#[derive(Clone, Debug)]
pub struct ZoneConfig {
    domain: Name,
    /// TTL of every positive answer, in seconds.
    pub ttl: u32,
    /// TTL of negative answers (the SOA minimum), in seconds.
    pub negative_ttl: u32,
}

/// The default domain, `[dns] domain`.
pub const DEFAULT_DOMAIN: &str = "flotilla.internal";

impl ZoneConfig {
    /// A configuration for `domain` with TTLs of one second: a unit that stops or a machine
    /// that is lost leaves resolvers' caches a second after it leaves the zone.
    pub fn new(domain: &str) -> Result<Self, ZoneError> {
        let invalid = |reason: String| ZoneError::Domain {
            domain: domain.to_owned(),
            reason,
        };
        let trimmed = domain.trim_end_matches('.');
        if trimmed.is_empty() {
            return Err(invalid("the root cannot be served".into()));
        }
        if let Some(label) = trimmed.split('.').find(|label| !valid_label(label)) {
            return Err(invalid(format!(
                "label {label:?} is not 1-63 letters, digits, '-' or '_'"
            )));
        }
        let mut name = Name::from_ascii(trimmed).map_err(|e| invalid(e.to_string()))?;
        name.set_fqdn(true);
        Ok(Self {
            domain: name.to_lowercase(),
            ttl: 1,
            negative_ttl: 1,
        })
    }

    /// The served domain.
    pub fn domain(&self) -> &Name {
        &self.domain
    }
}

impl Default for ZoneConfig {
    fn default() -> Self {
        Self::new(DEFAULT_DOMAIN).expect("the default domain is valid")
    }
}

fn valid_label(label: &str) -> bool {
    (1..=63).contains(&label.len())
        && label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The records of one type at one name, and what goes with them in the additional section.
#[derive(Debug, Default)]
struct RrSet {
    records: Vec<Record>,
    additionals: Vec<Record>,
}

/// A name of the zone: its record sets (few: a linear scan is faster than a map).
#[derive(Debug, Default)]
struct Node {
    rrsets: Vec<(RecordType, RrSet)>,
}

impl Node {
    fn rrset_mut(&mut self, rtype: RecordType) -> &mut RrSet {
        let at = match self.rrsets.iter().position(|(t, _)| *t == rtype) {
            Some(at) => at,
            None => {
                self.rrsets.push((rtype, RrSet::default()));
                self.rrsets.len() - 1
            }
        };
        &mut self.rrsets[at].1
    }
}

/// What a query gets: response code and the records of each section, borrowed from the zone.
#[derive(Debug)]
pub struct Answer<'z> {
    pub code: ResponseCode,
    /// Set for every name inside the zone.
    pub authoritative: bool,
    pub answers: Vec<&'z Record>,
    pub authorities: Vec<&'z Record>,
    pub additionals: Vec<&'z Record>,
}

impl Answer<'_> {
    fn code(code: ResponseCode) -> Self {
        Self {
            code,
            authoritative: false,
            answers: Vec::new(),
            authorities: Vec::new(),
            additionals: Vec::new(),
        }
    }
}

/// The precomputed zone: immutable once built; the live one is replaced whole.
#[derive(Debug)]
pub struct Zone {
    origin: LowerName,
    /// The same answers in wire format, for the fast path.
    pub(crate) wire: WireZone,
    names: HashMap<LowerName, Node>,
    soa: Record,
    problems: Vec<String>,
}

impl Zone {
    /// Builds every answer of the zone from the cluster's state. Entries whose name cannot be a
    /// DNS label are left out and listed in [`Zone::problems`].
    pub fn build(data: &ZoneData, config: &ZoneConfig) -> Zone {
        let mut builder = Builder {
            config,
            names: HashMap::new(),
            problems: Vec::new(),
        };
        let origin = config.domain.clone();
        let ttl = config.ttl;

        // machines: <host>.node.<domain> A/AAAA and TXT
        let mut hosts: BTreeMap<String, (Name, Vec<Record>)> = BTreeMap::new();
        for machine in data.machines.iter().filter(|m| m.up) {
            let host = machine.name.to_ascii_lowercase();
            if !valid_label(&host) {
                builder.problem(format!(
                    "machine {:?} is not a valid DNS label, leaving it out of the zone",
                    machine.name
                ));
                continue;
            }
            let Some(name) = builder.name(&[&host, "node"]) else {
                continue;
            };
            let mut addrs: Vec<IpAddr> = machine.addrs.clone();
            addrs.sort();
            addrs.dedup();
            let records: Vec<Record> = addrs.iter().map(|a| address(&name, *a, ttl)).collect();
            for record in &records {
                builder
                    .node(&name)
                    .rrset_mut(record.record_type())
                    .records
                    .push(record.clone());
            }
            let txt = builder.node(&name).rrset_mut(RecordType::TXT);
            for (key, value) in &machine.metadata {
                let data = RData::TXT(TXT::new(vec![format!("{key}={value}")]));
                txt.records
                    .push(Record::from_rdata(name.clone(), ttl, data));
            }
            hosts.insert(host, (name, records));
        }

        // services: <svc>.service.<domain> A/AAAA, SRV
        let mut services: BTreeMap<String, Vec<&ServiceInstance>> = BTreeMap::new();
        for instance in &data.services {
            let service = instance.service.to_ascii_lowercase();
            if !valid_label(&service) {
                builder.problem(format!(
                    "service {:?} of unit {} is not a valid DNS label, leaving it out of the zone",
                    instance.service, instance.unit
                ));
                continue;
            }
            if !hosts.contains_key(&instance.machine.to_ascii_lowercase()) {
                // the machine is lost or unknown: its units are not reachable
                continue;
            }
            services.entry(service).or_default().push(instance);
        }
        for (service, instances) in &services {
            let Some(name) = builder.name(&[service, "service"]) else {
                continue;
            };
            let mut addr_records: BTreeSet<(IpAddr, String)> = BTreeSet::new();
            // SRV owner -> (srv record data, target host)
            let mut srvs: BTreeMap<Name, BTreeSet<(u16, String)>> = BTreeMap::new();
            for instance in instances {
                let host = instance.machine.to_ascii_lowercase();
                let (_, records) = &hosts[&host];
                for record in records {
                    if let Some(ip) = record_ip(record) {
                        addr_records.insert((ip, host.clone()));
                    }
                }
                for port in &instance.ports {
                    let owner = match &port.name {
                        None => {
                            builder.name(&[&format!("_{service}"), port.proto.label(), "service"])
                        }
                        Some(port_name) => {
                            let port_name = port_name.to_ascii_lowercase();
                            if !valid_label(&port_name) || port_name.len() > 62 {
                                builder.problem(format!(
                                    "port name {port_name:?} of unit {} is not a valid DNS label, leaving it out of the zone",
                                    instance.unit
                                ));
                                continue;
                            }
                            builder.name(&[
                                &format!("_{port_name}"),
                                port.proto.label(),
                                service,
                                "service",
                            ])
                        }
                    };
                    let Some(owner) = owner else { continue };
                    srvs.entry(owner)
                        .or_default()
                        .insert((port.port, host.clone()));
                }
            }
            let ips: BTreeSet<IpAddr> = addr_records.iter().map(|(ip, _)| *ip).collect();
            for ip in ips {
                let record = address(&name, ip, ttl);
                builder
                    .node(&name)
                    .rrset_mut(record.record_type())
                    .records
                    .push(record);
            }
            for (owner, targets) in srvs {
                let mut additional_hosts: BTreeSet<&str> = BTreeSet::new();
                let mut records = Vec::new();
                for (port, host) in &targets {
                    let target = hosts[host].0.clone();
                    let data = RData::SRV(SRV::new(1, 1, *port, target));
                    records.push(Record::from_rdata(owner.clone(), ttl, data));
                    additional_hosts.insert(host);
                }
                let additionals = additional_hosts
                    .iter()
                    .flat_map(|host| hosts[*host].1.iter().cloned())
                    .collect();
                let rrset = builder.node(&owner).rrset_mut(RecordType::SRV);
                rrset.records = records;
                rrset.additionals = additionals;
            }
        }

        // the apex: SOA and NS (every machine serves the zone)
        let hostmaster = builder
            .name(&["hostmaster"])
            .unwrap_or_else(|| origin.clone());
        let primary = hosts
            .values()
            .next()
            .map(|(name, _)| name.clone())
            .or_else(|| builder.name(&["ns"]))
            .unwrap_or_else(|| origin.clone());
        let mut ns_records = Vec::new();
        let mut glue = Vec::new();
        for (name, records) in hosts.values() {
            ns_records.push(Record::from_rdata(
                origin.clone(),
                ttl,
                RData::NS(NS(name.clone())),
            ));
            glue.extend(records.iter().cloned());
        }
        let serial = builder.serial();
        let soa = Record::from_rdata(
            origin.clone(),
            config.negative_ttl,
            RData::SOA(SOA::new(
                primary,
                hostmaster,
                serial,
                3600,
                600,
                86400,
                config.negative_ttl,
            )),
        );
        let apex = builder.node(&origin);
        apex.rrset_mut(RecordType::SOA).records.push(soa.clone());
        let ns = apex.rrset_mut(RecordType::NS);
        ns.records = ns_records;
        ns.additionals = glue;
        // a node whose TXT set stayed empty has no TXT records: drop the empty sets
        for node in builder.names.values_mut() {
            node.rrsets.retain(|(_, rrset)| !rrset.records.is_empty());
        }

        let sets = builder.names.values().flat_map(|node| {
            node.rrsets.iter().map(|(rtype, rrset)| {
                (
                    &rrset.records[0].name,
                    *rtype,
                    &rrset.records[..],
                    &rrset.additionals[..],
                )
            })
        });
        let wire = WireZone::build(sets, &soa);
        Zone {
            origin: LowerName::new(&origin),
            wire,
            names: builder.names,
            soa,
            problems: builder.problems,
        }
    }

    /// Every record of the zone, names in canonical order (SOA first): a zone file's content,
    /// one `Display` line per record.
    pub fn records(&self) -> Vec<&Record> {
        let mut names: Vec<&LowerName> = self.names.keys().collect();
        names.sort();
        let mut records = vec![&self.soa];
        for name in names {
            for (rtype, rrset) in &self.names[name].rrsets {
                if *rtype != RecordType::SOA {
                    records.extend(rrset.records.iter());
                }
            }
        }
        records
    }

    /// Entries left out of the zone, one sentence each, for the caller to log.
    pub fn problems(&self) -> &[String] {
        &self.problems
    }

    /// The zone's origin.
    pub fn origin(&self) -> &LowerName {
        &self.origin
    }

    /// The zone's SOA serial: a hash of its content, so it changes when the content does.
    pub fn serial(&self) -> u32 {
        match &self.soa.data {
            RData::SOA(soa) => soa.serial,
            _ => 0,
        }
    }

    /// Answers one question (class IN). `seed` drives the shuffle of the answer records, so a
    /// caller that passes a new seed per query spreads load over the instances.
    pub fn lookup(&self, name: &LowerName, rtype: RecordType, seed: u64) -> Answer<'_> {
        if !self.origin.zone_of(name) {
            return Answer::code(ResponseCode::Refused);
        }
        let Some(node) = self.names.get(name) else {
            let mut answer = Answer::code(ResponseCode::NXDomain);
            answer.authoritative = true;
            answer.authorities.push(&self.soa);
            return answer;
        };
        let mut answer = Answer::code(ResponseCode::NoError);
        answer.authoritative = true;
        if rtype == RecordType::ANY {
            // RFC 8482 allows less, but the zone is small: give what the name has
            for (_, rrset) in &node.rrsets {
                answer.answers.extend(rrset.records.iter());
            }
            return answer;
        }
        match node.rrsets.iter().find(|(t, _)| *t == rtype) {
            Some((_, rrset)) => {
                answer.answers.extend(rrset.records.iter());
                shuffle(&mut answer.answers, seed);
                answer.additionals.extend(rrset.additionals.iter());
            }
            None => answer.authorities.push(&self.soa),
        }
        answer
    }
}

/// Zone construction state: the names so far and what was left out.
struct Builder<'c> {
    config: &'c ZoneConfig,
    names: HashMap<LowerName, Node>,
    problems: Vec<String>,
}

impl Builder<'_> {
    fn problem(&mut self, problem: String) {
        self.problems.push(problem);
    }

    /// `labels` prepended to the domain; None (and a problem) if the name is too long.
    fn name(&mut self, labels: &[&str]) -> Option<Name> {
        let relative = labels.join(".");
        match Name::from_ascii(&relative).and_then(|n| n.append_domain(&self.config.domain)) {
            Ok(name) => Some(name.to_lowercase()),
            Err(error) => {
                self.problem(format!(
                    "name {relative}.{} is not valid ({error}), leaving it out of the zone",
                    self.config.domain
                ));
                None
            }
        }
    }

    /// The node at `name`, created with all its ancestors up to the apex so that they exist
    /// (NOERROR with no data, not NXDOMAIN).
    fn node(&mut self, name: &Name) -> &mut Node {
        let mut ancestor = name.base_name();
        while ancestor.num_labels() >= self.config.domain.num_labels() {
            self.names.entry(LowerName::new(&ancestor)).or_default();
            if ancestor.num_labels() == 0 {
                break;
            }
            ancestor = ancestor.base_name();
        }
        self.names.entry(LowerName::new(name)).or_default()
    }

    /// FNV-1a over the zone's records, in name order.
    fn serial(&self) -> u32 {
        let mut keys: Vec<&LowerName> = self.names.keys().collect();
        keys.sort();
        let mut hash: u32 = 0x811c_9dc5;
        for key in keys {
            for (_, rrset) in &self.names[key].rrsets {
                for record in &rrset.records {
                    for byte in record.to_string().bytes() {
                        hash ^= u32::from(byte);
                        hash = hash.wrapping_mul(0x0100_0193);
                    }
                }
            }
        }
        hash
    }
}

fn address(name: &Name, ip: IpAddr, ttl: u32) -> Record {
    let data = match ip {
        IpAddr::V4(v4) => RData::A(A(v4)),
        IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
    };
    Record::from_rdata(name.clone(), ttl, data)
}

fn record_ip(record: &Record) -> Option<IpAddr> {
    match &record.data {
        RData::A(a) => Some(IpAddr::V4(a.0)),
        RData::AAAA(aaaa) => Some(IpAddr::V6(aaaa.0)),
        _ => None,
    }
}

/// Fisher-Yates driven by splitmix64: cheap, and a pure function of the seed.
pub(crate) fn shuffle<T>(items: &mut [T], seed: u64) {
    let mut state = seed;
    for i in (1..items.len()).rev() {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        let j = (z % (i as u64 + 1)) as usize;
        items.swap(i, j);
    }
}
