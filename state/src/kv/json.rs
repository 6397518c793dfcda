//! etcd v2's JSON for events and errors, byte for byte as etcd 3.4 writes it.
//!
//! etcd encodes with Go's `encoding/json`: fields in struct order, empty fields omitted
//! (`omitempty`), `<`, `>`, `&`, U+2028 and U+2029 escaped as `\u003c` ..., and a newline after
//! each document. [`Event::render`] and [`Error::render`] produce exactly those bytes;
//! [`Event::to_json`] and [`Error::to_json`] give the same document as a [`serde_json::Value`]
//! (whose object keys serde_json sorts, so prefer `render` for the wire).

use std::io;

use serde::Serialize;
use serde_json::ser::{CharEscape, Formatter};

use super::{Action, Error, Event, Node};

impl Event {
    /// The event as etcd's JSON. A read's `ttl` is counted from `now_ms` (the responder's
    /// clock), a write's from the clock it was proposed with (as etcd counts it when applying).
    pub fn to_json(&self, now_ms: u64) -> serde_json::Value {
        serde_json::to_value(EventJson::new(self, now_ms, false))
            .expect("an event always converts to JSON")
    }

    /// The response body etcd writes for this event, newline included (`ttl` as in
    /// [`Event::to_json`]). With
    /// `no_value_on_success` (etcd's `noValueOnSuccess=true`), a set, create, update or
    /// compare-and-swap shows only its action.
    pub fn render(&self, now_ms: u64, no_value_on_success: bool) -> String {
        to_go_json(&EventJson::new(self, now_ms, no_value_on_success))
    }
}

impl Error {
    /// The error as etcd's JSON: `errorCode`, `message`, `cause` (omitted when empty), `index`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(ErrorJson::new(self)).expect("an error always converts to JSON")
    }

    /// The response body etcd writes for this error, newline included.
    pub fn render(&self) -> String {
        to_go_json(&ErrorJson::new(self))
    }
}

/// etcd's `Event` JSON.
#[derive(Serialize)]
struct EventJson<'a> {
    action: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    node: Option<NodeJson<'a>>,
    #[serde(rename = "prevNode", skip_serializing_if = "Option::is_none")]
    prev_node: Option<NodeJson<'a>>,
}

impl<'a> EventJson<'a> {
    fn new(event: &'a Event, now_ms: u64, no_value_on_success: bool) -> Self {
        // etcd computes a write's TTLs when it applies it; a read's when it answers.
        let now_ms = if event.action == Action::Get {
            now_ms
        } else {
            event.time_ms
        };
        let quiet = no_value_on_success
            && matches!(
                event.action,
                Action::Set | Action::CompareAndSwap | Action::Create | Action::Update
            );
        EventJson {
            action: event.action.as_str(),
            node: (!quiet).then(|| NodeJson::new(&event.node, now_ms)),
            prev_node: event
                .prev_node
                .as_ref()
                .filter(|_| !quiet)
                .map(|n| NodeJson::new(n, now_ms)),
        }
    }
}

/// etcd's `NodeExtern` JSON.
#[derive(Serialize)]
struct NodeJson<'a> {
    /// Empty (so omitted) for the root, which etcd stores as `/1` and shows with the prefix
    /// trimmed.
    #[serde(skip_serializing_if = "str::is_empty")]
    key: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<&'a str>,
    #[serde(skip_serializing_if = "is_false")]
    dir: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    expiration: Option<String>,
    #[serde(skip_serializing_if = "is_zero_i64")]
    ttl: i64,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    nodes: Vec<NodeJson<'a>>,
    #[serde(rename = "modifiedIndex", skip_serializing_if = "is_zero")]
    modified_index: u64,
    #[serde(rename = "createdIndex", skip_serializing_if = "is_zero")]
    created_index: u64,
}

impl<'a> NodeJson<'a> {
    fn new(node: &'a Node, now_ms: u64) -> Self {
        NodeJson {
            key: if node.key == "/" { "" } else { &node.key },
            value: node.value.as_deref(),
            dir: node.dir,
            expiration: node.expiration_ms.map(rfc3339),
            ttl: node.expiration_ms.map_or(0, |at| ttl_seconds(at, now_ms)),
            nodes: node
                .nodes
                .iter()
                .flatten()
                .map(|n| NodeJson::new(n, now_ms))
                .collect(),
            modified_index: node.modified_index,
            created_index: node.created_index,
        }
    }
}

/// etcd's `v2error.Error` JSON.
#[derive(Serialize)]
struct ErrorJson<'a> {
    #[serde(rename = "errorCode")]
    error_code: u16,
    message: &'static str,
    #[serde(skip_serializing_if = "str::is_empty")]
    cause: &'a str,
    index: u64,
}

impl<'a> ErrorJson<'a> {
    fn new(error: &'a Error) -> Self {
        ErrorJson {
            error_code: error.code.number(),
            message: error.code.message(),
            cause: &error.cause,
            index: error.index,
        }
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn is_zero_i64(n: &i64) -> bool {
    *n == 0
}

/// Seconds left until `expiration_ms`, as etcd counts them: the remaining time divided by a
/// second, truncated toward zero, plus one if a positive fraction remains (so 1..=n while the
/// key lives; 0 or negative once it is due but not yet removed).
pub fn ttl_seconds(expiration_ms: u64, now_ms: u64) -> i64 {
    let left = i128::from(expiration_ms) - i128::from(now_ms);
    let mut secs = left / 1000;
    if left % 1000 > 0 {
        secs += 1;
    }
    i64::try_from(secs).unwrap_or(if secs > 0 { i64::MAX } else { i64::MIN })
}

/// A time (ms since the Unix epoch) as Go's `time.RFC3339Nano` in UTC, which is how etcd
/// writes `expiration`: `2026-11-24T22:17:29.452Z`, the fraction without trailing zeros and
/// left out when zero.
pub fn rfc3339(ms: u64) -> String {
    let secs = ms / 1000;
    let millis = ms % 1000;
    let days = i64::try_from(secs / 86_400).expect("u64 seconds / 86400 fits in i64");
    let rem = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    let (hour, minute, second) = (rem / 3600, rem % 3600 / 60, rem % 60);
    let mut out = format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}");
    if millis != 0 {
        let fraction = format!("{millis:03}");
        out.push('.');
        out.push_str(fraction.trim_end_matches('0'));
    }
    out.push('Z');
    out
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = u32::try_from(doy - (153 * mp + 2) / 5 + 1).expect("day of month is 1..=31");
    let month = u32::try_from(if mp < 10 { mp + 3 } else { mp - 9 }).expect("month is 1..=12");
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Serializes like Go's `json.NewEncoder(w).Encode(v)` (Go 1.19, which etcd 3.4 is built
/// with): compact, HTML-safe escapes, `\u0008` / `\u000c` for backspace and form feed, and a
/// trailing newline.
fn to_go_json<T: Serialize>(value: &T) -> String {
    let mut out = Vec::with_capacity(128);
    let mut ser = serde_json::Serializer::with_formatter(&mut out, GoFormatter);
    value
        .serialize(&mut ser)
        .expect("serializing to memory cannot fail");
    out.push(b'\n');
    String::from_utf8(out).expect("serde_json writes UTF-8")
}

/// serde_json's compact output with Go's string escapes.
struct GoFormatter;

impl Formatter for GoFormatter {
    fn write_string_fragment<W>(&mut self, writer: &mut W, fragment: &str) -> io::Result<()>
    where
        W: ?Sized + io::Write,
    {
        let mut start = 0;
        for (i, c) in fragment.char_indices() {
            let escape = match c {
                '<' => "\\u003c",
                '>' => "\\u003e",
                '&' => "\\u0026",
                '\u{2028}' => "\\u2028",
                '\u{2029}' => "\\u2029",
                _ => continue,
            };
            writer.write_all(&fragment.as_bytes()[start..i])?;
            writer.write_all(escape.as_bytes())?;
            start = i + c.len_utf8();
        }
        writer.write_all(&fragment.as_bytes()[start..])
    }

    fn write_char_escape<W>(&mut self, writer: &mut W, char_escape: CharEscape) -> io::Result<()>
    where
        W: ?Sized + io::Write,
    {
        let escape: &[u8] = match char_escape {
            CharEscape::Quote => b"\\\"",
            CharEscape::ReverseSolidus => b"\\\\",
            CharEscape::Solidus => b"/",
            CharEscape::Backspace => b"\\u0008",
            CharEscape::FormFeed => b"\\u000c",
            CharEscape::LineFeed => b"\\n",
            CharEscape::CarriageReturn => b"\\r",
            CharEscape::Tab => b"\\t",
            CharEscape::AsciiControl(byte) => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                let bytes = [
                    b'\\',
                    b'u',
                    b'0',
                    b'0',
                    HEX[usize::from(byte >> 4)],
                    HEX[usize::from(byte & 0xf)],
                ];
                return writer.write_all(&bytes);
            }
        };
        writer.write_all(escape)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_matches_go() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_795_558_649_452), "2026-11-24T22:17:29.452Z");
        assert_eq!(rfc3339(1_795_558_649_450), "2026-11-24T22:17:29.45Z");
        assert_eq!(rfc3339(1_795_558_649_400), "2026-11-24T22:17:29.4Z");
        assert_eq!(rfc3339(1_795_558_649_001), "2026-11-24T22:17:29.001Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(4_107_542_399_999), "2100-02-28T23:59:59.999Z");
        assert_eq!(rfc3339(4_107_542_400_000), "2100-03-01T00:00:00Z");
        assert_eq!(rfc3339(253_402_300_799_000), "9999-12-31T23:59:59Z");
        // Far beyond Go's range: still a date, never a panic.
        assert!(rfc3339(u64::MAX).ends_with('Z'));
    }

    #[test]
    fn ttl_rounds_up_like_etcd() {
        assert_eq!(ttl_seconds(10_000, 0), 10);
        assert_eq!(ttl_seconds(10_000, 1), 10);
        assert_eq!(ttl_seconds(10_000, 999), 10);
        assert_eq!(ttl_seconds(10_000, 1_000), 9);
        assert_eq!(ttl_seconds(10_000, 9_999), 1);
        assert_eq!(ttl_seconds(10_000, 10_000), 0);
        assert_eq!(ttl_seconds(10_000, 10_500), 0);
        assert_eq!(ttl_seconds(10_000, 11_500), -1);
        assert_eq!(
            ttl_seconds(u64::MAX, 0),
            i64::try_from(u64::MAX / 1000 + 1).unwrap()
        );
    }

    #[test]
    fn strings_are_escaped_like_go() {
        let s = to_go_json(&"a<b>&c\u{2028}\u{2029}\"\\\n\r\t\u{8}\u{c}\u{1}é/");
        assert_eq!(
            s,
            "\"a\\u003cb\\u003e\\u0026c\\u2028\\u2029\\\"\\\\\\n\\r\\t\\u0008\\u000c\\u0001é/\"\n"
        );
    }
}
