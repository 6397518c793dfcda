//! Forwarding: a query for a name outside the zone goes to the upstream resolvers, one after
//! the other, and the first answer is relayed to the client as it came.
//!
//! Each forward uses a fresh socket (a random source port) and a random message id, restored
//! in the relayed answer; an answer whose id, flags or question do not match is ignored. A query
//! from a UDP client is forwarded over UDP (a truncated answer is relayed: the client asks again
//! over TCP), one from a TCP client over TCP. At most [`MAX_IN_FLIGHT`] forwards run at once; a
//! query beyond that, or one no upstream answered, gets SERVFAIL.

use std::hash::{BuildHasher, RandomState};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Header, Message, ResponseCode};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::Semaphore;

use crate::message::{Transport, error_bytes};

/// How long one upstream has to answer before the next one is asked.
pub const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);

/// Forwards in flight at once (each holds a socket).
pub const MAX_IN_FLIGHT: usize = 256;

/// The upstream resolvers names outside the zone are forwarded to; empty: such names are
/// refused. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Upstreams {
    addrs: Arc<[SocketAddr]>,
    permits: Arc<Semaphore>,
}

impl Default for Upstreams {
    fn default() -> Self {
        Upstreams::new(Vec::new())
    }
}

impl Upstreams {
    /// Forwards to `addrs`, in this order.
    pub fn new(addrs: Vec<SocketAddr>) -> Upstreams {
        Upstreams {
            addrs: addrs.into(),
            permits: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
        }
    }

    /// Whether forwarding is off.
    pub fn is_empty(&self) -> bool {
        self.addrs.is_empty()
    }

    /// The answer to relay for `query` (a request for a name outside the zone): the first
    /// upstream's answer with the client's id, or SERVFAIL. None for bytes that are no query.
    pub async fn forward(&self, query: &[u8], transport: Transport) -> Option<Vec<u8>> {
        let header = Header::read(&mut BinDecoder::new(query)).ok()?;
        let servfail = || Some(error_bytes(&header.metadata, ResponseCode::ServFail));
        let Ok(_permit) = self.permits.try_acquire() else {
            tracing::debug!("too many forwarded queries in flight, answering SERVFAIL");
            return servfail();
        };
        let asked = Message::from_vec(query).ok()?;
        let mut sent = query.to_vec();
        for &upstream in self.addrs.iter() {
            let id = random_id();
            sent[..2].copy_from_slice(&id.to_be_bytes());
            let exchange = async {
                match transport {
                    Transport::Udp => exchange_udp(upstream, &sent, &asked, id).await,
                    Transport::Tcp => exchange_tcp(upstream, &sent, &asked, id).await,
                }
            };
            match tokio::time::timeout(UPSTREAM_TIMEOUT, exchange).await {
                Ok(Ok(mut answer)) => {
                    answer[..2].copy_from_slice(&query[..2]);
                    return Some(answer);
                }
                Ok(Err(error)) => {
                    tracing::debug!(%upstream, %error, "upstream resolver failed, trying the next");
                }
                Err(_) => {
                    tracing::debug!(%upstream, "upstream resolver did not answer in time, trying the next");
                }
            }
        }
        servfail()
    }
}

/// A message id nobody on the path can predict (the standard library's random hash keys).
fn random_id() -> u16 {
    RandomState::new().hash_one(0u8) as u16
}

/// Whether `answer` answers `asked`, sent with `id`.
fn answers(answer: &[u8], asked: &Message, id: u16) -> bool {
    match Message::from_vec(answer) {
        Ok(message) => {
            message.metadata.id == id
                && message.metadata.message_type == hickory_proto::op::MessageType::Response
                && message.queries == asked.queries
        }
        Err(_) => false,
    }
}

fn unspecified(upstream: SocketAddr) -> SocketAddr {
    match upstream {
        SocketAddr::V4(_) => SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
        SocketAddr::V6(_) => SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)),
    }
}

async fn exchange_udp(
    upstream: SocketAddr,
    query: &[u8],
    asked: &Message,
    id: u16,
) -> std::io::Result<Vec<u8>> {
    let socket = UdpSocket::bind(unspecified(upstream)).await?;
    socket.connect(upstream).await?;
    socket.send(query).await?;
    let mut buffer = vec![0; usize::from(u16::MAX)];
    loop {
        let n = socket.recv(&mut buffer).await?;
        if answers(&buffer[..n], asked, id) {
            buffer.truncate(n);
            return Ok(buffer);
        }
    }
}

async fn exchange_tcp(
    upstream: SocketAddr,
    query: &[u8],
    asked: &Message,
    id: u16,
) -> std::io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect(upstream).await?;
    stream.set_nodelay(true)?;
    let length = u16::try_from(query.len()).map_err(std::io::Error::other)?;
    let mut framed = Vec::with_capacity(query.len() + 2);
    framed.extend_from_slice(&length.to_be_bytes());
    framed.extend_from_slice(query);
    stream.write_all(&framed).await?;
    let length = stream.read_u16().await?;
    let mut answer = vec![0; usize::from(length)];
    stream.read_exact(&mut answer).await?;
    if answers(&answer, asked, id) {
        Ok(answer)
    } else {
        Err(std::io::Error::other("the answer does not match the query"))
    }
}
