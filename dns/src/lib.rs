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
//! - `_<svc>._<proto>.service.<domain>` SRV for an unnamed `Advertise=PORT/proto`, and
//!   `_<name>._<proto>.<svc>.service.<domain>` for a named `Advertise=NAME:PORT/proto`
//!   (RFC 2782's `_Service._Proto.Name`); priority 1, weight 1, target
//!   `<host>.node.<domain>` whose addresses go in the additional section;
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
//! # Current limitations
//!
//! - Names outside the zone are refused; forwarding to upstream resolvers is not built.
//! - NXDOMAIN, ANY and names outside the zone take the general path (about half as fast).
//! - The SOA serial is a hash of the zone's content, not an increasing number: there are no
//!   secondaries to transfer to, and zone transfers (AXFR/IXFR) are not served.
//! - No DNSSEC, no DNS cookies (a client's COOKIE option is ignored, as RFC 7873 allows).
//! - hickory-server logs every TCP request at `info` level (target `hickory_server`): the agent
//!   should filter that target to `warn`.
//! - Linux only (`recvmmsg`, `sendmmsg`, `SO_REUSEPORT`).

mod message;
mod render;
mod server;
mod udp;
mod wire;
mod zone;

#[cfg(test)]
mod tests;

pub use message::Transport;
pub use render::render;
pub use server::{ServeError, TCP_IDLE_TIMEOUT, bind_udp, serve};
pub use zone::{
    Advertised, Answer, DEFAULT_DOMAIN, MachineRecord, Proto, ServiceInstance, Zone, ZoneConfig,
    ZoneData, ZoneError, service_name,
};
