//! The fast path: answers precomputed in wire format, assembled by copying bytes.
//!
//! A plain query (one question of class IN, at most an EDNS version 0 OPT record) for a name of
//! the zone is answered here without decoding into hickory's message types: the question is
//! copied, the answer records (each encoded once, its owner a pointer to the question) are
//! appended in shuffled order, then the authority and additional bytes. Anything else, and any
//! answer that would not fit the client's buffer, goes the general way
//! ([`crate::message`]), which also decides truncation. Tests check that both give the same
//! answers.

use std::collections::HashMap;

use hickory_proto::rr::{Name, Record, RecordType};
use hickory_proto::serialize::binary::{BinEncodable, BinEncoder, NameEncoding};

use crate::message::MAX_UDP_PAYLOAD;
use crate::zone::shuffle;

/// One record set at one name, encoded.
#[derive(Debug)]
pub(crate) struct WireSet {
    /// Each answer record after its owner name (type, class, TTL, length, data).
    answers: Vec<Box<[u8]>>,
    additionals: Box<[u8]>,
    additional_count: u16,
}

/// The wire-format answers of the zone, by lowercase wire-format name.
#[derive(Debug, Default)]
pub(crate) struct WireZone {
    names: HashMap<Box<[u8]>, Vec<(u16, WireSet)>>,
    /// The SOA record, for the authority section of NODATA answers.
    negative: Box<[u8]>,
}

/// Bytes of a record after its owner name, with no name compression anywhere.
fn encode_rest(record: &Record) -> Option<Box<[u8]>> {
    let mut bytes = Vec::with_capacity(64);
    let mut encoder = BinEncoder::new(&mut bytes);
    encoder.set_name_encoding(NameEncoding::Uncompressed);
    record.emit(&mut encoder).ok()?;
    let owner = wire_name_len(&record.name);
    Some(bytes[owner..].into())
}

fn encode_full(records: &[Record]) -> Option<Box<[u8]>> {
    let mut bytes = Vec::with_capacity(64 * records.len());
    let mut encoder = BinEncoder::new(&mut bytes);
    encoder.set_name_encoding(NameEncoding::Uncompressed);
    for record in records {
        record.emit(&mut encoder).ok()?;
    }
    Some(bytes.into())
}

fn wire_name_len(name: &Name) -> usize {
    name.iter().map(|label| label.len() + 1).sum::<usize>() + 1
}

/// The lowercase wire form of `name`, the key of [`WireZone`].
pub(crate) fn wire_key(name: &Name) -> Box<[u8]> {
    let mut key = Vec::with_capacity(wire_name_len(name));
    for label in name.iter() {
        key.push(label.len() as u8);
        key.extend(label.iter().map(u8::to_ascii_lowercase));
    }
    key.push(0);
    key.into()
}

impl WireZone {
    /// Encodes the record sets; a set that cannot be encoded is left to the general path.
    pub(crate) fn build<'a>(
        sets: impl Iterator<Item = (&'a Name, RecordType, &'a [Record], &'a [Record])>,
        soa: &Record,
    ) -> WireZone {
        let mut names: HashMap<Box<[u8]>, Vec<(u16, WireSet)>> = HashMap::new();
        for (name, rtype, records, additionals) in sets {
            let entry = names.entry(wire_key(name)).or_default();
            let answers: Option<Vec<Box<[u8]>>> = records.iter().map(encode_rest).collect();
            let (Some(answers), Some(additional_bytes)) = (answers, encode_full(additionals))
            else {
                continue;
            };
            entry.push((
                u16::from(rtype),
                WireSet {
                    answers,
                    additionals: additional_bytes,
                    additional_count: additionals.len() as u16,
                },
            ));
        }
        WireZone {
            names,
            negative: encode_full(std::slice::from_ref(soa)).unwrap_or_default(),
        }
    }

    /// The answer to `query`, or None to take the general path. Over UDP the answer must fit
    /// 512 bytes, or the client's EDNS buffer up to [`MAX_UDP_PAYLOAD`]; over TCP it always fits.
    pub(crate) fn respond(&self, query: &[u8], udp: bool, seed: u64) -> Option<Vec<u8>> {
        let parsed = parse(query)?;
        let sets = self.names.get(&parsed.key[..parsed.key_len])?;
        let question = &query[12..parsed.question_end];
        let (set, negative) = match sets.iter().find(|(t, _)| *t == parsed.qtype) {
            Some((_, set)) => (Some(set), &[][..]),
            None => (None, &self.negative[..]),
        };
        let limit = match (udp, parsed.edns_payload) {
            (false, _) => usize::from(u16::MAX),
            (true, None) => 512,
            (true, Some(payload)) => usize::from(payload.clamp(512, MAX_UDP_PAYLOAD)),
        };
        let mut out = Vec::with_capacity(512);
        // header: id, QR AA, opcode QUERY, RD and CD copied, NOERROR
        out.extend_from_slice(&query[..2]);
        out.push(0x84 | (query[2] & 0x01));
        out.push(query[3] & 0x10);
        let (answer_count, additional_count) = match set {
            Some(set) => (set.answers.len() as u16, set.additional_count),
            None => (0, 0),
        };
        let additional_count = additional_count + u16::from(parsed.edns_payload.is_some());
        out.extend_from_slice(&1u16.to_be_bytes());
        out.extend_from_slice(&answer_count.to_be_bytes());
        out.extend_from_slice(&u16::from(set.is_none()).to_be_bytes());
        out.extend_from_slice(&additional_count.to_be_bytes());
        out.extend_from_slice(question);
        if let Some(set) = set {
            let mut order: Vec<usize> = (0..set.answers.len()).collect();
            shuffle(&mut order, seed);
            for i in order {
                out.extend_from_slice(&[0xc0, 0x0c]);
                out.extend_from_slice(&set.answers[i]);
            }
            out.extend_from_slice(&set.additionals);
        }
        out.extend_from_slice(negative);
        if let Some(payload) = parsed.edns_payload {
            let advertised = payload.clamp(512, MAX_UDP_PAYLOAD);
            // OPT: root owner, type 41, class = payload, extended rcode 0, version 0, no flags
            out.push(0);
            out.extend_from_slice(&41u16.to_be_bytes());
            out.extend_from_slice(&advertised.to_be_bytes());
            out.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        }
        (out.len() <= limit).then_some(out)
    }
}

/// What the fast path needs of a query.
struct Parsed {
    key: [u8; 256],
    key_len: usize,
    question_end: usize,
    qtype: u16,
    edns_payload: Option<u16>,
}

/// Parses a plain query; None for anything else.
fn parse(query: &[u8]) -> Option<Parsed> {
    let header = query.get(..12)?;
    // QR = 0, opcode 0; one question, no answers or authorities, at most one additional
    if header[2] & 0xf8 != 0 || header[4..10] != [0, 1, 0, 0, 0, 0] || header[10] != 0 {
        return None;
    }
    let additionals = header[11];
    let mut key = [0u8; 256];
    let mut at = 12;
    let mut key_len = 0;
    loop {
        let len = usize::from(*query.get(at)?);
        if len > 63 {
            return None; // compression or an extended label type: general path
        }
        if key_len + len + 1 > 255 {
            return None;
        }
        key[key_len] = len as u8;
        let label = query.get(at + 1..at + 1 + len)?;
        for (k, b) in key[key_len + 1..key_len + 1 + len].iter_mut().zip(label) {
            *k = b.to_ascii_lowercase();
        }
        key_len += len + 1;
        at += len + 1;
        if len == 0 {
            break;
        }
    }
    let fixed = query.get(at..at + 4)?;
    let qtype = u16::from_be_bytes([fixed[0], fixed[1]]);
    let qclass = u16::from_be_bytes([fixed[2], fixed[3]]);
    // class IN; not ANY, AXFR, IXFR or OPT
    if qclass != 1 || matches!(qtype, 255 | 252 | 251 | 41) {
        return None;
    }
    let question_end = at + 4;
    let edns_payload = match additionals {
        0 if query.len() == question_end => None,
        1 => {
            // OPT with the root owner, version 0, and nothing after it
            let opt = query.get(question_end..question_end + 11)?;
            let rdlen = usize::from(u16::from_be_bytes([opt[9], opt[10]]));
            let valid = opt[0] == 0
                && opt[1..3] == [0, 41]
                && opt[6] == 0
                && query.len() == question_end + 11 + rdlen;
            if !valid {
                return None;
            }
            Some(u16::from_be_bytes([opt[3], opt[4]]))
        }
        _ => return None,
    };
    Some(Parsed {
        key,
        key_len,
        question_end,
        qtype,
        edns_payload,
    })
}
