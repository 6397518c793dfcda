//! Service discovery over DNS: a zone built from the cluster state, and its server.
//!
//! # Design
//!
//! The agent turns the replicated state into a [`ZoneData`] (machines, and the active units
//! that belong to a service) and builds a [`Zone`] from it with [`Zone::build`]: every answer is
//! precomputed, keyed by lowercase name and record type, so a query is a hash lookup. The agent
//! publishes each new zone on a `tokio::sync::watch` channel; [`serve`] answers every query
//! from the zone current at that moment.
//!
//! Names (Consul's convention), under `[dns] domain` (default `flotilla.internal`):
//!
//! - `<svc>.service.<domain>` A/AAAA: the machines where a unit of the service is active;
//! - `_<svc>._<proto>.service.<domain>` SRV for a port without a name, and
//!   `_<name>._<proto>.<svc>.service.<domain>` for an [`Advertised`] port with a name
//!   (RFC 2782's `_Service._Proto.Name`); priority 1, weight 1, target
//!   `<host>.node.<domain>` whose addresses go in the additional section. The agent passes
//!   unnamed ports only: flotilla-units reads `Advertise=NAME:PORT` as the unit advertised
//!   under the service `NAME`, so it becomes `_NAME._tcp.service.<domain>`;
//! - `<host>.node.<domain>` A/AAAA, and TXT `key=value` for each metadata entry;
//! - SOA and NS at the apex; every up machine is a name server of the zone.
//!
//! # Serving
//!
//! [`serve`] takes sockets the caller bound (tests bind port 0; [`bind_udp`] binds several UDP
//! sockets with `SO_REUSEPORT`, one per core) and a `CancellationToken`. UDP is answered by a
//! loop per socket that receives and sends batches of datagrams (`recvmmsg`/`sendmmsg`); a
//! plain query for a name of the zone is answered from wire-format answers precomputed with the
//! zone (the `wire` module), anything else by the general path on hickory-proto's message types
//! (`message`), which also decides FORMERR, NOTIMP, REFUSED, BADVERS and truncation. TCP goes
//! through hickory-server's `Server` with a `RequestHandler` over the same general path. Tests
//! check that both paths give the same answers, and feed random and truncated packets to both.
//!
//! Names outside the zone are refused, or, given [`Upstreams`] ([`serve_forwarding`]), sent to
//! those resolvers in turn (UDP for UDP clients, TCP for TCP clients; a fresh socket and a random
//! id per forward, at most [`MAX_IN_FLIGHT`] at once, [`UPSTREAM_TIMEOUT`] each) and the first
//! answer relayed; SERVFAIL when none answers.
//!
//! # Current limitations
//!
//! - Forwarding relays answers without caching them: every forwarded query reaches an upstream.
//! - NXDOMAIN, ANY and names outside the zone take the general path (about half as fast).
//! - The SOA serial is a hash of the zone's content, not an increasing number: there are no
//!   secondaries to transfer to, and zone transfers (AXFR/IXFR) are not served.
//! - No DNSSEC, no DNS cookies (a client's COOKIE option is ignored, as RFC 7873 allows).
//! - hickory-server logs every TCP request at `info` level (target `hickory_server`): the agent
//!   should filter that target to `warn`.
//! - Linux only (`recvmmsg`, `sendmmsg`, `SO_REUSEPORT`).

mod forward;
mod message;
mod render;
mod server;
mod udp;
mod wire;
mod zone;

#[cfg(test)]
mod tests;

pub use forward::{MAX_IN_FLIGHT, UPSTREAM_TIMEOUT, Upstreams};
pub use message::Transport;
pub use render::render;
pub use server::{ServeError, TCP_IDLE_TIMEOUT, bind_tcp, bind_udp, serve, serve_forwarding};
pub use zone::{
    Advertised, Answer, DEFAULT_DOMAIN, MachineRecord, Proto, ServiceInstance, Zone, ZoneConfig,
    ZoneData, ZoneError, service_name,
};
