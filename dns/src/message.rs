//! From a request message to a response message: header flags, EDNS, errors and truncation.
//!
//! Shared by the server's handler and by [`Zone::respond`], the pure bytes-in, bytes-out form
//! used by tests.

use std::net::{Ipv4Addr, SocketAddr};

use hickory_proto::op::{Edns, Header, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::{DNSClass, Record};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder, BinEncoder};
use hickory_server::net::xfer::Protocol;
use hickory_server::server::Request;
use hickory_server::zone_handler::{MessageRequest, MessageResponseBuilder, Queries};

use crate::zone::{Answer, Zone};

/// The largest UDP payload advertised and used, whatever the client offers (RFC 9715's advice).
pub(crate) const MAX_UDP_PAYLOAD: u16 = 1232;

/// The response to one request: header, records and the EDNS record to send back.
pub(crate) struct Plan<'z> {
    pub(crate) metadata: Metadata,
    pub(crate) answer: Answer<'z>,
    pub(crate) edns: Option<Edns>,
}

/// Decides the response to `request` from `zone`.
pub(crate) fn plan<'z>(zone: &'z Zone, request: &MessageRequest, seed: u64) -> Plan<'z> {
    let mut metadata = Metadata::response_from_request(&request.metadata);
    let edns = request.edns.as_ref().map(|_| {
        let mut edns = Edns::new();
        edns.set_max_payload(request.max_payload().min(MAX_UDP_PAYLOAD));
        edns
    });
    let empty = |code| Plan {
        metadata: {
            let mut metadata = metadata;
            metadata.response_code = code;
            metadata
        },
        answer: Answer {
            code,
            authoritative: false,
            answers: Vec::new(),
            authorities: Vec::new(),
            additionals: Vec::new(),
        },
        edns: edns.clone(),
    };
    if request.edns.as_ref().is_some_and(|e| e.version() > 0) {
        return empty(ResponseCode::BADVERS);
    }
    if request.metadata.op_code != OpCode::Query {
        return empty(ResponseCode::NotImp);
    }
    let [query] = request.queries.queries() else {
        return empty(ResponseCode::FormErr);
    };
    if !matches!(query.query_class(), DNSClass::IN | DNSClass::ANY) {
        return empty(ResponseCode::Refused);
    }
    let answer = zone.lookup(query.name(), query.query_type(), seed);
    metadata.response_code = answer.code;
    metadata.authoritative = answer.authoritative;
    Plan {
        metadata,
        answer,
        edns,
    }
}

/// Whether `request` is a plain query (class IN) for a name outside `zone`: what is forwarded
/// when upstream resolvers are configured, and refused otherwise.
pub(crate) fn is_outside(zone: &Zone, request: &MessageRequest) -> bool {
    let [query] = request.queries.queries() else {
        return false;
    };
    request.metadata.op_code == OpCode::Query
        && request.metadata.message_type == hickory_proto::op::MessageType::Query
        && request.edns.as_ref().is_none_or(|e| e.version() == 0)
        && query.query_class() == DNSClass::IN
        && !zone.origin().zone_of(query.name())
}

/// The transport a response is sent over: UDP responses are limited in size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

impl Zone {
    /// Answers the raw request `raw` as the server would over `transport`: the response bytes,
    /// or None when the server sends nothing (shorter than a header, or itself a response).
    pub fn respond(&self, raw: &[u8], transport: Transport, seed: u64) -> Option<Vec<u8>> {
        if let Some(response) = self.wire.respond(raw, transport == Transport::Udp, seed) {
            return Some(response);
        }
        self.respond_general(raw, transport, seed)
    }

    /// Whether the raw request `raw` is a plain query for a name outside the zone (see
    /// [`crate::Upstreams`]).
    pub fn is_outside(&self, raw: &[u8]) -> bool {
        let source = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        Request::from_bytes(raw.to_vec(), source, Protocol::Udp)
            .is_ok_and(|request| is_outside(self, &request))
    }

    /// [`Zone::respond`] without the fast path.
    pub(crate) fn respond_general(
        &self,
        raw: &[u8],
        transport: Transport,
        seed: u64,
    ) -> Option<Vec<u8>> {
        let source = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        let request = match Request::from_bytes(raw.to_vec(), source, Protocol::Udp) {
            Ok(request) => request,
            Err(_) => {
                let header = Header::read(&mut BinDecoder::new(raw)).ok()?;
                return Some(format_error(&header.metadata));
            }
        };
        if request.metadata.message_type == hickory_proto::op::MessageType::Response {
            return None;
        }
        if points_into_header(request.queries.as_bytes()) {
            return Some(format_error(&request.metadata));
        }
        let plan = plan(self, &request, seed);
        let max_size = match transport {
            Transport::Udp => plan.edns.as_ref().map_or(512, Edns::max_payload),
            Transport::Tcp => u16::MAX,
        };
        let response = MessageResponseBuilder::new(&request.queries, plan.edns.as_ref()).build(
            plan.metadata,
            plan.answer.answers,
            plan.answer.authorities,
            std::iter::empty::<&Record>(),
            plan.answer.additionals,
        );
        let mut bytes = Vec::with_capacity(512);
        let mut encoder = BinEncoder::new(&mut bytes);
        encoder.set_max_size(max_size);
        match response.destructive_emit(&mut encoder) {
            // hickory echoes the question section as received: an answer that does not decode
            // (a compression pointer that meant something else in the request) is never sent.
            Ok(_) if hickory_proto::op::Message::from_vec(&bytes).is_ok() => Some(bytes),
            Ok(_) => Some(format_error(&request.metadata)),
            Err(_) => Some(server_failure(&request.metadata)),
        }
    }
}

/// Whether a name of the question section `questions` (as received, at offset 12) is
/// compressed with a pointer into the header. hickory echoes the section as received, and the
/// response's header differs: the echoed name would not decode, so such a request gets FORMERR
/// without its question.
pub(crate) fn points_into_header(questions: &[u8]) -> bool {
    let mut at = 0;
    while let Some(&len) = questions.get(at) {
        match len {
            0 => at += 5,
            1..=63 => at += 1 + usize::from(len),
            _ if len & 0xc0 == 0xc0 => {
                let low = questions.get(at + 1).copied().unwrap_or(0);
                if (usize::from(len & 0x3f) << 8 | usize::from(low)) < 12 {
                    return true;
                }
                at += 6;
            }
            _ => return false,
        }
    }
    false
}

/// FORMERR for a request whose header was readable but whose body was not.
fn format_error(request: &Metadata) -> Vec<u8> {
    error_bytes(request, ResponseCode::FormErr)
}

fn server_failure(request: &Metadata) -> Vec<u8> {
    error_bytes(request, ResponseCode::ServFail)
}

/// A response with `code` and no question, to the request with header `request`.
pub(crate) fn error_bytes(request: &Metadata, code: ResponseCode) -> Vec<u8> {
    let Ok(queries) = Queries::read(&mut BinDecoder::new(&[]), 0) else {
        return Vec::new();
    };
    let response = MessageResponseBuilder::new(&queries, None).error_msg(request, code);
    let mut bytes = Vec::with_capacity(12);
    let mut encoder = BinEncoder::new(&mut bytes);
    // a header alone always encodes
    let _ = response.destructive_emit(&mut encoder);
    bytes
}
