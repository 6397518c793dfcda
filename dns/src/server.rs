//! The DNS server: answers from the live zone, which the agent replaces whole through a `watch`
//! channel.
//!
//! TCP goes through hickory-server's `Server` (framing, pipelining, idle timeouts) with a
//! `RequestHandler` over the zone. UDP is a loop per socket that receives a batch of datagrams
//! with one system call, answers each in place with [`Zone::respond`] and sends the answers with
//! one more: hickory-server's UDP path spawns a task per query and sends each answer back
//! through a channel with its own system call, which is far slower (see the crate docs).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hickory_proto::op::{Header, HeaderCounts, Message, ResponseCode};
use hickory_proto::rr::Record;
use hickory_proto::serialize::binary::BinDecoder;
use hickory_server::Server;
use hickory_server::net::NetError;
use hickory_server::net::runtime::Time;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::{MessageResponseBuilder, Queries};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::Interest;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::forward::Upstreams;
use crate::message::{Transport, is_outside, plan, points_into_header};
use crate::udp::{BATCH, Batch};
use crate::zone::Zone;

/// How long a TCP connection may stay idle between requests.
pub const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Responses queued per TCP connection (pipelined queries).
const TCP_RESPONSE_BUFFER: usize = 32;

/// Why the server stopped other than by cancellation.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A socket loop ended with an error (the socket was closed under it, for instance).
    #[error("dns server socket failed: {0}; restart the agent to bind it again")]
    Socket(#[from] NetError),
    /// A UDP socket failed.
    #[error("dns server udp socket failed: {0}; restart the agent to bind it again")]
    Udp(std::io::Error),
}

/// Serves the zone published on `zone` on the given bound sockets until `cancel` fires; names
/// outside the zone are refused.
///
/// A query reads the current zone (an `Arc` clone under the channel's read lock, never held
/// across an await), so a new zone applies to the next query and a query never waits for a
/// rebuild.
pub async fn serve(
    zone: watch::Receiver<Arc<Zone>>,
    udp: Vec<UdpSocket>,
    tcp: Vec<TcpListener>,
    cancel: CancellationToken,
) -> Result<(), ServeError> {
    serve_forwarding(zone, udp, tcp, Upstreams::default(), cancel).await
}

/// As [`serve`], and queries for names outside the zone are forwarded to `upstreams` (refused
/// when it is empty).
pub async fn serve_forwarding(
    zone: watch::Receiver<Arc<Zone>>,
    udp: Vec<UdpSocket>,
    tcp: Vec<TcpListener>,
    upstreams: Upstreams,
    cancel: CancellationToken,
) -> Result<(), ServeError> {
    let handler = ZoneHandler::new(zone.clone(), upstreams.clone());
    let seed = Arc::clone(&handler.seed);
    let mut udp_loops = JoinSet::new();
    for socket in udp {
        udp_loops.spawn(serve_udp(
            socket,
            zone.clone(),
            Arc::clone(&seed),
            upstreams.clone(),
        ));
    }
    let mut server = Server::new(handler);
    let serve_tcp = !tcp.is_empty();
    for listener in tcp {
        server.register_listener(listener, TCP_IDLE_TIMEOUT, TCP_RESPONSE_BUFFER);
    }
    let result = tokio::select! {
        result = server.block_until_done(), if serve_tcp => result.map_err(ServeError::from),
        Some(result) = udp_loops.join_next() => match result {
            Ok(Err(error)) => Err(error),
            Ok(Ok(())) | Err(_) => Err(ServeError::Udp(std::io::Error::other("udp loop ended"))),
        },
        () = cancel.cancelled() => Ok(()),
    };
    udp_loops.shutdown().await;
    if serve_tcp {
        server.shutdown_gracefully().await?;
    }
    result
}

/// Binds `count` UDP sockets (at least one) to `addr` with `SO_REUSEPORT`: the kernel spreads
/// the queries over them, and [`serve`] answers each socket on its own task, so on as many cores.
/// Port 0 binds them all to the same free port. The sockets are non-blocking, ready for
/// `tokio::net::UdpSocket::from_std`.
pub fn bind_udp(addr: SocketAddr, count: usize) -> std::io::Result<Vec<std::net::UdpSocket>> {
    let mut sockets: Vec<std::net::UdpSocket> = Vec::new();
    let mut addr = addr;
    for _ in 0..count.max(1) {
        let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        socket.set_reuse_port(true)?;
        socket.set_nonblocking(true)?;
        if addr.is_ipv6() {
            socket.set_only_v6(true)?;
        }
        socket.bind(&addr.into())?;
        let socket = std::net::UdpSocket::from(socket);
        addr = socket.local_addr()?;
        sockets.push(socket);
    }
    Ok(sockets)
}

/// Binds a TCP listener to `addr`, IPv6-only for an IPv6 address as [`bind_udp`]'s sockets (so
/// that `0.0.0.0:53` and `[::]:53` can both be bound), non-blocking, ready for
/// `tokio::net::TcpListener::from_std`.
pub fn bind_tcp(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// Answers the queries that arrive on `socket`, a batch at a time: each is answered without
/// waiting, so a task per query would only add work. A query to forward (a name outside the
/// zone, with `upstreams`) is the exception: it gets a task that sends the answer itself.
async fn serve_udp(
    socket: UdpSocket,
    zone: watch::Receiver<Arc<Zone>>,
    seed: Arc<AtomicU64>,
    upstreams: Upstreams,
) -> Result<(), ServeError> {
    let socket = Arc::new(socket);
    let mut batch = Box::new(Batch::new());
    let mut forwards = JoinSet::new();
    loop {
        while forwards.try_join_next().is_some() {}
        socket.readable().await.map_err(ServeError::Udp)?;
        match socket.try_io(Interest::READABLE, || batch.receive(&socket)) {
            Ok(_) => {}
            Err(error) if transient(&error) => continue,
            Err(error) => return Err(ServeError::Udp(error)),
        }
        let zone = Arc::clone(&zone.borrow());
        let seed = seed.fetch_add(BATCH as u64, Ordering::Relaxed);
        let mut to_forward = Vec::new();
        let answers: Vec<(usize, Vec<u8>)> = batch
            .queries()
            .filter_map(|(i, query)| {
                let answer = zone.respond(query, Transport::Udp, seed.wrapping_add(i as u64))?;
                if !upstreams.is_empty()
                    && refused(&answer)
                    && zone.is_outside(query)
                    && let Some(source) = batch.source(i)
                {
                    to_forward.push((query.to_vec(), source));
                    return None;
                }
                Some((i, answer))
            })
            .collect();
        for (query, source) in to_forward {
            let (socket, upstreams) = (Arc::clone(&socket), upstreams.clone());
            forwards.spawn(async move {
                if let Some(answer) = upstreams.forward(&query, Transport::Udp).await
                    && let Err(error) = socket.send_to(&answer, source).await
                {
                    tracing::debug!(%error, %source, "sending a forwarded answer failed, ignoring");
                }
            });
        }
        for (i, answer) in answers {
            batch.answer(i, answer);
        }
        while batch.has_unsent() {
            match socket.try_io(Interest::WRITABLE, || batch.send(&socket)) {
                Ok(_) => {}
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                    socket.writable().await.map_err(ServeError::Udp)?;
                }
                Err(error) if transient(&error) => {
                    tracing::debug!(%error, "sending a dns response failed, ignoring");
                    batch.skip();
                }
                Err(error) => return Err(ServeError::Udp(error)),
            }
        }
    }
}

/// Whether the response `answer` says REFUSED.
fn refused(answer: &[u8]) -> bool {
    answer.get(3).is_some_and(|flags| flags & 0x0f == 5)
}

/// Errors a UDP socket reports for one peer (an ICMP error from an earlier send, for instance)
/// rather than for itself.
fn transient(error: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        error.kind(),
        ConnectionRefused
            | ConnectionReset
            | Interrupted
            | WouldBlock
            | HostUnreachable
            | NetworkUnreachable
    )
}

/// The request handler: answers from the live zone.
struct ZoneHandler {
    zone: watch::Receiver<Arc<Zone>>,
    /// Per-query shuffle seed: a counter started at a time-derived value.
    seed: Arc<AtomicU64>,
    upstreams: Upstreams,
}

impl ZoneHandler {
    fn new(zone: watch::Receiver<Arc<Zone>>, upstreams: Upstreams) -> Self {
        let start = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Self {
            zone,
            seed: Arc::new(AtomicU64::new(start)),
            upstreams,
        }
    }
}

#[async_trait::async_trait]
impl RequestHandler for ZoneHandler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let zone = Arc::clone(&self.zone.borrow());
        if !self.upstreams.is_empty()
            && is_outside(&zone, request)
            && let Some(answer) = self
                .upstreams
                .forward(request.as_slice(), Transport::Tcp)
                .await
            && let Ok(message) = Message::from_vec(&answer)
        {
            let response = MessageResponseBuilder::new(&request.queries, message.edns.as_ref())
                .build(
                    message.metadata,
                    message.answers.iter(),
                    message.authorities.iter(),
                    std::iter::empty::<&Record>(),
                    message.additionals.iter(),
                );
            return match response_handle.send_response(response).await {
                Ok(info) => info,
                Err(error) => {
                    tracing::debug!(%error, src = %request.src(), "sending a forwarded dns response failed, ignoring");
                    ResponseInfo::from(Header {
                        metadata: message.metadata,
                        counts: HeaderCounts::default(),
                    })
                }
            };
        }
        // A question compressed into the header cannot be echoed (the response's header
        // differs): FORMERR without the question, as over UDP.
        if points_into_header(request.queries.as_bytes()) {
            let Ok(none) = Queries::read(&mut BinDecoder::new(&[]), 0) else {
                return ResponseInfo::from(Header {
                    metadata: request.metadata,
                    counts: HeaderCounts::default(),
                });
            };
            let response = MessageResponseBuilder::new(&none, None)
                .error_msg(&request.metadata, ResponseCode::FormErr);
            return match response_handle.send_response(response).await {
                Ok(info) => info,
                Err(error) => {
                    tracing::debug!(%error, src = %request.src(), "sending a dns error failed, ignoring");
                    ResponseInfo::from(Header {
                        metadata: request.metadata,
                        counts: HeaderCounts::default(),
                    })
                }
            };
        }
        let seed = self.seed.fetch_add(1, Ordering::Relaxed);
        let plan = plan(&zone, request, seed);
        let metadata = plan.metadata;
        let response = MessageResponseBuilder::new(&request.queries, plan.edns.as_ref()).build(
            plan.metadata,
            plan.answer.answers,
            plan.answer.authorities,
            std::iter::empty::<&Record>(),
            plan.answer.additionals,
        );
        match response_handle.send_response(response).await {
            Ok(info) => info,
            Err(error) => {
                tracing::debug!(%error, src = %request.src(), "sending dns response failed, ignoring");
                ResponseInfo::from(Header {
                    metadata,
                    counts: HeaderCounts::default(),
                })
            }
        }
    }
}
