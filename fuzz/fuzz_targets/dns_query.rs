//! Fuzz target for the DNS server's packet handling (`flotilla_dns::Zone::respond`, the path
//! every UDP datagram and TCP message takes: the precomputed wire-format fast path, then the
//! general path on hickory-proto's types).
//!
//! Input: one byte choosing the transport (low bit) and the shuffle seed, then the request.
//! Checked: nothing panics; every response parses as a DNS response with the request's id; a
//! UDP response is at most 512 bytes unless the request carries EDNS.

#![no_main]

use std::sync::LazyLock;

use flotilla_dns::{
    Advertised, MachineRecord, Proto, ServiceInstance, Transport, Zone, ZoneConfig, ZoneData,
};
use hickory_proto::op::{Message, MessageType};
use libfuzzer_sys::fuzz_target;

/// The zone of the `dns` crate's own tests: machines up and down, IPv4 and IPv6, metadata,
/// named and unnamed ports over TCP and UDP.
static ZONE: LazyLock<Zone> = LazyLock::new(|| {
    let machine = |name: &str, addr: &str, up: bool| MachineRecord {
        name: name.into(),
        addrs: vec![addr.parse().unwrap()],
        metadata: [("region".to_owned(), "east".to_owned())].into(),
        up,
    };
    let instance =
        |unit: &str, machine: &str, ports: &[(Option<&str>, u16, Proto)]| ServiceInstance {
            service: flotilla_dns::service_name(unit).unwrap().into(),
            unit: unit.into(),
            machine: machine.into(),
            ports: ports
                .iter()
                .map(|&(name, port, proto)| Advertised {
                    name: name.map(Into::into),
                    port,
                    proto,
                })
                .collect(),
        };
    let mut node2 = machine("node2", "10.0.0.2", true);
    node2.addrs.push("fd00::2".parse().unwrap());
    let data = ZoneData {
        machines: vec![
            machine("node1", "10.0.0.1", true),
            node2,
            machine("node3", "10.0.0.3", false),
        ],
        services: vec![
            instance(
                "web@1.service",
                "node1",
                &[
                    (None, 8080, Proto::Tcp),
                    (Some("metrics"), 9100, Proto::Tcp),
                ],
            ),
            instance("web@2.service", "node2", &[(None, 8080, Proto::Tcp)]),
            instance("web@3.service", "node3", &[(None, 8080, Proto::Tcp)]),
            instance("dns.service", "node2", &[(None, 53, Proto::Udp)]),
        ],
    };
    Zone::build(&data, &ZoneConfig::default())
});

fuzz_target!(|data: &[u8]| {
    let Some((&control, request)) = data.split_first() else {
        return;
    };
    let transport = if control & 1 == 0 {
        Transport::Udp
    } else {
        Transport::Tcp
    };
    let seed = u64::from(control >> 1);
    let Some(response) = ZONE.respond(request, transport, seed) else {
        return;
    };
    let message = Message::from_vec(&response)
        .unwrap_or_else(|e| panic!("unparsable response ({e}): {response:02x?}"));
    assert_eq!(message.metadata.message_type, MessageType::Response);
    assert_eq!(
        &response[..2],
        &request[..2],
        "the response keeps the request's id"
    );
    if transport == Transport::Udp && response.len() > 512 {
        let edns = Message::from_vec(request).ok().and_then(|m| m.edns);
        assert!(
            edns.is_some(),
            "{} bytes over UDP without EDNS",
            response.len()
        );
    }
});
