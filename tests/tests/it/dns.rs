//! Service discovery over DNS, asked with the real `dig`: the server runs in this process on
//! loopback (port 0), and on a testbed bridge where `dig` runs inside every machine.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use flotilla_dns::{
    Advertised, MachineRecord, Proto, ServiceInstance, Zone, ZoneConfig, ZoneData, serve,
};
use flotilla_tests::testbed::{Options, Testbed, wait_for};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

const DEADLINE: Duration = Duration::from_secs(10);

/// A flotilla-dns server on its own runtime thread, stopped on drop.
struct DnsServer {
    addr: SocketAddr,
    zone: watch::Sender<Arc<Zone>>,
    cancel: CancellationToken,
    thread: Option<JoinHandle<()>>,
}

impl DnsServer {
    /// Serves `data` on UDP and TCP at `ip:port`; port 0 takes a free port (the same for both).
    fn start(ip: IpAddr, port: u16, data: &ZoneData) -> DnsServer {
        let (udp, tcp) = bind_pair(ip, port);
        let addr = udp.local_addr().unwrap();
        let (tx, rx) = watch::channel(Arc::new(Zone::build(data, &ZoneConfig::default())));
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
                serve(rx, vec![udp], vec![tcp], token).await.unwrap();
            });
        });
        DnsServer {
            addr,
            zone: tx,
            cancel,
            thread: Some(thread),
        }
    }

    fn publish(&self, data: &ZoneData) {
        let zone = Zone::build(data, &ZoneConfig::default());
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
