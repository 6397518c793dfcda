//! Service discovery over DNS, asked with the real `dig`: the server runs in this process on
//! loopback (port 0), and on a testbed bridge where `dig` runs inside every machine; with an
//! upstream resolver of its own on loopback for forwarding. Then the agents themselves: loopback
//! agents on their own addresses, and a 3-machine testbed where units with `Advertise=` start,
//! stop and move while `dig` and `getent` on every machine follow them.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use flotilla_dns::{
    Advertised, MachineRecord, Proto, ServiceInstance, Upstreams, Zone, ZoneConfig, ZoneData,
    serve_forwarding,
};
use flotilla_tests::testbed::{Options, Testbed, wait_for};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

const DEADLINE: Duration = Duration::from_secs(10);

/// A flotilla-dns server on its own runtime thread, stopped on drop.
struct DnsServer {
    addr: SocketAddr,
    zone: watch::Sender<Arc<Zone>>,
    config: ZoneConfig,
    cancel: CancellationToken,
    thread: Option<JoinHandle<()>>,
}

impl DnsServer {
    /// Serves `data` on UDP and TCP at `ip:port`; port 0 takes a free port (the same for both).
    fn start(ip: IpAddr, port: u16, data: &ZoneData) -> DnsServer {
        DnsServer::start_with(ip, port, data, ZoneConfig::default(), Vec::new())
    }

    /// As [`DnsServer::start`], for `config`'s domain, forwarding other names to `upstreams`.
    fn start_with(
        ip: IpAddr,
        port: u16,
        data: &ZoneData,
        config: ZoneConfig,
        upstreams: Vec<SocketAddr>,
    ) -> DnsServer {
        let (udp, tcp) = bind_pair(ip, port);
        let addr = udp.local_addr().unwrap();
        let (tx, rx) = watch::channel(Arc::new(Zone::build(data, &config)));
        let upstreams = Upstreams::new(upstreams);
        let cancel = CancellationToken::new();
        let token = cancel.clone();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let udp = tokio::net::UdpSocket::from_std(udp).unwrap();
                let tcp = tokio::net::TcpListener::from_std(tcp).unwrap();
                serve_forwarding(rx, vec![udp], vec![tcp], upstreams, token)
                    .await
                    .unwrap();
            });
        });
        DnsServer {
            addr,
            zone: tx,
            config,
            cancel,
            thread: Some(thread),
        }
    }

    fn publish(&self, data: &ZoneData) {
        let zone = Zone::build(data, &self.config);
        self.zone.send_replace(Arc::new(zone));
    }

    /// `dig` run here against the server.
    fn dig(&self, args: &[&str]) -> Dig {
        let port = self.addr.port().to_string();
        let server = format!("@{}", self.addr.ip());
        let mut all = vec![server.as_str(), "-p", port.as_str(), "+tries=1", "+time=5"];
        all.extend_from_slice(args);
        let out = std::process::Command::new("dig")
            .args(&all)
            .output()
            .unwrap();
        Dig::parse(&out.stdout)
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.cancel.cancel();
        if let Some(thread) = self.thread.take() {
            let finished = thread.join();
            if !std::thread::panicking() {
                finished.unwrap();
            }
        }
    }
}

fn bind_pair(ip: IpAddr, port: u16) -> (std::net::UdpSocket, std::net::TcpListener) {
    for _ in 0..50 {
        let udp = std::net::UdpSocket::bind((ip, port)).unwrap();
        let bound = udp.local_addr().unwrap().port();
        if let Ok(tcp) = std::net::TcpListener::bind((ip, bound)) {
            udp.set_nonblocking(true).unwrap();
            tcp.set_nonblocking(true).unwrap();
            return (udp, tcp);
        }
    }
    panic!("no port free for both udp and tcp on {ip}");
}

/// What `dig` printed, by part; records sorted (answers are shuffled per query).
#[derive(Debug)]
struct Dig {
    status: String,
    flags: String,
    edns: Option<String>,
    answer: Vec<String>,
    authority: Vec<String>,
    additional: Vec<String>,
    raw: String,
}

impl Dig {
    fn parse(stdout: &[u8]) -> Dig {
        let raw = String::from_utf8_lossy(stdout).into_owned();
        let mut dig = Dig {
            status: String::new(),
            flags: String::new(),
            edns: None,
            answer: Vec::new(),
            authority: Vec::new(),
            additional: Vec::new(),
            raw: raw.clone(),
        };
        let mut section: Option<&mut Vec<String>> = None;
        for line in raw.lines() {
            if let Some(rest) = line.split_once("status: ").map(|(_, r)| r) {
                dig.status = rest.split(',').next().unwrap().to_owned();
            } else if let Some(rest) = line.strip_prefix(";; flags: ") {
                dig.flags = rest.split(';').next().unwrap().to_owned();
            } else if let Some(rest) = line.strip_prefix("; EDNS: ") {
                dig.edns = Some(rest.to_owned());
            } else if line.starts_with(";; ANSWER SECTION") {
                section = Some(&mut dig.answer);
            } else if line.starts_with(";; AUTHORITY SECTION") {
                section = Some(&mut dig.authority);
            } else if line.starts_with(";; ADDITIONAL SECTION") {
                section = Some(&mut dig.additional);
            } else if line.trim().is_empty() || line.starts_with(';') {
                section = None;
            } else if let Some(records) = section.as_mut() {
                records.push(line.split_whitespace().collect::<Vec<_>>().join(" "));
            }
        }
        for records in [&mut dig.answer, &mut dig.authority, &mut dig.additional] {
            records.sort();
        }
        dig
    }

    /// The parts a test compares, as text.
    fn text(&self) -> String {
        let mut out = format!("{} [{}]\n", self.status, self.flags);
        for (title, records) in [
            ("answer", &self.answer),
            ("authority", &self.authority),
            ("additional", &self.additional),
        ] {
            for record in records {
                out.push_str(&format!("{title}: {record}\n"));
            }
        }
        out
    }
}

fn machine(name: &str, addr: Ipv4Addr) -> MachineRecord {
    MachineRecord {
        name: name.into(),
        addrs: vec![IpAddr::V4(addr)],
        metadata: BTreeMap::from([
            ("region".into(), "east".into()),
            ("disk".into(), "ssd".into()),
        ]),
        up: true,
    }
}

fn web(unit: &str, machine: &str) -> ServiceInstance {
    ServiceInstance {
        service: "web".into(),
        unit: unit.into(),
        machine: machine.into(),
        ports: vec![Advertised {
            name: None,
            port: 8080,
            proto: Proto::Tcp,
        }],
    }
}

fn cluster() -> ZoneData {
    let mut node2 = machine("node2", Ipv4Addr::new(10, 0, 0, 2));
    node2.addrs.push("fd00::2".parse().unwrap());
    ZoneData {
        machines: vec![machine("node1", Ipv4Addr::new(10, 0, 0, 1)), node2],
        services: vec![web("web@1.service", "node1"), web("web@2.service", "node2")],
    }
}

fn local() -> DnsServer {
    DnsServer::start(IpAddr::V4(Ipv4Addr::LOCALHOST), 0, &cluster())
}

#[test]
fn dig_gets_a_aaaa_srv_txt_soa_and_ns() {
    let server = local();
    let cases = [
        (
            vec!["web.service.flotilla.internal", "A"],
            "NOERROR [qr aa rd]\n\
             answer: web.service.flotilla.internal. 1 IN A 10.0.0.1\n\
             answer: web.service.flotilla.internal. 1 IN A 10.0.0.2\n",
        ),
        (
            vec!["web.service.flotilla.internal", "AAAA"],
            "NOERROR [qr aa rd]\n\
             answer: web.service.flotilla.internal. 1 IN AAAA fd00::2\n",
        ),
        (
            vec!["_web._tcp.service.flotilla.internal", "SRV"],
            "NOERROR [qr aa rd]\n\
             answer: _web._tcp.service.flotilla.internal. 1 IN SRV 1 1 8080 node1.node.flotilla.internal.\n\
             answer: _web._tcp.service.flotilla.internal. 1 IN SRV 1 1 8080 node2.node.flotilla.internal.\n\
             additional: node1.node.flotilla.internal. 1 IN A 10.0.0.1\n\
             additional: node2.node.flotilla.internal. 1 IN A 10.0.0.2\n\
             additional: node2.node.flotilla.internal. 1 IN AAAA fd00::2\n",
        ),
        (
            vec!["node1.node.flotilla.internal", "TXT"],
            "NOERROR [qr aa rd]\n\
             answer: node1.node.flotilla.internal. 1 IN TXT \"disk=ssd\"\n\
             answer: node1.node.flotilla.internal. 1 IN TXT \"region=east\"\n",
        ),
        (
            vec!["flotilla.internal", "NS"],
            "NOERROR [qr aa rd]\n\
             answer: flotilla.internal. 1 IN NS node1.node.flotilla.internal.\n\
             answer: flotilla.internal. 1 IN NS node2.node.flotilla.internal.\n\
             additional: node1.node.flotilla.internal. 1 IN A 10.0.0.1\n\
             additional: node2.node.flotilla.internal. 1 IN A 10.0.0.2\n\
             additional: node2.node.flotilla.internal. 1 IN AAAA fd00::2\n",
        ),
    ];
    for (args, expected) in cases {
        let dig = server.dig(&args);
        assert_eq!(dig.text(), expected, "dig {args:?}:\n{}", dig.raw);
    }
    let soa = server.dig(&["flotilla.internal", "SOA"]);
    assert_eq!(soa.status, "NOERROR", "{}", soa.raw);
    assert_eq!(soa.answer.len(), 1, "{}", soa.raw);
    assert!(
        soa.answer[0].starts_with(
            "flotilla.internal. 1 IN SOA node1.node.flotilla.internal. hostmaster.flotilla.internal. "
        ),
        "{}",
        soa.raw
    );
}

#[test]
fn dig_tells_nxdomain_from_nodata_and_refuses_other_zones() {
    let server = local();
    let nx = server.dig(&["nosuch.service.flotilla.internal", "A"]);
    assert_eq!(
        (nx.status.as_str(), nx.answer.len(), nx.authority.len()),
        ("NXDOMAIN", 0, 1),
        "{}",
        nx.raw
    );
    assert!(nx.authority[0].contains(" IN SOA "), "{}", nx.raw);
    for name in ["web.service.flotilla.internal", "service.flotilla.internal"] {
        let nodata = server.dig(&[name, "MX"]);
        assert_eq!(
            (nodata.status.as_str(), nodata.answer.len()),
            ("NOERROR", 0),
            "{}",
            nodata.raw
        );
        assert!(nodata.authority[0].contains(" IN SOA "), "{}", nodata.raw);
    }
    let refused = server.dig(&["example.com", "A"]);
    assert_eq!(refused.status, "REFUSED", "{}", refused.raw);
}

#[test]
fn dig_names_are_case_insensitive() {
    let server = local();
    let dig = server.dig(&["WeB.SeRvIcE.FLOTILLA.internal", "A"]);
    assert_eq!(
        (dig.status.as_str(), dig.answer.len()),
        ("NOERROR", 2),
        "{}",
        dig.raw
    );
    assert!(
        dig.raw.contains(";WeB.SeRvIcE.FLOTILLA.internal."),
        "the question keeps its case:\n{}",
        dig.raw
    );
}

#[test]
fn dig_edns_is_answered_and_bad_versions_rejected() {
    let server = local();
    let dig = server.dig(&["node1.node.flotilla.internal", "A", "+edns=0"]);
    let edns = dig.edns.clone().unwrap_or_default();
    assert!(
        edns.contains("version: 0") && edns.contains("udp: 1232"),
        "{}",
        dig.raw
    );
    let plain = server.dig(&["node1.node.flotilla.internal", "A", "+noedns"]);
    assert_eq!(
        (plain.status.as_str(), plain.edns.as_deref()),
        ("NOERROR", None),
        "{}",
        plain.raw
    );
    let bad = server.dig(&["node1.node.flotilla.internal", "A", "+edns=1", "+noednsneg"]);
    assert_eq!(bad.status, "BADVERS", "{}", bad.raw);
}

#[test]
fn dig_over_udp_truncates_and_tcp_gets_all() {
    let machines = (1..=60)
        .map(|i| machine(&format!("m{i}"), Ipv4Addr::new(10, 0, 1, i)))
        .collect();
    let services = (1..=60)
        .map(|i| web(&format!("web@{i}.service"), &format!("m{i}")))
        .collect();
    let server = DnsServer::start(
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        0,
        &ZoneData { machines, services },
    );
    let udp = server.dig(&[
        "_web._tcp.service.flotilla.internal",
        "SRV",
        "+bufsize=512",
        "+ignore",
    ]);
    assert!(
        udp.flags.split(' ').any(|f| f == "tc"),
        "tc over udp:\n{}",
        udp.raw
    );
    assert!(udp.answer.len() < 60, "{}", udp.raw);
    let tcp = server.dig(&["_web._tcp.service.flotilla.internal", "SRV", "+tcp"]);
    assert!(!tcp.flags.split(' ').any(|f| f == "tc"), "{}", tcp.raw);
    assert_eq!(
        (tcp.answer.len(), tcp.additional.len()),
        (60, 60),
        "{}",
        tcp.raw
    );
    let a = server.dig(&["web.service.flotilla.internal", "A", "+tcp"]);
    assert_eq!(a.answer.len(), 60, "{}", a.raw);
}

#[test]
fn garbage_datagrams_and_connections_leave_the_server_answering() {
    let server = local();
    let socket = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for round in 0..3000u64 {
        let len = (next() % 600) as usize;
        let mut bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        if round % 2 == 0 && len > 12 {
            // a plausible query header, so that decoding goes past it
            bytes[2] = 0x01;
            bytes[4..12].copy_from_slice(&[0, 1, 0, 0, 0, 0, 0, (round % 3) as u8]);
        }
        socket.send_to(&bytes, server.addr).unwrap();
    }
    for _ in 0..20 {
        use std::io::Write;
        let mut stream = std::net::TcpStream::connect(server.addr).unwrap();
        let len = (next() % 300) as usize;
        let bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        // a failed write only means the server already closed the connection
        let _ = stream.write_all(&bytes);
    }
    // A question compressed into the header (found by fuzzing): FORMERR without the question,
    // over TCP as over UDP.
    {
        use std::io::{Read, Write};
        let query = [
            0x11, 0x11, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 0x02, 0x0c, 0x00, 0x01, 0x00,
            0x01,
        ];
        let mut stream = std::net::TcpStream::connect(server.addr).unwrap();
        stream
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let mut framed = (query.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&query);
        stream.write_all(&framed).unwrap();
        let mut len = [0u8; 2];
        stream.read_exact(&mut len).unwrap();
        let mut answer = vec![0u8; u16::from_be_bytes(len) as usize];
        stream.read_exact(&mut answer).unwrap();
        assert_eq!(&answer[..2], &query[..2], "the id");
        assert_eq!(answer[3] & 0x0f, 1, "FORMERR: {answer:?}");
        assert_eq!(&answer[4..6], &[0, 0], "no question echoed: {answer:?}");
    }
    for args in [
        &["web.service.flotilla.internal", "A"][..],
        &["web.service.flotilla.internal", "A", "+tcp"],
    ] {
        let dig = server.dig(args);
        assert_eq!(
            (dig.status.as_str(), dig.answer.len()),
            ("NOERROR", 2),
            "{}",
            dig.raw
        );
    }
}

#[test]
fn dig_sees_units_stop_and_machines_go() {
    let server = local();
    let mut data = cluster();
    // web@1 stops
    data.services.retain(|s| s.unit != "web@1.service");
    server.publish(&data);
    let srv = |server: &DnsServer| server.dig(&["_web._tcp.service.flotilla.internal", "SRV"]);
    wait_for(DEADLINE, "web@1 leaves the SRV answer", || {
        let dig = srv(&server);
        (dig.answer.len() == 1 && dig.answer[0].ends_with("node2.node.flotilla.internal."))
            .then_some(())
            .ok_or(Some(dig.raw))
    })
    .unwrap();
    // node2 is lost: its unit goes with it, and the service name no longer exists
    data.machines[1].up = false;
    server.publish(&data);
    wait_for(DEADLINE, "web leaves the zone with node2", || {
        let dig = server.dig(&["web.service.flotilla.internal", "A"]);
        (dig.status == "NXDOMAIN")
            .then_some(())
            .ok_or(Some(dig.raw))
    })
    .unwrap();
    let node2 = server.dig(&["node2.node.flotilla.internal", "A"]);
    assert_eq!(node2.status, "NXDOMAIN", "{}", node2.raw);
}

#[test]
fn dig_from_every_testbed_machine() {
    let tb = Testbed::up(Options::new(2)).unwrap();
    let host = tb.host_addr();
    let machines: Vec<MachineRecord> = tb.nodes().map(|n| machine(&n.name(), n.addr())).collect();
    let mut data = ZoneData {
        services: vec![web("web@1.service", &machines[0].name)],
        machines,
    };
    let server = DnsServer::start(IpAddr::V4(host), 53, &data);
    let at = format!("@{host}");
    let dig = |node: &flotilla_tests::testbed::Node<'_>, args: &[&str]| {
        let mut all = vec![at.as_str(), "+tries=1", "+time=5"];
        all.extend_from_slice(args);
        all.insert(0, "dig");
        let out = node.exec(&all).unwrap();
        assert!(
            out.status.success(),
            "dig {args:?} in {}: {out:?}",
            node.name()
        );
        Dig::parse(&out.stdout)
    };
    let target = |dig: &Dig| {
        dig.answer
            .iter()
            .map(|r| r.rsplit(' ').next().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    for node in tb.nodes() {
        let name = format!("{}.node.flotilla.internal", node.name());
        let a = dig(&node, &[&name, "A"]);
        assert_eq!(target(&a), [node.addr().to_string()], "{}", a.raw);
        let txt = dig(&node, &[&name, "TXT", "+tcp"]);
        assert_eq!(txt.answer.len(), 2, "{}", txt.raw);
        let srv = dig(&node, &["_web._tcp.service.flotilla.internal", "SRV"]);
        assert_eq!(
            target(&srv),
            ["node1.node.flotilla.internal."],
            "{}",
            srv.raw
        );
        assert_eq!(srv.additional.len(), 1, "{}", srv.raw);
        let nx = dig(&node, &["nosuch.service.flotilla.internal", "A"]);
        assert_eq!(nx.status, "NXDOMAIN", "{}", nx.raw);
    }
    // web@1 moves to node2: both machines see it there
    data.services = vec![web("web@1.service", &data.machines[1].name)];
    server.publish(&data);
    let node2 = format!("{}.node.flotilla.internal.", data.machines[1].name);
    for node in tb.nodes() {
        wait_for(DEADLINE, "web moves to node2", || {
            let srv = dig(&node, &["_web._tcp.service.flotilla.internal", "SRV"]);
            (target(&srv) == [node2.clone()])
                .then_some(())
                .ok_or(Some(srv.raw))
        })
        .unwrap();
    }
    drop(server);
}

/// `dig @SERVER +tries=1 +time=5 ARGS` inside `node`.
fn dig_in(node: &flotilla_tests::testbed::Node<'_>, server: &str, args: &[&str]) -> Dig {
    let at = format!("@{server}");
    let mut all = vec!["dig", at.as_str(), "+tries=1", "+time=5"];
    all.extend_from_slice(args);
    let out = node.exec(&all).unwrap();
    assert!(
        out.status.success(),
        "dig {args:?} in {}: {out:?}",
        node.name()
    );
    Dig::parse(&out.stdout)
}

/// The last field of every answer record (an address, an SRV target, a TXT string).
fn last_fields(records: &[String]) -> Vec<String> {
    records
        .iter()
        .map(|r| r.rsplit(' ').next().unwrap().to_owned())
        .collect()
}

const API_UNIT: &str = "[Unit]\nDescription=api, advertised in DNS\n\n[Service]\n\
                        ExecStart=/usr/bin/sleep infinity\n\n[X-Flotilla]\nAdvertise=8080\n";
const WEB_TEMPLATE: &str = "[Unit]\nDescription=web %i, advertised in DNS\n\n[Service]\n\
                            ExecStart=/usr/bin/sleep infinity\n\n[X-Flotilla]\nAdvertise=80\n\
                            Advertise=metrics:9100/udp\n";

/// The machine whose systemd runs `unit`, among `candidates`.
fn runner<'t>(
    candidates: impl Iterator<Item = flotilla_tests::testbed::Node<'t>>,
    unit: &str,
) -> flotilla_tests::testbed::Node<'t> {
    let running: Vec<_> = candidates
        .filter(|n| {
            n.stdout(&["systemctl", "is-active", unit])
                .is_ok_and(|s| s.trim() == "active")
        })
        .collect();
    assert_eq!(
        running.len(),
        1,
        "{unit} runs on {} machines",
        running.len()
    );
    running.into_iter().next().unwrap()
}

/// Waits until `node`'s own agent answers `name SRV` with exactly `targets` (`host:port`).
fn wait_srv(node: &flotilla_tests::testbed::Node<'_>, name: &str, targets: &[String]) {
    let mut want: Vec<String> = targets.to_vec();
    want.sort();
    wait_for(
        DEADLINE_AGENT,
        &format!("{name} SRV in {}", node.name()),
        || {
            let dig = dig_in(node, "127.0.0.1", &[name, "SRV"]);
            let mut got: Vec<String> = dig
                .answer
                .iter()
                .map(|r| {
                    let f: Vec<&str> = r.split(' ').collect();
                    format!("{}:{}", f[f.len() - 1], f[f.len() - 2])
                })
                .collect();
            got.sort();
            (dig.status == "NOERROR" && got == want)
                .then_some(())
                .ok_or(Some(dig.raw))
        },
    )
    .unwrap();
}

/// How long the agents may take to place, start, report and move units.
const DEADLINE_AGENT: Duration = Duration::from_secs(60);

#[test]
fn agents_serve_units_and_machines_and_follow_them() {
    use crate::units::{flotctl, text, wait_machines_up, write};

    let tb = Testbed::up(Options::new(3).agent(Options::default_agent())).unwrap();
    for n in tb.nodes() {
        n.wait_active("flotillad.service", DEADLINE_AGENT).unwrap();
    }
    let n1 = tb.node(1);
    wait_machines_up(&n1, 3);

    // A plain unit and a template instance, both advertised.
    write(&n1, "/tmp/api.service", API_UNIT);
    write(&n1, "/tmp/web@.service", WEB_TEMPLATE);
    let out = flotctl(&n1, &["submit", "/tmp/web@.service"]);
    assert!(out.status.success(), "submit: {}", text(&out));
    for unit in ["/tmp/api.service", "web@1.service"] {
        let out = flotctl(&n1, &["start", "--block-timeout", "60", unit]);
        assert!(out.status.success(), "start {unit}: {}", text(&out));
    }
    let api = runner(tb.nodes(), "api.service");
    let web = runner(tb.nodes(), "web@1.service");
    let host =
        |n: &flotilla_tests::testbed::Node<'_>| format!("{}.node.flotilla.internal.", n.name());

    for node in tb.nodes() {
        // every machine's own agent learns both units (replicated reports)
        wait_srv(
            &node,
            "_api._tcp.service.flotilla.internal",
            &[format!("{}:8080", host(&api))],
        );
        wait_srv(
            &node,
            "_web._tcp.service.flotilla.internal",
            &[format!("{}:80", host(&web))],
        );
        let dig = |args: &[&str]| dig_in(&node, "127.0.0.1", args);

        // A for the service: the address of the machine that runs it
        let a = dig(&["api.service.flotilla.internal", "A"]);
        assert_eq!(
            (a.status.as_str(), last_fields(&a.answer)),
            ("NOERROR", vec![api.addr().to_string()]),
            "{}",
            a.raw
        );
        assert!(a.flags.split(' ').any(|f| f == "aa"), "{}", a.raw);
        let a = dig(&["web.service.flotilla.internal", "A"]);
        assert_eq!(
            last_fields(&a.answer),
            [web.addr().to_string()],
            "{}",
            a.raw
        );

        // SRV with the target's A in the additional section, over UDP and TCP alike
        for transport in ["+notcp", "+tcp"] {
            let srv = dig(&["_api._tcp.service.flotilla.internal", "SRV", transport]);
            assert_eq!(
                srv.answer,
                [format!(
                    "_api._tcp.service.flotilla.internal. 1 IN SRV 1 1 8080 {}",
                    host(&api)
                )],
                "{transport}: {}",
                srv.raw
            );
            assert_eq!(
                srv.additional,
                [format!("{} 1 IN A {}", host(&api), api.addr())],
                "{transport}: {}",
                srv.raw
            );
        }
        // a named port of the template: its own service name (flotilla-units' Advertise)
        let metrics = dig(&["_metrics._udp.service.flotilla.internal", "SRV"]);
        assert_eq!(
            metrics.answer,
            [format!(
                "_metrics._udp.service.flotilla.internal. 1 IN SRV 1 1 9100 {}",
                host(&web)
            )],
            "{}",
            metrics.raw
        );

        // every machine: A and TXT metadata, asked of this machine's agent
        for other in tb.nodes() {
            let name = host(&other);
            let a = dig(&[&name, "A", "+tcp"]);
            assert_eq!(
                last_fields(&a.answer),
                [other.addr().to_string()],
                "{}",
                a.raw
            );
            let txt = dig(&[&name, "TXT"]);
            assert_eq!(
                last_fields(&txt.answer),
                [format!("\"node={}\"", other.name())],
                "{}",
                txt.raw
            );
        }
        let ns = dig(&["flotilla.internal", "NS"]);
        assert_eq!(ns.answer.len(), 3, "{}", ns.raw);

        // NXDOMAIN for an unknown name, NODATA for a type a name lacks, others refused
        let nx = dig(&["nosuch.service.flotilla.internal", "A"]);
        assert_eq!(
            (nx.status.as_str(), nx.answer.len()),
            ("NXDOMAIN", 0),
            "{}",
            nx.raw
        );
        assert!(nx.authority[0].contains(" IN SOA "), "{}", nx.raw);
        let nodata = dig(&["api.service.flotilla.internal", "AAAA"]);
        assert_eq!(
            (nodata.status.as_str(), nodata.answer.len()),
            ("NOERROR", 0),
            "{}",
            nodata.raw
        );
        assert!(nodata.authority[0].contains(" IN SOA "), "{}", nodata.raw);
        let refused = dig(&["example.com", "A"]);
        assert_eq!(refused.status, "REFUSED", "{}", refused.raw);

        // the agent also answers other machines on its bridge address
        let from_n1 = dig_in(
            &n1,
            &node.addr().to_string(),
            &["api.service.flotilla.internal", "A"],
        );
        assert_eq!(
            last_fields(&from_n1.answer),
            [api.addr().to_string()],
            "{}",
            from_n1.raw
        );
    }

    // glibc's resolver (getent, as any program) finds the services through the agent. The
    // machines share the host's root file system, which has no systemd-resolved (so the
    // packaged resolved drop-in is not exercised here): resolv.conf is pointed at the agent
    // instead, in a mount namespace of this one command.
    for node in tb.nodes() {
        write(
            &node,
            "/var/tmp/resolv.conf",
            "nameserver 127.0.0.1\noptions attempts:1 timeout:5\n",
        );
        let out = node
            .exec(&[
                "unshare",
                "--mount",
                "sh",
                "-c",
                "mount --bind /var/tmp/resolv.conf /etc/resolv.conf && \
                 getent hosts api.service.flotilla.internal web.service.flotilla.internal",
            ])
            .unwrap();
        let shown = text(&out);
        let found: Vec<Vec<&str>> = shown
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        let api_addr = api.addr().to_string();
        let web_addr = web.addr().to_string();
        assert_eq!(
            found,
            [
                vec![api_addr.as_str(), "api.service.flotilla.internal"],
                vec![web_addr.as_str(), "web.service.flotilla.internal"],
            ],
            "getent in {}: {shown}",
            node.name()
        );
    }

    // A stopped unit leaves DNS on every machine (its service had one unit: the name goes).
    let out = flotctl(&n1, &["stop", "--block-timeout", "60", "api.service"]);
    assert!(out.status.success(), "stop: {}", text(&out));
    for node in tb.nodes() {
        wait_for(DEADLINE_AGENT, "api leaves dns", || {
            let dig = dig_in(&node, "127.0.0.1", &["api.service.flotilla.internal", "A"]);
            (dig.status == "NXDOMAIN")
                .then_some(())
                .ok_or(Some(dig.raw))
        })
        .unwrap();
        let srv = dig_in(
            &node,
            "127.0.0.1",
            &["_api._tcp.service.flotilla.internal", "SRV"],
        );
        assert_eq!(srv.status, "NXDOMAIN", "{}", srv.raw);
    }

    // The machine that runs web@1 goes away: its records go, and web@1's follow the unit.
    let lost = web.name();
    web.power_off().unwrap();
    let survivors: Vec<_> = tb.nodes().filter(|n| n.name() != lost).collect();
    let lost_host = format!("{lost}.node.flotilla.internal");
    for node in &survivors {
        wait_for(DEADLINE_AGENT, "web@1 moves in dns", || {
            let dig = dig_in(
                node,
                "127.0.0.1",
                &["_web._tcp.service.flotilla.internal", "SRV"],
            );
            let targets = last_fields(&dig.answer);
            (targets.len() == 1 && targets[0] != format!("{lost_host}."))
                .then_some(())
                .ok_or(Some(dig.raw))
        })
        .unwrap();
        let gone = dig_in(node, "127.0.0.1", &[&lost_host, "A"]);
        assert_eq!(gone.status, "NXDOMAIN", "{}", gone.raw);
    }
    let moved = runner(survivors.iter().cloned(), "web@1.service");
    for node in &survivors {
        wait_srv(
            node,
            "_web._tcp.service.flotilla.internal",
            &[format!("{}:80", host(&moved))],
        );
        let a = dig_in(node, "127.0.0.1", &["web.service.flotilla.internal", "A"]);
        assert_eq!(
            last_fields(&a.answer),
            [moved.addr().to_string()],
            "{}",
            a.raw
        );
        let ns = dig_in(node, "127.0.0.1", &["flotilla.internal", "NS"]);
        assert_eq!(ns.answer.len(), 2, "{}", ns.raw);
    }
}

#[test]
fn loopback_agents_each_serve_dns_on_their_own_address() {
    let cluster = flotilla_tests::agents::Cluster::start(3).expect("3 agents start");
    let ips: Vec<String> = cluster
        .agents()
        .iter()
        .map(|a| a.peer_addr().rsplit_once(':').unwrap().0.to_owned())
        .collect();
    for ip in &ips {
        for (agent, addr) in cluster.agents().iter().zip(&ips) {
            let name = format!("{}.node.flotilla.internal", agent.name());
            wait_for(DEADLINE, &format!("{name} from the agent at {ip}"), || {
                let out = std::process::Command::new("dig")
                    .args([&format!("@{ip}"), "+tries=1", "+time=5", &name, "A"])
                    .output()
                    .unwrap();
                let dig = Dig::parse(&out.stdout);
                (dig.answer == [format!("{name}. 1 IN A {addr}")])
                    .then_some(())
                    .ok_or(Some(dig.raw))
            })
            .unwrap();
        }
    }
}

#[test]
fn names_outside_the_zone_go_to_the_upstream_resolvers() {
    // The upstream: another server on loopback, serving its own zone.
    let upstream = DnsServer::start_with(
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        0,
        &cluster(),
        ZoneConfig::new("upstream.test").unwrap(),
        Vec::new(),
    );
    // A resolver that never answers, asked first: the next one is asked after its timeout.
    let silent = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let silent_tcp = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let server = DnsServer::start_with(
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        0,
        &cluster(),
        ZoneConfig::default(),
        vec![silent.local_addr().unwrap(), upstream.addr],
    );
    for transport in ["+notcp", "+tcp"] {
        let dig = server.dig(&["web.service.UPSTREAM.test", "A", transport]);
        // (owner names keep the question's case or not, as the upstream chose)
        assert_eq!(
            dig.text().to_lowercase(),
            "noerror [qr aa rd]\n\
             answer: web.service.upstream.test. 1 in a 10.0.0.1\n\
             answer: web.service.upstream.test. 1 in a 10.0.0.2\n",
            "{transport}: {}",
            dig.raw
        );
        assert!(
            dig.raw.contains(";web.service.UPSTREAM.test."),
            "the question comes back as asked:\n{}",
            dig.raw
        );
        // the upstream's own answers are relayed as they are: NXDOMAIN, REFUSED
        let nx = server.dig(&["nosuch.upstream.test", "A", transport]);
        assert_eq!(nx.status, "NXDOMAIN", "{transport}: {}", nx.raw);
        let refused = server.dig(&["example.com", "A", transport]);
        assert_eq!(refused.status, "REFUSED", "{transport}: {}", refused.raw);
        // the zone itself is still answered here
        let local = server.dig(&["web.service.flotilla.internal", "A", transport]);
        assert_eq!(local.answer.len(), 2, "{transport}: {}", local.raw);
    }
    // No upstream answers: SERVFAIL.
    let lonely = DnsServer::start_with(
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        0,
        &cluster(),
        ZoneConfig::default(),
        vec![silent.local_addr().unwrap()],
    );
    let failed = lonely.dig(&["web.service.upstream.test", "A"]);
    assert_eq!(failed.status, "SERVFAIL", "{}", failed.raw);
    drop(silent_tcp);
}
