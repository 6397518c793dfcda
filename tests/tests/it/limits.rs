//! Connection limits and timeouts of the agent's listeners, against real agents on loopback:
//! idle TCP connections from one address do not stall the TLS client or peer port for anyone
//! else, a slow request head is cut after `[api] header_timeout`, an idle connection after
//! `idle_timeout` but never an open watch, and `max_connections` /
//! `max_connections_per_client` close new connections at once, until the old ones are gone.
//!
//! The "hostile" connections come from their own loopback address (`127.A.B.250`, ...), as
//! they would from another machine; etcdctl, curl and the agents themselves connect from
//! 127.0.0.1.

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::process::{Command, Output};
use std::time::Duration;

use flotilla_tests::agents::{Cluster, Security};
use flotilla_tests::testbed::wait_until;

use crate::trust::text;

const DEADLINE: Duration = Duration::from_secs(30);

/// `etcdctl` (v2) against `endpoints` with `extra` options.
fn etcdctl(endpoints: &str, extra: &[&str], args: &[&str]) -> Output {
    Command::new("etcdctl")
        .env("ETCDCTL_API", "2")
        .arg("--endpoints")
        .arg(endpoints)
        .args(extra)
        .args(args)
        .output()
        .expect("etcdctl (Debian package etcd-client) runs")
}

/// Another loopback address in the cluster's `127.A.B.*` block, for one "remote machine".
fn remote_ip(cluster: &Cluster, last: u8) -> Ipv4Addr {
    let o = cluster.agents()[0].ip().octets();
    Ipv4Addr::new(o[0], o[1], o[2], last)
}

/// Opens TCP connections from `src` (bound before connecting).
struct Connector(tokio::runtime::Runtime);

impl Connector {
    fn new() -> Self {
        Connector(
            tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .build()
                .expect("a runtime"),
        )
    }

    fn connect(&self, src: Ipv4Addr, dst: SocketAddr) -> TcpStream {
        let stream = self
            .0
            .block_on(async {
                let socket = tokio::net::TcpSocket::new_v4()?;
                socket.bind(SocketAddr::from((src, 0)))?;
                socket.connect(dst).await?.into_std()
            })
            .unwrap_or_else(|e| panic!("cannot connect from {src} to {dst}: {e}"));
        stream.set_nonblocking(false).unwrap();
        stream
    }
}

/// Whether the server closed `s` (end of file or reset), without waiting.
fn is_closed(s: &mut TcpStream) -> bool {
    s.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 1024];
    let closed = loop {
        match s.read(&mut buf) {
            Ok(0) => break true,
            Ok(_) => continue,
            Err(e) if e.kind() == ErrorKind::WouldBlock => break false,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => break true,
        }
    };
    s.set_nonblocking(false).unwrap();
    closed
}

/// Sends `GET /version` on `s` (HTTP/1.1, kept alive) and reads the answer: `None` when the
/// server closed the connection instead.
fn ask_version(s: &mut TcpStream) -> Option<String> {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /version HTTP/1.1\r\nHost: flotilla\r\n\r\n")
        .ok()?;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = s.read(&mut buf).ok()?;
        if n == 0 {
            return None;
        }
        got.extend_from_slice(&buf[..n]);
        let answer = String::from_utf8_lossy(&got).into_owned();
        let Some((head, body)) = answer.split_once("\r\n\r\n") else {
            continue;
        };
        let length: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .expect("a Content-Length");
        if body.len() >= length {
            return Some(answer);
        }
    }
}

/// `[api]` lines that make the harness's and the test's plain HTTP clients welcome.
fn plain(api_extra: &str) -> Security {
    Security {
        api_extra: api_extra.to_string(),
        ..Security::default()
    }
}

#[test]
fn idle_connections_from_one_address_stall_neither_clients_nor_raft() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = tmp.path().join("ca");
    let cluster = crate::trust::mtls_cluster(&ca, &["writer"]);
    let file = |name: &str| ca.join(name).display().to_string();
    let (ca_file, cert, key) = (file("ca.crt"), file("writer.crt"), file("writer.key"));
    let tls = [
        "--ca-file",
        ca_file.as_str(),
        "--cert-file",
        cert.as_str(),
        "--key-file",
        key.as_str(),
        // Past the handshake deadline: a stalled accept loop fails the command.
        "--total-timeout",
        "5s",
    ];

    // One address opens more idle connections than the handshake slots the old accept loop
    // had for everyone (256) on every client port, and more than its own share (16) on every
    // peer port, and sends nothing.
    let attacker = remote_ip(&cluster, 250);
    let connector = Connector::new();
    let mut idle = Vec::new();
    for a in cluster.agents() {
        for (port, n) in [(2379, 300), (2380, 64)] {
            let dst = SocketAddr::from((a.ip(), port));
            idle.extend((0..n).map(|_| connector.connect(attacker, dst)));
        }
    }

    // Clients are answered and writes commit through every member meanwhile.
    for (i, a) in cluster.agents().iter().enumerate() {
        let url = a.client_url();
        let value = format!("written through n{}", i + 1);
        let set = etcdctl(&url, &tls, &["--no-sync", "set", "/limits", &value]);
        assert!(set.status.success(), "{}", text(&set));
        for b in cluster.agents() {
            let url = b.client_url();
            wait_until(DEADLINE, "the write replicated", || {
                let get = etcdctl(&url, &tls, &["--no-sync", "get", "/limits"]);
                String::from_utf8_lossy(&get.stdout).trim() == value
            })
            .unwrap_or_else(|e| panic!("{e}: {}", b.log()));
        }
    }
    // Each member closed the connections beyond the address's share at once and said so.
    for a in cluster.agents() {
        let log = a.log();
        let refusal = format!("TLS handshakes from {attacker} are in progress");
        for what in ["client API", "peer server"] {
            assert!(
                log.lines()
                    .any(|l| l.contains(what) && l.contains(&refusal)),
                "{what}: no refusal in the log of {}:\n{log}",
                a.name()
            );
        }
    }
    // And the ones it held are closed at their handshake deadline.
    wait_until(DEADLINE, "every idle connection closed", || {
        idle.retain_mut(|s| !is_closed(s));
        idle.is_empty()
    })
    .unwrap_or_else(|e| panic!("{e}: {} still open", idle.len()));
}

#[test]
fn a_slow_request_head_is_cut_at_the_header_timeout() {
    // idle_timeout stays at its default (120 s): only header_timeout can cut within DEADLINE.
    let cluster =
        Cluster::start_secure(1, "", plain("header_timeout = \"1s\"\n")).expect("an agent starts");
    let api = SocketAddr::from((cluster.agents()[0].ip(), 2379));
    let connector = Connector::new();
    let slow = remote_ip(&cluster, 251);

    // A request head that never ends, one byte at a time.
    let mut slowloris = connector.connect(slow, api);
    slowloris
        .write_all(b"GET /version HTTP/1.1\r\nHost: flotilla\r\nX-Slow: ")
        .unwrap();
    slowloris
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut buf = [0u8; 1024];
    let mut cut = false;
    let started = std::time::Instant::now();
    while !cut && started.elapsed() < DEADLINE {
        if slowloris.write_all(b"a").is_err() {
            cut = true;
            break;
        }
        // Waiting for the end of the connection paces the bytes.
        cut = match slowloris.read(&mut buf) {
            Ok(0) => true,
            Ok(n) => panic!(
                "the slow client got an answer: {}",
                String::from_utf8_lossy(&buf[..n])
            ),
            Err(e) => !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
        };
    }
    assert!(cut, "the slow request head was not cut within {DEADLINE:?}");
    // The server is none the worse, for that address too.
    let mut fresh = connector.connect(slow, api);
    assert!(ask_version(&mut fresh).is_some());
}

#[test]
fn an_idle_connection_is_closed_but_an_open_watch_is_not() {
    let cluster =
        Cluster::start_secure(1, "", plain("idle_timeout = \"1s\"\n")).expect("an agent starts");
    let client = cluster.agents()[0].client_url();
    let api = SocketAddr::from((cluster.agents()[0].ip(), 2379));
    let connector = Connector::new();

    // A watch, then an idle connection opened after it: once the idle one is closed, the
    // watch has been open longer than idle_timeout.
    let mut watch = connector.connect(Ipv4Addr::LOCALHOST, api);
    watch
        .write_all(b"GET /v2/keys/limits/watched?wait=true HTTP/1.1\r\nHost: flotilla\r\n\r\n")
        .unwrap();
    let mut idle = connector.connect(Ipv4Addr::LOCALHOST, api);
    assert!(
        ask_version(&mut idle).is_some(),
        "a first request is answered"
    );
    wait_until(DEADLINE, "the idle connection closed", || {
        is_closed(&mut idle)
    })
    .expect("an idle connection is closed after idle_timeout");
    assert!(!is_closed(&mut watch), "the open watch was cut");

    let set = etcdctl(&client, &[], &["set", "/limits/watched", "seen"]);
    assert!(set.status.success(), "{}", text(&set));
    watch
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = [0u8; 1024];
    let mut answer = Vec::new();
    while !String::from_utf8_lossy(&answer).contains("\"seen\"") {
        let n = watch.read(&mut buf).expect("the watch answers");
        assert!(n > 0, "the watch ended without an answer: {answer:?}");
        answer.extend_from_slice(&buf[..n]);
    }
}

#[test]
fn connections_beyond_the_caps_are_closed_until_others_leave() {
    let cluster = Cluster::start_secure(
        1,
        "",
        plain("max_connections = 8\nmax_connections_per_client = 5\n"),
    )
    .expect("an agent starts");
    let api = SocketAddr::from((cluster.agents()[0].ip(), 2379));
    let connector = Connector::new();
    let (first, second) = (remote_ip(&cluster, 252), remote_ip(&cluster, 253));

    // Open connections from `src` that are answered and stay open (kept alive), until one is
    // closed instead: returns them.
    let fill = |src: Ipv4Addr| {
        let mut open = Vec::new();
        for _ in 0..20 {
            let mut s = connector.connect(src, api);
            if ask_version(&mut s).is_none() {
                return open;
            }
            open.push(s);
        }
        panic!("20 connections from {src} were all served");
    };
    let from_first = fill(first);
    assert_eq!(from_first.len(), 5, "max_connections_per_client");
    let from_second = fill(second);
    assert_eq!(
        from_second.len(),
        3,
        "max_connections (8) minus the first's 5"
    );
    let log = cluster.agents()[0].log();
    for why in ["(max_connections_per_client)", "(max_connections)"] {
        assert!(log.contains(why), "no {why} refusal logged:\n{log}");
    }

    // Once the idle connections are gone, new clients are served again.
    drop(from_first);
    drop(from_second);
    wait_until(DEADLINE, "a new connection served", || {
        ask_version(&mut connector.connect(first, api)).is_some()
    })
    .expect("served after the others left");
    let client = cluster.agents()[0].client_url();
    let set = etcdctl(&client, &[], &["set", "/limits/after", "served"]);
    assert!(set.status.success(), "{}", text(&set));
}
