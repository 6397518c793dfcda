//! Tests of the pure core: answers rendered as dig-like text, and malformed input.

use std::collections::BTreeMap;
use std::str::FromStr;

use expect_test::{Expect, expect};
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
use hickory_proto::rr::{DNSClass, Name, RecordType};

use crate::{
    Advertised, MachineRecord, Proto, ServiceInstance, Transport, Zone, ZoneConfig, ZoneData,
    render, service_name,
};

fn machine(name: &str, addr: &str, up: bool) -> MachineRecord {
    MachineRecord {
        name: name.into(),
        addrs: vec![addr.parse().unwrap()],
        metadata: BTreeMap::from([("region".into(), "east".into())]),
        up,
    }
}

fn instance(
    service: &str,
    unit: &str,
    machine: &str,
    ports: &[(Option<&str>, u16, Proto)],
) -> ServiceInstance {
    ServiceInstance {
        service: service.into(),
        unit: unit.into(),
        machine: machine.into(),
        ports: ports
            .iter()
            .map(|(name, port, proto)| Advertised {
                name: name.map(Into::into),
                port: *port,
                proto: *proto,
            })
            .collect(),
    }
}

fn data() -> ZoneData {
    let mut node2 = machine("node2", "10.0.0.2", true);
    node2.addrs.push("fd00::2".parse().unwrap());
    ZoneData {
        machines: vec![
            machine("node1", "10.0.0.1", true),
            node2,
            machine("node3", "10.0.0.3", false),
        ],
        services: vec![
            instance(
                "web",
                "web@1.service",
                "node1",
                &[
                    (None, 8080, Proto::Tcp),
                    (Some("metrics"), 9100, Proto::Tcp),
                ],
            ),
            instance("web", "web@2.service", "node2", &[(None, 8080, Proto::Tcp)]),
            instance("web", "web@3.service", "node3", &[(None, 8080, Proto::Tcp)]),
            instance("dns", "dns.service", "node2", &[(None, 53, Proto::Udp)]),
        ],
    }
}

fn zone() -> Zone {
    Zone::build(&data(), &ZoneConfig::default())
}

fn query(name: &str, rtype: RecordType, edns: Option<u16>) -> Vec<u8> {
    let mut message = Message::new(0x1234, MessageType::Query, OpCode::Query);
    message.add_query(Query::query(Name::from_str(name).unwrap(), rtype));
    if let Some(size) = edns {
        let mut e = Edns::new();
        e.set_max_payload(size);
        message.set_edns(e);
    }
    message.to_vec().unwrap()
}

fn check(zone: &Zone, name: &str, rtype: RecordType, expect: Expect) {
    let response = zone
        .respond(&query(name, rtype, None), Transport::Udp, 0)
        .unwrap();
    expect.assert_eq(&render(&response));
}

#[test]
fn service_a_lists_the_up_machines_of_active_units() {
    check(
        &zone(),
        "web.service.flotilla.internal.",
        RecordType::A,
        expect![[r#"
            status: No Error (0) flags: AA answer: 2 authority: 0 additional: 0
            ;; ANSWER
            web.service.flotilla.internal. 1 IN A 10.0.0.1
            web.service.flotilla.internal. 1 IN A 10.0.0.2
        "#]],
    );
    check(
        &zone(),
        "web.service.flotilla.internal.",
        RecordType::AAAA,
        expect![[r#"
            status: No Error (0) flags: AA answer: 1 authority: 0 additional: 0
            ;; ANSWER
            web.service.flotilla.internal. 1 IN AAAA fd00::2
        "#]],
    );
}

#[test]
fn srv_targets_nodes_with_addresses_in_additional() {
    check(
        &zone(),
        "_web._tcp.service.flotilla.internal.",
        RecordType::SRV,
        expect![[r#"
            status: No Error (0) flags: AA answer: 2 authority: 0 additional: 3
            ;; ANSWER
            _web._tcp.service.flotilla.internal. 1 IN SRV 1 1 8080 node1.node.flotilla.internal.
            _web._tcp.service.flotilla.internal. 1 IN SRV 1 1 8080 node2.node.flotilla.internal.
            ;; ADDITIONAL
            node1.node.flotilla.internal. 1 IN A 10.0.0.1
            node2.node.flotilla.internal. 1 IN A 10.0.0.2
            node2.node.flotilla.internal. 1 IN AAAA fd00::2
        "#]],
    );
    check(
        &zone(),
        "_metrics._tcp.web.service.flotilla.internal.",
        RecordType::SRV,
        expect![[r#"
            status: No Error (0) flags: AA answer: 1 authority: 0 additional: 1
            ;; ANSWER
            _metrics._tcp.web.service.flotilla.internal. 1 IN SRV 1 1 9100 node1.node.flotilla.internal.
            ;; ADDITIONAL
            node1.node.flotilla.internal. 1 IN A 10.0.0.1
        "#]],
    );
    check(
        &zone(),
        "_dns._udp.service.flotilla.internal.",
        RecordType::SRV,
        expect![[r#"
            status: No Error (0) flags: AA answer: 1 authority: 0 additional: 2
            ;; ANSWER
            _dns._udp.service.flotilla.internal. 1 IN SRV 1 1 53 node2.node.flotilla.internal.
            ;; ADDITIONAL
            node2.node.flotilla.internal. 1 IN A 10.0.0.2
            node2.node.flotilla.internal. 1 IN AAAA fd00::2
        "#]],
    );
}

#[test]
fn node_has_addresses_and_metadata() {
    check(
        &zone(),
        "node1.node.flotilla.internal.",
        RecordType::A,
        expect![[r#"
            status: No Error (0) flags: AA answer: 1 authority: 0 additional: 0
            ;; ANSWER
            node1.node.flotilla.internal. 1 IN A 10.0.0.1
        "#]],
    );
    check(
        &zone(),
        "node1.node.flotilla.internal.",
        RecordType::TXT,
        expect![[r#"
            status: No Error (0) flags: AA answer: 1 authority: 0 additional: 0
            ;; ANSWER
            node1.node.flotilla.internal. 1 IN TXT region=east
        "#]],
    );
}

#[test]
fn apex_has_soa_and_ns() {
    let zone = zone();
    let serial = zone.serial();
    let response = zone
        .respond(
            &query("flotilla.internal.", RecordType::SOA, None),
            Transport::Udp,
            0,
        )
        .unwrap();
    let text = render(&response).replace(&serial.to_string(), "SERIAL");
    expect![[r#"
        status: No Error (0) flags: AA answer: 1 authority: 0 additional: 0
        ;; ANSWER
        flotilla.internal. 1 IN SOA node1.node.flotilla.internal. hostmaster.flotilla.internal. SERIAL 3600 600 86400 1
    "#]].assert_eq(&text);
    check(
        &zone,
        "flotilla.internal.",
        RecordType::NS,
        expect![[r#"
            status: No Error (0) flags: AA answer: 2 authority: 0 additional: 3
            ;; ANSWER
            flotilla.internal. 1 IN NS node1.node.flotilla.internal.
            flotilla.internal. 1 IN NS node2.node.flotilla.internal.
            ;; ADDITIONAL
            node1.node.flotilla.internal. 1 IN A 10.0.0.1
            node2.node.flotilla.internal. 1 IN A 10.0.0.2
            node2.node.flotilla.internal. 1 IN AAAA fd00::2
        "#]],
    );
}

#[test]
fn nxdomain_differs_from_nodata() {
    let zone = zone();
    let strip = |name: &str, rtype| {
        let response = zone
            .respond(&query(name, rtype, None), Transport::Udp, 0)
            .unwrap();
        render(&response).lines().next().unwrap().to_owned()
    };
    expect!["status: Non-Existent Domain (3) flags: AA answer: 0 authority: 1 additional: 0"]
        .assert_eq(&strip("nope.service.flotilla.internal.", RecordType::A));
    // a lost machine and its units are gone
    expect!["status: Non-Existent Domain (3) flags: AA answer: 0 authority: 1 additional: 0"]
        .assert_eq(&strip("node3.node.flotilla.internal.", RecordType::A));
    // a name that exists with other types, and empty non-terminals
    expect!["status: No Error (0) flags: AA answer: 0 authority: 1 additional: 0"]
        .assert_eq(&strip("web.service.flotilla.internal.", RecordType::MX));
    expect!["status: No Error (0) flags: AA answer: 0 authority: 1 additional: 0"]
        .assert_eq(&strip("service.flotilla.internal.", RecordType::A));
    expect!["status: No Error (0) flags: AA answer: 0 authority: 1 additional: 0"]
        .assert_eq(&strip("_tcp.service.flotilla.internal.", RecordType::A));
    // outside the zone
    expect!["status: Query Refused (5) flags:  answer: 0 authority: 0 additional: 0"]
        .assert_eq(&strip("example.com.", RecordType::A));
}

#[test]
fn names_are_case_insensitive_and_the_question_keeps_its_case() {
    let mut raw = query("web.service.flotilla.internal.", RecordType::A, None);
    // the question starts after the 12-byte header with the length byte of "web"
    raw[13..16].copy_from_slice(b"WeB");
    raw[17..24].copy_from_slice(b"SeRvIcE");
    let response = zone().respond(&raw, Transport::Udp, 0).unwrap();
    expect![[r#"
        status: No Error (0) flags: AA answer: 2 authority: 0 additional: 0
        ;; ANSWER
        WeB.SeRvIcE.flotilla.internal. 1 IN A 10.0.0.1
        WeB.SeRvIcE.flotilla.internal. 1 IN A 10.0.0.2
    "#]]
    .assert_eq(&render(&response));
    let message = Message::from_vec(&response).unwrap();
    assert_eq!(
        message.queries[0].name().to_string(),
        "WeB.SeRvIcE.flotilla.internal."
    );
}

#[test]
fn answers_are_shuffled_by_seed() {
    let zone = zone();
    let raw = query("web.service.flotilla.internal.", RecordType::A, None);
    let orders: std::collections::BTreeSet<String> = (0..16)
        .map(|seed| render(&zone.respond(&raw, Transport::Udp, seed).unwrap()))
        .collect();
    assert_eq!(
        orders.len(),
        2,
        "both orders of two records appear: {orders:?}"
    );
}

fn big_zone() -> Zone {
    let machines = (1..=60)
        .map(|i| machine(&format!("machine{i:02}"), &format!("10.0.1.{i}"), true))
        .collect();
    let services = (1..=60)
        .map(|i| {
            instance(
                "big",
                &format!("big@{i}.service"),
                &format!("machine{i:02}"),
                &[(None, 80, Proto::Tcp)],
            )
        })
        .collect();
    Zone::build(&ZoneData { machines, services }, &ZoneConfig::default())
}

#[test]
fn udp_truncates_with_tc_and_tcp_gets_everything() {
    let zone = big_zone();
    let header = |raw: &[u8], transport| {
        let response = zone.respond(raw, transport, 0).unwrap();
        let message = Message::from_vec(&response).unwrap();
        (
            response.len() <= 512 || transport == Transport::Tcp,
            message.metadata.truncation,
            message.answers.len(),
        )
    };
    let plain = query(
        "_big._tcp.service.flotilla.internal.",
        RecordType::SRV,
        None,
    );
    let (fits, tc, _) = header(&plain, Transport::Udp);
    assert!(fits && tc, "udp without edns: at most 512 bytes, with tc");
    let (_, tc, answers) = header(&plain, Transport::Tcp);
    assert!(
        !tc && answers == 60,
        "tcp: all 60 answers, got {answers} tc={tc}"
    );
    let edns = query("big.service.flotilla.internal.", RecordType::A, Some(4096));
    let response = zone.respond(&edns, Transport::Udp, 0).unwrap();
    let message = Message::from_vec(&response).unwrap();
    assert!(!message.metadata.truncation && message.answers.len() == 60);
    assert_eq!(message.edns.unwrap().max_payload(), 1232);
}

#[test]
fn edns_is_echoed_and_bad_versions_refused() {
    check(
        &zone(),
        "node2.node.flotilla.internal.",
        RecordType::AAAA,
        expect![[r#"
            status: No Error (0) flags: AA answer: 1 authority: 0 additional: 0
            ;; ANSWER
            node2.node.flotilla.internal. 1 IN AAAA fd00::2
        "#]],
    );
    let raw = query(
        "node2.node.flotilla.internal.",
        RecordType::AAAA,
        Some(1232),
    );
    expect![[r#"
        status: No Error (0) flags: AA answer: 1 authority: 0 additional: 0
        edns: version 0 udp 1232
        ;; ANSWER
        node2.node.flotilla.internal. 1 IN AAAA fd00::2
    "#]]
    .assert_eq(&render(&zone().respond(&raw, Transport::Udp, 0).unwrap()));
    let mut message = Message::new(7, MessageType::Query, OpCode::Query);
    message.add_query(Query::query(
        Name::from_str("flotilla.internal.").unwrap(),
        RecordType::SOA,
    ));
    let mut edns = Edns::new();
    edns.set_version(1);
    message.set_edns(edns);
    let response = zone()
        .respond(&message.to_vec().unwrap(), Transport::Udp, 0)
        .unwrap();
    // 16 is BADVERS in a response with OPT (hickory names it after TSIG's BADSIG)
    expect!["status: TSIG Failure (16) flags:  answer: 0 authority: 0 additional: 0"]
        .assert_eq(render(&response).lines().next().unwrap());
}

#[test]
fn other_classes_and_opcodes_are_refused() {
    let mut message = Message::new(7, MessageType::Query, OpCode::Query);
    let mut q = Query::query(
        Name::from_str("flotilla.internal.").unwrap(),
        RecordType::SOA,
    );
    q.set_query_class(DNSClass::CH);
    message.add_query(q);
    let response = zone()
        .respond(&message.to_vec().unwrap(), Transport::Udp, 0)
        .unwrap();
    expect!["status: Query Refused (5) flags:  answer: 0 authority: 0 additional: 0"]
        .assert_eq(render(&response).lines().next().unwrap());
    let mut message = Message::new(7, MessageType::Query, OpCode::Update);
    message.add_query(Query::query(
        Name::from_str("flotilla.internal.").unwrap(),
        RecordType::SOA,
    ));
    let response = zone()
        .respond(&message.to_vec().unwrap(), Transport::Udp, 0)
        .unwrap();
    expect!["status: Not Implemented (4) flags:  answer: 0 authority: 0 additional: 0"]
        .assert_eq(render(&response).lines().next().unwrap());
}

#[test]
fn malformed_packets_get_formerr_or_nothing_and_never_panic() {
    let zone = big_zone();
    // a header with a truncated question: FORMERR with the request's id
    let raw = query("big.service.flotilla.internal.", RecordType::A, Some(1232));
    let response = zone.respond(&raw[..20], Transport::Udp, 0).unwrap();
    expect![[r#"
        status: Form Error (1) flags:  answer: 0 authority: 0 additional: 0
    "#]]
    .assert_eq(&render(&response));
    assert_eq!(&response[..2], &raw[..2]);
    // shorter than a header: nothing
    assert!(zone.respond(&raw[..11], Transport::Udp, 0).is_none());
    // every truncation of real queries, and random bytes (xorshift: reproducible)
    let queries = [
        raw.clone(),
        query(
            "_big._tcp.service.flotilla.internal.",
            RecordType::SRV,
            None,
        ),
        query("flotilla.internal.", RecordType::ANY, Some(512)),
    ];
    for q in &queries {
        for len in 0..q.len() {
            let _ = zone.respond(&q[..len], Transport::Udp, len as u64);
        }
    }
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for round in 0..20_000 {
        let len = (next() % 300) as usize;
        let mut bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        if round % 2 == 0 && len > 12 {
            // keep a plausible header so that decoding goes deeper
            bytes[2] = 0x01;
            bytes[4..12].copy_from_slice(&[0, 1, 0, 0, 0, 0, 0, 1]);
        }
        let _ = zone.respond(&bytes, Transport::Udp, round);
        let _ = zone.respond(&bytes, Transport::Tcp, round);
    }
}

#[test]
fn template_instances_belong_to_the_template_prefix() {
    assert_eq!(service_name("web@1.service"), Some("web"));
    assert_eq!(service_name("web@.service"), Some("web"));
    assert_eq!(service_name("db.service"), Some("db"));
    assert_eq!(service_name("db"), Some("db"));
    assert_eq!(service_name("@x.service"), None);
    assert_eq!(service_name(".service"), None);
}

#[test]
fn invalid_names_are_left_out_and_reported() {
    let mut data = data();
    data.machines.push(machine("bad name", "10.0.0.9", true));
    data.services
        .push(instance("bad.svc", "bad.svc.service", "node1", &[]));
    let zone = Zone::build(&data, &ZoneConfig::default());
    expect![[r#"
        [
            "machine \"bad name\" is not a valid DNS label, leaving it out of the zone",
            "service \"bad.svc\" of unit bad.svc.service is not a valid DNS label, leaving it out of the zone",
        ]
    "#]].assert_debug_eq(&zone.problems());
    assert!(ZoneConfig::new("bad domain").is_err());
    assert!(ZoneConfig::new("").is_err());
    assert_eq!(
        ZoneConfig::new("Example.COM.")
            .unwrap()
            .domain()
            .to_string(),
        "example.com."
    );
}

#[test]
fn the_fast_path_answers_as_the_general_path() {
    let types = [
        RecordType::A,
        RecordType::AAAA,
        RecordType::SRV,
        RecordType::TXT,
        RecordType::NS,
        RecordType::SOA,
        RecordType::MX,
        RecordType::ANY,
    ];
    for zone in [zone(), big_zone()] {
        let mut names: std::collections::BTreeSet<String> =
            zone.records().iter().map(|r| r.name.to_string()).collect();
        names.insert("service.flotilla.internal.".into());
        names.insert("nosuch.flotilla.internal.".into());
        names.insert("example.com.".into());
        let mut fast = 0;
        for name in &names {
            for rtype in types {
                for edns in [None, Some(100), Some(512), Some(1232), Some(4096)] {
                    let mut raw = query(name, rtype, edns);
                    for mixed in [false, true] {
                        if mixed {
                            // upper-case every other letter of the question
                            for b in raw[13..].iter_mut().step_by(2).take(name.len() / 2) {
                                *b = b.to_ascii_uppercase();
                            }
                        }
                        for transport in [Transport::Udp, Transport::Tcp] {
                            for seed in 0..3 {
                                let general = zone.respond_general(&raw, transport, seed).unwrap();
                                let Some(answer) =
                                    zone.wire.respond(&raw, transport == Transport::Udp, seed)
                                else {
                                    continue;
                                };
                                fast += 1;
                                assert_eq!(
                                    render(&answer).to_lowercase(),
                                    render(&general).to_lowercase(),
                                    "{name} {rtype} edns {edns:?} {transport:?} seed {seed}"
                                );
                                let question = |bytes: &[u8]| {
                                    Message::from_vec(bytes).unwrap().queries[0]
                                        .name()
                                        .to_string()
                                };
                                assert_eq!(question(&answer), question(&general));
                            }
                        }
                    }
                }
            }
        }
        assert!(fast > 1000, "the fast path answered only {fast} queries");
    }
}

#[test]
fn a_question_compressed_into_the_header_gets_formerr_without_its_question() {
    // Found by fuzz/ (dns_query): hickory echoes the question as received, and a pointer into
    // the header then points at the response's flags, which do not decode as a name.
    let zone = zone();
    let raw = [
        0x11, 0x11, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 0x02, 0x0c, 0x00, 0x01, 0x00, 0x01,
    ];
    let response = zone.respond(&raw, Transport::Udp, 0).unwrap();
    expect![[r#"
        status: Form Error (1) flags: RD answer: 0 authority: 0 additional: 0
    "#]]
    .assert_eq(&render(&response));
    assert_eq!(&response[..2], &raw[..2]);
    assert!(Message::from_vec(&response).is_ok());
    // a pointer into an earlier question is fine
    let two = [3, b'w', b'e', b'b', 0, 0, 1, 0, 1, 0xc0, 12, 0, 1, 0, 1];
    assert!(!crate::message::points_into_header(&two));
    assert!(crate::message::points_into_header(&raw[12..]));
}
