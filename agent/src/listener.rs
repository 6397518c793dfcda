//! The one way flotillad serves HTTP on a TCP listener, for the client API (2379) and the peer
//! server (2380), plain or TLS: accept, admit, handshake, serve with hyper, close.
//!
//! # Design
//!
//! Every resource a remote controls is bounded ([`Limits`]), and the accept loop never waits
//! for one: a connection that would go beyond a limit is closed at once (logged at debug,
//! counted, the first of each kind per listener at warn).
//!
//! - Open connections: at most `max_connections` per listener and `max_connections_per_client`
//!   per remote IP address, counted from `accept` to close (handshake included).
//! - TLS handshakes in progress: at most `max_handshakes_per_client` per remote IP, each within
//!   `handshake_timeout`, each in its connection's task, so idle TCP connections from one
//!   address cannot use up the slots every other client (and, on 2380, Raft) needs.
//! - Request headers: the head of a request must be complete within `header_timeout` of its
//!   first byte (slowloris).
//! - Idle connections: one with no request in flight and no byte of a new one is closed after
//!   `idle_timeout`. A request is in flight from its complete head until its response body
//!   ended, so an open watch (`wait=true`) or a long pull is never idle.
//!
//! hyper's own `header_read_timeout` is not used: since hyper 1.4 its timer also runs while a
//! keep-alive connection waits for its next request, so it would close every idle HTTP/1.1
//! connection after `header_timeout`, and HTTP/2 has no such timer at all. The per-connection
//! [`Activity`] watchdog below gives both protocols the same two timeouts.
//!
//! Shutdown: when `cancel` fires the listener closes, every connection is told to shut down
//! gracefully (an idle HTTP/1.1 connection closes, in-flight requests finish, HTTP/2 sends
//! GOAWAY) and [`serve`] returns once all are closed; dropping it (the caller's deadline) drops
//! every connection.
//!
//! A client that vanishes without a FIN during a long request (a watch) is found by TCP
//! keepalive: probes after a minute of silence, every 10 s, the kernel's count of them.
//!
//! Current limitations: the per-client caps count IP addresses (an IPv6 client owning a /64 can
//! use many); a request body has no timeout of its own (a slow upload is bounded only by the
//! connection caps); for HTTP/2 any frame received while no stream is open (a PING, a
//! WINDOW_UPDATE) starts the header timeout, so an idle HTTP/2 connection may be closed
//! (GOAWAY) after `header_timeout` rather than `idle_timeout`; counts are in the log only.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::Request;
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tower_service::Service as _;

use crate::tls::{Acceptor, Remote};

/// How long a connection whose timeout expired may take to close gracefully (an HTTP/2 GOAWAY)
/// before it is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// TCP keepalive: silence before the first probe, and between probes.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);

/// What one listener allows its remotes (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    /// Open connections on the listener.
    pub(crate) max_connections: usize,
    /// Open connections from one remote IP address.
    pub(crate) max_connections_per_client: usize,
    /// TLS handshakes in progress from one remote IP address.
    pub(crate) max_handshakes_per_client: usize,
    /// How long a TLS handshake may take.
    pub(crate) handshake_timeout: Duration,
    /// How long a request's head may take from its first byte.
    pub(crate) header_timeout: Duration,
    /// How long a connection may stay open with no request in flight.
    pub(crate) idle_timeout: Duration,
}

/// Serves `router` on `listener` within `limits` until `cancel` (see the module documentation);
/// TLS with `tls`. Handlers find the remote as `ConnectInfo<Remote>`. `what` names the listener
/// in log lines (`client API`, `peer server`).
pub(crate) async fn serve(
    listener: TcpListener,
    tls: Option<Acceptor>,
    router: Router,
    limits: Limits,
    what: &'static str,
    cancel: CancellationToken,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // The timer serves hyper's own deadlines; the header and idle timeouts are the watchdog's.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(None);
    builder.http2().timer(TokioTimer::new());
    let shared = Arc::new(Shared {
        router,
        tls,
        limits,
        what,
        builder,
        admission: Admission::default(),
    });
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            _ = cancel.cancelled() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            a = listener.accept() => a,
        };
        let (tcp, addr) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // As axum does: the usual cause is running out of file descriptors.
                tracing::debug!("{what}: accept failed: {e}, retrying");
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
                }
            }
        };
        let Some(slot) = shared.admit(addr) else {
            continue;
        };
        // Replies are small and latency-bound: no Nagle delay.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!("{what}: cannot set TCP_NODELAY: {e}, ignoring");
        }
        let keepalive = socket2::TcpKeepalive::new()
            .with_time(KEEPALIVE_IDLE)
            .with_interval(KEEPALIVE_INTERVAL);
        if let Err(e) = socket2::SockRef::from(&tcp).set_tcp_keepalive(&keepalive) {
            tracing::debug!("{what}: cannot set TCP keepalive: {e}, ignoring");
        }
        let handshake = match shared.tls {
            Some(_) => match shared.handshake_slot(addr) {
                Some(h) => Some(h),
                None => continue,
            },
            None => None,
        };
        connections.spawn(connection(
            shared.clone(),
            tcp,
            addr,
            slot,
            handshake,
            cancel.clone(),
        ));
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
}

/// What every connection of one listener shares.
struct Shared {
    router: Router,
    tls: Option<Acceptor>,
    limits: Limits,
    what: &'static str,
    builder: auto::Builder<TokioExecutor>,
    admission: Admission,
}

/// The counts the limits apply to, and how often each refused.
#[derive(Default)]
struct Admission {
    counts: Mutex<Counts>,
    refused_full: Refused,
    refused_client: Refused,
    refused_handshake: Refused,
}

#[derive(Default)]
struct Counts {
    open: usize,
    per_client: HashMap<IpAddr, usize>,
    handshakes: HashMap<IpAddr, usize>,
}

/// How many connections one kind of limit refused (logged at warn the first time).
#[derive(Default)]
struct Refused {
    count: AtomicU64,
    warned: AtomicBool,
}

impl Refused {
    fn note(&self, what: &str, addr: SocketAddr, why: std::fmt::Arguments<'_>) {
        let n = self.count.fetch_add(1, Ordering::Relaxed) + 1;
        if !self.warned.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                remote = %addr,
                "{what}: closed a new connection from {addr}: {why} \
                 (further refusals of this kind are logged at debug level)"
            );
        } else {
            tracing::debug!(remote = %addr, refused = n, "{what}: closed a new connection: {why}");
        }
    }
}

impl Shared {
    /// A connection slot for `addr`, or `None` (logged) when a limit is reached.
    fn admit(self: &Arc<Self>, addr: SocketAddr) -> Option<Slot> {
        let Limits {
            max_connections,
            max_connections_per_client,
            ..
        } = self.limits;
        let ip = addr.ip();
        let full = {
            let mut c = self.lock();
            let from_client = c.per_client.get(&ip).copied().unwrap_or(0);
            if c.open >= max_connections {
                Some(true)
            } else if from_client >= max_connections_per_client {
                Some(false)
            } else {
                c.open += 1;
                c.per_client.insert(ip, from_client + 1);
                None
            }
        };
        match full {
            None => {
                return Some(Slot {
                    shared: self.clone(),
                    ip,
                });
            }
            Some(true) => self.admission.refused_full.note(
                self.what,
                addr,
                format_args!("{max_connections} connections are open (max_connections)"),
            ),
            Some(false) => self.admission.refused_client.note(
                self.what,
                addr,
                format_args!(
                    "{max_connections_per_client} connections from {ip} are open \
                     (max_connections_per_client)"
                ),
            ),
        }
        None
    }

    /// A handshake slot for `addr`, or `None` (logged) when its address has too many.
    fn handshake_slot(self: &Arc<Self>, addr: SocketAddr) -> Option<HandshakeSlot> {
        let max = self.limits.max_handshakes_per_client;
        let ip = addr.ip();
        let admitted = {
            let mut c = self.lock();
            let n = c.handshakes.entry(ip).or_insert(0);
            let admitted = *n < max;
            if admitted {
                *n += 1;
            }
            admitted
        };
        if !admitted {
            self.admission.refused_handshake.note(
                self.what,
                addr,
                format_args!("{max} TLS handshakes from {ip} are in progress"),
            );
            return None;
        }
        Some(HandshakeSlot {
            shared: self.clone(),
            ip,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.admission
            .counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }
}

/// One open connection, counted until dropped.
struct Slot {
    shared: Arc<Shared>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut c = self.shared.lock();
        c.open = c.open.saturating_sub(1);
        release(&mut c.per_client, self.ip);
    }
}

/// One TLS handshake in progress, counted until dropped.
struct HandshakeSlot {
    shared: Arc<Shared>,
    ip: IpAddr,
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        release(&mut self.shared.lock().handshakes, self.ip);
    }
}

fn release(counts: &mut HashMap<IpAddr, usize>, ip: IpAddr) {
    if let Some(n) = counts.get_mut(&ip) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            counts.remove(&ip);
        }
    }
}

/// One connection's task: its handshake, then HTTP until it closes.
async fn connection(
    shared: Arc<Shared>,
    tcp: TcpStream,
    addr: SocketAddr,
    _slot: Slot,
    handshake: Option<HandshakeSlot>,
    cancel: CancellationToken,
) {
    let Some(acceptor) = &shared.tls else {
        let remote = Remote { addr, user: None };
        return http(&shared, tcp, remote, &cancel).await;
    };
    let shaken = tokio::select! {
        _ = cancel.cancelled() => return,
        s = acceptor.accept(tcp, addr, shared.limits.handshake_timeout) => s,
    };
    drop(handshake);
    if let Some((tls, remote)) = shaken {
        // A CRL loaded later that revokes the client's certificate ends the connection.
        let revoked = acceptor.revocation(&tls);
        let (addr, user) = (remote.addr, remote.user.clone());
        tokio::select! {
            () = http(&shared, tls, remote, &cancel) => {}
            () = revoked => tracing::warn!(
                remote = %addr,
                "{}: closed the connection of {}: its client certificate was revoked (tls_crl)",
                shared.what,
                user.as_deref().unwrap_or("an unnamed client")
            ),
        }
    }
}

/// Serves HTTP/1.1 or HTTP/2 on one connection until it closes, a timeout expires or `cancel`
/// (then gracefully).
async fn http<I>(shared: &Shared, io: I, remote: Remote, cancel: &CancellationToken)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Watched {
        io,
        activity: activity.clone(),
    });
    let addr = remote.addr;
    let service = {
        let (router, activity) = (shared.router.clone(), activity.clone());
        hyper::service::service_fn(move |mut req: Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo(remote.clone()));
            let in_flight = activity.begin();
            let mut router = router.clone();
            async move {
                let response = router.call(req).await?;
                // The request stays in flight until its body has been sent (or dropped).
                Ok::<_, Infallible>(response.map(|body| {
                    Body::new(body.map_frame(move |frame| {
                        let _ = &in_flight;
                        frame
                    }))
                }))
            }
        })
    };
    let mut conn = pin!(shared.builder.serve_connection(io, service));
    let mut closing = false;
    loop {
        tokio::select! {
            served = conn.as_mut() => {
                if let Err(e) = served {
                    tracing::debug!(remote = %addr, "{}: connection ended: {e}", shared.what);
                }
                return;
            }
            _ = cancel.cancelled(), if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
            why = activity.expired(&shared.limits) => {
                tracing::debug!(remote = %addr, "{}: closing a connection: {why}", shared.what);
                conn.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(CLOSE_GRACE, conn.as_mut()).await;
                return;
            }
        }
    }
}

/// Whether a connection has a request in flight, and since when it has had none or has been
/// receiving a request's head: what its header and idle timeouts count from.
struct Activity {
    /// The connection's start; the instants below are milliseconds after it.
    start: Instant,
    in_flight: AtomicUsize,
    /// When the last request ended (or the connection started).
    idle_since: AtomicU64,
    /// One more than when the first byte arrived with no request in flight; 0: none since.
    head_since: AtomicU64,
    /// Wakes the watchdog: the last request in flight ended, or a request's head began.
    wake: Notify,
}

/// A request in flight on its connection, until dropped.
struct InFlight(Arc<Activity>);

impl Activity {
    fn new() -> Self {
        Activity {
            start: Instant::now(),
            in_flight: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
            head_since: AtomicU64::new(0),
            wake: Notify::new(),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn at(&self, ms: u64) -> Instant {
        self.start + Duration::from_millis(ms)
    }

    fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        self.head_since.store(0, Ordering::SeqCst);
        InFlight(self.clone())
    }

    /// Bytes arrived.
    fn read(&self) {
        if self.in_flight.load(Ordering::SeqCst) == 0 && self.head_since.load(Ordering::SeqCst) == 0
        {
            self.head_since.store(self.now() + 1, Ordering::SeqCst);
            // The watchdog sleeps towards the idle deadline: the header deadline is sooner.
            self.wake.notify_one();
        }
    }

    /// Returns (why) once the connection has been idle or receiving a head for too long.
    async fn expired(&self, limits: &Limits) -> &'static str {
        loop {
            if self.in_flight.load(Ordering::SeqCst) > 0 {
                self.wake.notified().await;
                continue;
            }
            let (deadline, why) = match self.head_since.load(Ordering::SeqCst) {
                0 => (
                    self.at(self.idle_since.load(Ordering::SeqCst)) + limits.idle_timeout,
                    "idle for longer than idle_timeout",
                ),
                since => (
                    self.at(since - 1) + limits.header_timeout,
                    "no complete request head within header_timeout",
                ),
            };
            if Instant::now() >= deadline {
                return why;
            }
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => {}
                _ = self.wake.notified() => {}
            }
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let a = &self.0;
        if a.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            a.idle_since.store(a.now(), Ordering::SeqCst);
            a.head_since.store(0, Ordering::SeqCst);
            a.wake.notify_one();
        }
    }
}

/// A connection's stream that tells its [`Activity`] when bytes arrive.
struct Watched<I> {
    io: I,
    activity: Arc<Activity>,
}

impl<I: AsyncRead + Unpin> AsyncRead for Watched<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.read();
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Watched<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}
