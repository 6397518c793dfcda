//! Renders a response message as dig-like text, for snapshot tests and debugging.

use std::fmt::Write;

use hickory_proto::op::Message;
use hickory_proto::rr::Record;

/// The response `bytes` as text: the header line, then one line per record by section.
pub fn render(bytes: &[u8]) -> String {
    let message = match Message::from_vec(bytes) {
        Ok(message) => message,
        Err(error) => return format!("undecodable response: {error}\n"),
    };
    let mut out = String::new();
    let flags = message.metadata.flags();
    let _ = writeln!(
        out,
        "status: {} ({}) flags: {flags} answer: {} authority: {} additional: {}",
        message.metadata.response_code,
        u16::from(message.metadata.response_code),
        message.answers.len(),
        message.authorities.len(),
        message.additionals.len(),
    );
    if let Some(edns) = &message.edns {
        let _ = writeln!(
            out,
            "edns: version {} udp {}",
            edns.version(),
            edns.max_payload()
        );
    }
    section(&mut out, "ANSWER", &message.answers);
    section(&mut out, "AUTHORITY", &message.authorities);
    section(&mut out, "ADDITIONAL", &message.additionals);
    out
}

fn section(out: &mut String, title: &str, records: &[Record]) {
    if records.is_empty() {
        return;
    }
    let _ = writeln!(out, ";; {title}");
    for record in records {
        let _ = writeln!(out, "{record}");
    }
}
